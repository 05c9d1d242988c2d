"""Pre-train tiny bases on the synthetic data, so CPU experiments start from a pretrained model.

The paper fine-tunes LoRA adapters on pretrained 7B models; no weights can be downloaded on the
project's machines, so each backbone gets a tiny variant (random init from the real transformers
config class) that is first fully fine-tuned on the project's synthetic data for a few minutes,
then saved with `save_pretrained` (model, tokenizer, processor) and loaded back through the same
`from_pretrained` path as a real checkpoint. The folder is written as `<out>.partial-...` and renamed
to `<out>` once complete, `tiny_base.json` last: a folder at `<out>` without it (or without weights)
is incomplete (`incomplete_reason`) and is never used.

    python scripts/pretrain_tiny_base.py qwen2_audio --data data/synthetic/audio --out data/tiny_bases/qwen2_audio
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from loramcl.data.collate import (AUDIO_PROMPT, IMAGE_PROMPT, TRANSLATION_PROMPT, AudioCaptionCollator,
                                  ImageCaptionCollator, TranslationCollator)
from loramcl.data.hdf5 import AudioCaptionH5, ImageCaptionH5, TranslationH5
from loramcl.tokenizer_builder import train_tokenizer
from loramcl.utils.atomic import staged

log = logging.getLogger(__name__)

MARKER = "tiny_base.json"  # written last: its presence says the folder is complete
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def incomplete_reason(folder: str | Path) -> Optional[str]:
    """Why the existing folder `folder` is not a complete tiny base (None when it is one)."""
    folder = Path(folder)
    missing = [name for name, present in (("config.json", (folder / "config.json").is_file()),
                                          ("model.safetensors", any((folder / w).is_file() for w in WEIGHTS)),
                                          (MARKER, (folder / MARKER).is_file())) if not present]
    if not missing:
        return None
    return "no " + (missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} or {missing[-1]}")


def incomplete_message(folder: str | Path, reason: str) -> str:
    return (f"tiny base {folder} is incomplete ({reason}; {MARKER} is written last: an interrupted "
            f"pre-training?): delete that folder and run again to rebuild it")


def _special_ids(tokenizer: Any) -> dict[str, Optional[int]]:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _seeded_model(cls: Any, config: Any, tokenizer: Any, seed: int) -> torch.nn.Module:
    """`cls(config)` initialised from `seed` (global RNG untouched), generating until the tokenizer's EOS."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


TINY_AUDIO = {  # Qwen2-Audio shape, scaled down: ~1M parameters
    "feature_size": 64, "chunk_length": 4,  # 4 s of audio at most -> 400 mel frames
    "audio": {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}


def tiny_qwen2_audio(tokenizer: Any, seed: int = 0, sizes: Optional[dict] = None):
    """(model, processor) of a randomly initialised tiny Qwen2-Audio for `tokenizer`."""
    from transformers import (Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor,
                              WhisperFeatureExtractor)

    s = {**TINY_AUDIO, **(sizes or {})}
    feature_extractor = WhisperFeatureExtractor(feature_size=s["feature_size"], chunk_length=s["chunk_length"])
    processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    config = Qwen2AudioConfig(
        audio_config={**s["audio"], "num_mel_bins": s["feature_size"],
                      "max_source_positions": feature_extractor.nb_max_frames // 2},
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), **_special_ids(tokenizer),
                     "tie_word_embeddings": True, **s["text"]},
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    model = _seeded_model(Qwen2AudioForConditionalGeneration, config, tokenizer, seed)
    return model, processor


TINY_LLAVA = {  # LLaVA-NeXT shape (CLIP tower + projector + Llama), scaled down: 32 px crops, 8 px patches
    "image_size": 32, "patch_size": 8, "grid": [[32, 32], [32, 64], [64, 32], [64, 64]],
    "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}


def tiny_llava_next(tokenizer: Any, seed: int = 0, sizes: Optional[dict] = None):
    """(model, processor) of a randomly initialised tiny LLaVA-NeXT for `tokenizer` (PIL image processor)."""
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil,
                              LlavaNextProcessor)

    s = {**TINY_LLAVA, **(sizes or {})}
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": s["image_size"]}, crop_size={"height": s["image_size"], "width": s["image_size"]},
        image_grid_pinpoints=s["grid"])
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=s["patch_size"],
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   image_token="<image>")
    config = LlavaNextConfig(
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), **s["text"], **_special_ids(tokenizer)},
        vision_config={"model_type": "clip_vision_model", **s["vision"], "image_size": s["image_size"],
                       "patch_size": s["patch_size"], "projection_dim": s["vision"]["hidden_size"]},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=s["grid"],
        vision_feature_layer=s.get("feature_layer", -1), vision_feature_select_strategy="default",
    )
    model = _seeded_model(LlavaNextForConditionalGeneration, config, tokenizer, seed)
    return model, processor


TINY_LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 512}


def tiny_llama(tokenizer: Any, seed: int = 0, sizes: Optional[dict] = None):
    """(model, tokenizer) of a randomly initialised tiny Llama (ALMA's architecture) for `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{"vocab_size": len(tokenizer), **_special_ids(tokenizer), **TINY_LLAMA, **(sizes or {})})
    model = _seeded_model(LlamaForCausalLM, config, tokenizer, seed)
    return model, tokenizer


def _fit(model: torch.nn.Module, loader: DataLoader, steps: int, lr: float, desc: str) -> list[float]:
    """Full fine-tune (every weight) with AdamW, linear warmup then cosine; returns the loss curve."""
    from rich.progress import Progress

    from loramcl.losses import sequence_nll
    from loramcl.schedules import warmup_cosine

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, warmup_ratio=0.05)
    losses, step = [], 0
    with Progress(transient=False) as progress:
        task = progress.add_task(desc, total=steps)
        while step < steps:
            for batch in loader:
                inputs = {k: v for k, v in batch.items() if torch.is_tensor(v) and k != "labels"}
                nll, _ = sequence_nll(model(**inputs).logits, batch["labels"], batch["attention_mask"])
                loss = nll.mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                step += 1
                progress.update(task, advance=1, description=f"{desc} loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
                if step >= steps:
                    break
    model.eval()
    return losses


def _free_output(out_dir: str | Path, overwrite: bool) -> Path:
    """`out_dir`, refused when it already holds something (unless `overwrite`)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        reason = incomplete_reason(out) if out.is_dir() else "not a folder"
        if reason is None:
            raise FileExistsError(f"{out} already holds a model; pass overwrite=True (--overwrite) to replace it")
        raise FileExistsError(f"{out} holds an incomplete tiny base ({reason}: an interrupted pre-training?); "
                              f"pass overwrite=True (--overwrite) to rebuild it, or delete it")
    return out


def _pretrain(kind: str, data_root: str, name: str, out_dir: str, steps: int, batch_size: int, lr: float,
              vocab_size: int, seed: int, overwrite: bool) -> Path:
    """Tokenizer + tiny model of `kind`, fully fine-tuned on a synthetic training split, saved."""
    specs = {  # reader, tokenizer family, prompt, model builder, collator
        "qwen2_audio": (AudioCaptionH5, "qwen2", AUDIO_PROMPT, tiny_qwen2_audio, AudioCaptionCollator),
        "llava_next": (ImageCaptionH5, "llava", IMAGE_PROMPT, tiny_llava_next, ImageCaptionCollator),
        "alma": (TranslationH5, "llama", TRANSLATION_PROMPT, tiny_llama, TranslationCollator),
    }
    reader, family, prompt, build, collator = specs[kind]
    out = _free_output(out_dir, overwrite)
    torch.manual_seed(seed)
    train = reader.from_split(data_root, name, "train")
    texts = [c for caps in train.texts for c in caps] + list(getattr(train, "sources", [])) + [prompt]
    tokenizer = train_tokenizer(texts, family, vocab_size=vocab_size)
    model, processor = build(tokenizer, seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collator(processor, seed=seed),
                        generator=torch.Generator().manual_seed(seed))
    start = time.time()
    losses = _fit(model, loader, steps, lr, f"pre-training tiny {kind}")
    info = {"backbone": kind, "data": f"{data_root}/{name}", "steps": steps, "batch_size": batch_size, "lr": lr,
            "seed": seed, "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(time.time() - start, 1),
            "parameters": sum(p.numel() for p in model.parameters())}
    return _save(out, kind, model, processor, info, overwrite)


def _save(out: Path, kind: str, model: Any, processor: Any, info: dict, overwrite: bool) -> Path:
    """Model, processor and the marker (last) to `<out>.partial-...`, renamed to `out` when complete."""
    with staged(out, overwrite=overwrite) as stage:
        model.save_pretrained(stage.path)
        processor.save_pretrained(stage.path)
        (stage.path / MARKER).write_text(json.dumps(info, indent=2))  # last: the completion marker
    if not stage.placed:  # another process (e.g. a second job on first use) finished first: use its base
        reason = incomplete_reason(out)
        if reason is not None:
            raise FileExistsError(f"{out} appeared while pre-training and is incomplete ({reason}); delete it "
                                  f"and run again")
        log.info(f"tiny {kind} base {out} was saved by another process meanwhile; using it (this one discarded)")
        return out
    log.info(f"tiny {kind} base saved to {out}: {info}")
    return out


def pretrain_qwen2_audio(data_root: str, name: str, out_dir: str, steps: int = 600, batch_size: int = 16,
                         lr: float = 2e-3, vocab_size: int = 512, seed: int = 0, overwrite: bool = False) -> Path:
    """Tiny Qwen2-Audio fully fine-tuned on the synthetic audio captions, saved to `out_dir`."""
    return _pretrain("qwen2_audio", data_root, name, out_dir, steps, batch_size, lr, vocab_size, seed, overwrite)


def pretrain_llava_next(data_root: str, name: str, out_dir: str, steps: int = 600, batch_size: int = 16,
                        lr: float = 2e-3, vocab_size: int = 512, seed: int = 0, overwrite: bool = False) -> Path:
    """Tiny LLaVA-NeXT fully fine-tuned on the synthetic shape captions (English, or both languages)."""
    return _pretrain("llava_next", data_root, name, out_dir, steps, batch_size, lr, vocab_size, seed, overwrite)


def pretrain_alma(data_root: str, name: str, out_dir: str, steps: int = 600, batch_size: int = 32,
                  lr: float = 2e-3, vocab_size: int = 768, seed: int = 0, overwrite: bool = False) -> Path:
    """Tiny Llama fully fine-tuned on the synthetic English-German pairs with ALMA's prompt."""
    return _pretrain("alma", data_root, name, out_dir, steps, batch_size, lr, vocab_size, seed, overwrite)


# A minimal chat template for tiny bases that should have one (`pretrain_text(chat_template=True)`):
# role-tagged turns, the generation prompt opens the assistant's turn
TINY_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}[assistant] {% endif %}")


def pretrain_text(train_file: str, out_dir: str, prompt: str = "{input}", input_field: str = "input",
                  reference_field: Any = "references", chat_template: bool = False, steps: int = 300,
                  batch_size: int = 16, lr: float = 2e-3, vocab_size: int = 512, seed: int = 0,
                  overwrite: bool = False) -> Path:
    """Tiny Llama fully fine-tuned on a text task's training file (data=text rows: JSON Lines, CSV,
    Parquet), its tokenizer trained on the file's texts; `chat_template`: the tokenizer gets
    TINY_CHAT_TEMPLATE and the rows are trained as chat turns (as data.chat_template=auto will)."""
    from loramcl.data.rows import TextSchema, validate_file
    from loramcl.data.text import TextCollator, TextItems, load_rows

    out = _free_output(out_dir, overwrite)
    schema = TextSchema(input_field, reference_field, None, prompt)
    validate_file(train_file, schema)
    torch.manual_seed(seed)
    train = TextItems(load_rows(train_file, schema), str(train_file))
    texts = [r for refs in train.texts for r in refs] + [prompt.format(**{**it["fields"], input_field: it["source"]})
                                                          for it in train.items]
    tokenizer = train_tokenizer(texts + (["[user] [assistant] [system]"] if chat_template else []), "llama",
                                vocab_size=vocab_size)
    if chat_template:
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
    model, _ = tiny_llama(tokenizer, seed)
    collate = TextCollator(tokenizer, prompt, chat_template, input_field=input_field, seed=seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed))
    start = time.time()
    losses = _fit(model, loader, steps, lr, "pre-training tiny text base")
    info = {"backbone": "text", "data": str(train_file), "prompt": prompt, "chat_template": chat_template,
            "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(time.time() - start, 1),
            "parameters": sum(p.numel() for p in model.parameters())}
    return _save(out, "text", model, tokenizer, info, overwrite)
