"""The paper's three backbones at their published 7B sizes, and scaled-down variants, built from config alone.

No weights can be downloaded on the project's machines (GPU ones included), yet speed and memory
depend only on the architecture: a randomly initialised model with the published configuration
costs exactly what the real checkpoint costs. Each family is built through the same builders as
the tiny bases (`loramcl.tiny_base`), with the sizes of a scale:

    7b    the published configurations (Qwen2-Audio-7B-Instruct, LLaVA-1.6-Vicuna-7B, ALMA-7B =
          Llama-2-7B), with the worst-case item of their paper data set (`WORST_ITEM`): 30 s of
          audio (750 audio tokens), one 672 x 672 image (the base crop + a 2 x 2 tile set, 2928
          image tokens), MT pairs of 256 source + 256 target tokens;
    mid   the same architectures at hidden 512 (CPU figures);
    tiny  the tiny bases' sizes (smoke tests).

Token ids come from a small tokenizer trained here (`tokenizer_builder`), with the vocabulary size
of the scale; only the sizes matter for time and memory. `example_batch` makes a training batch
through the project's own collators (prompt masking, media placeholders expanded by the processor).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from loramcl.data.collate import AudioCaptionCollator, ImageCaptionCollator, TranslationCollator
from loramcl.tokenizer_builder import train_tokenizer

FAMILIES = ("qwen2_audio", "llava_next", "alma")
SCALES = ("tiny", "mid", "7b")

# The paper's LoRA targets and ranks per family (configs/experiment/*_mcl*.yaml).
PAPER_LORA = {
    "qwen2_audio": {"r": 8, "alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]},
    "llava_next": {"r": 8, "alpha": 32, "target_modules": "all-linear"},  # of the language model
    "alma": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
}

# The worst-case item of each paper data set (`data.name`), for the memory planner (`loramcl.memory_plan`)
# and the 7b scale: "media" is what it carries (seconds of audio, image side in pixels), "text_tokens"
# the tokens of its caption, or of its MT source and of its target each.
WORST_ITEM = {
    "clotho": {"media": {"seconds": 30.0}, "text_tokens": 48},  # clips of 15-30 s, captions of 8-20 words
    "audiocaps": {"media": {"seconds": 10.0}, "text_tokens": 48},  # 10 s YouTube clips
    "textcaps": {"media": {"image": 672}, "text_tokens": 48},  # the base crop + a 2 x 2 tile set
    "textcaps_bilingual": {"media": {"image": 672}, "text_tokens": 48},
    # configs/data/wmt_ende.yaml (paper): sources cut to max_source_tokens = 256, targets to max_target_tokens = 256
    "wmt_ende": {"media": {}, "text_tokens": 256},
}

# Published sizes (the checkpoints' config.json); `media` is what one item carries (7b: the largest
# item of the family's paper data sets).
SIZES: dict[str, dict[str, dict]] = {
    "qwen2_audio": {
        "7b": {"feature_size": 128, "chunk_length": 30,
               "audio": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120},
               "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 156032,
                        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
               **WORST_ITEM["clotho"]},
        "mid": {"feature_size": 128, "chunk_length": 10,
                "audio": {"d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536},
                "text": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 6,
                         "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 8192,
                         "tie_word_embeddings": False},
                "media": {"seconds": 10.0}, "text_tokens": 32},
        "tiny": {"media": {"seconds": 4.0}, "text_tokens": 12},
    },
    "llava_next": {
        "7b": {"image_size": 336, "patch_size": 14, "feature_layer": -2,
               "grid": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
               "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16},
               "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
               **WORST_ITEM["textcaps"]},
        "mid": {"image_size": 112, "patch_size": 14, "feature_layer": -2,
                "grid": [[112, 224], [224, 112], [224, 224]],
                "vision": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                           "num_attention_heads": 4},
                "text": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 6,
                         "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 8192},
                "media": {"image": 224}, "text_tokens": 24},
        "tiny": {"media": {"image": 64}, "text_tokens": 12},
    },
    "alma": {
        "7b": {"text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
               **WORST_ITEM["wmt_ende"]},
        "mid": {"text": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 6,
                         "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 8192,
                         "max_position_embeddings": 1024},
                "media": {}, "text_tokens": 128},
        "tiny": {"text": {}, "media": {}, "text_tokens": 16},
    },
}

# Hub names of the paper's checkpoints -> family (the planner's fallback when no config.json is at hand)
PUBLISHED = {"Qwen/Qwen2-Audio-7B-Instruct": "qwen2_audio", "Qwen/Qwen2-Audio-7B": "qwen2_audio",
             "llava-hf/llava-v1.6-vicuna-7b-hf": "llava_next", "haoranxu/ALMA-7B-Pretrain": "alma",
             "haoranxu/ALMA-7B": "alma", "meta-llama/Llama-2-7b-hf": "alma"}

_WORDS = "a b c d e f g h i j k l m n o p".split()


@dataclass
class Backbone:
    """A built backbone: the model, its processor (or tokenizer) and what an item carries."""

    family: str
    scale: str
    model: torch.nn.Module
    processor: Any
    sizes: dict

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)


def _with_layers(s: dict, family: str, text_layers: Optional[int], encoder_layers: Optional[int]) -> dict:
    """`s` with fewer language-model / encoder layers (the planner's one-layer probe)."""
    s = copy.deepcopy(s)
    if text_layers is not None:
        s["text"]["num_hidden_layers"] = text_layers
    if encoder_layers is not None and family != "alma":
        key, field = ("audio", "encoder_layers") if family == "qwen2_audio" else ("vision", "num_hidden_layers")
        s[key][field] = encoder_layers
    return s


def sizes(family: str, scale: str, text_layers: Optional[int] = None, encoder_layers: Optional[int] = None) -> dict:
    """The size dict of `family` at `scale` (the tiny bases' sizes underneath), optionally with fewer layers."""
    from loramcl.tiny_base import TINY_AUDIO, TINY_LLAMA, TINY_LLAVA

    if family not in SIZES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if scale not in SIZES[family]:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    tiny = {"qwen2_audio": TINY_AUDIO, "llava_next": TINY_LLAVA, "alma": {"text": TINY_LLAMA}}[family]
    s = copy.deepcopy(tiny)
    for key, value in SIZES[family][scale].items():
        s[key] = {**s[key], **value} if isinstance(value, dict) and isinstance(s.get(key), dict) else copy.deepcopy(value)
    return _with_layers(s, family, text_layers, encoder_layers)


def _tokenizer(family: str) -> Any:
    kind = {"qwen2_audio": "qwen2", "llava_next": "llava", "alma": "llama"}[family]
    corpus = [" ".join(_WORDS)] * 20 + ["Generate the caption in English:", "Translate this from English to German:",
                                        "Please carefully observe the image and come up with a caption for the image."]
    return train_tokenizer(corpus, kind, vocab_size=400)


def family_of(model_class: Any) -> str:
    """The family whose inputs a transformers model class takes: audio, image, or text only."""
    name = model_class if isinstance(model_class, str) else getattr(model_class, "__name__", "")
    if name.startswith("Qwen2Audio"):
        return "qwen2_audio"
    if name.startswith("LlavaNext"):
        return "llava_next"
    return "alma"


def sizes_from_config(config: Any, family: str, media: Optional[dict] = None, text_tokens: int = 32) -> dict:
    """The size dict (see SIZES) of a transformers config of `family`: to build a probe of a real checkpoint."""
    cfg = config.to_dict()
    drop = ("architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
            "bos_token_id", "eos_token_id", "pad_token_id", "id2label", "label2id", "model_type",
            "layer_types")  # per-layer attention types: rebuilt by the config for the probe's depth
    text = {k: v for k, v in cfg.get("text_config", cfg).items() if k not in drop}
    s: dict = {"text": text, "media": dict(media or {}), "text_tokens": text_tokens}
    if family == "qwen2_audio":
        audio = cfg["audio_config"]
        s["audio"] = {k: audio[k] for k in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim")}
        s["feature_size"] = audio["num_mel_bins"]
        s["chunk_length"] = int(audio["max_source_positions"] * 2 // 100)  # 100 mel frames per second, conv stride 2
        s["media"].setdefault("seconds", float(s["chunk_length"]))
    elif family == "llava_next":
        vision = cfg["vision_config"]
        s["vision"] = {k: vision[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
        s.update(image_size=vision["image_size"], patch_size=vision["patch_size"],
                 grid=cfg["image_grid_pinpoints"], feature_layer=cfg["vision_feature_layer"])
        s["media"].setdefault("image", 2 * vision["image_size"])
    return s


def build(family: str, scale: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
          text_layers: Optional[int] = None, encoder_layers: Optional[int] = None,
          custom: Optional[dict] = None) -> Backbone:
    """A randomly initialised `family` backbone at `scale` (or with the size dict `custom`), created
    directly on `device` in `dtype`.

    Created under `torch.device(device)` with `dtype` as the default dtype: a 7B model is initialised
    on the GPU in seconds instead of minutes on the host.
    """
    from loramcl.tiny_base import tiny_llama, tiny_llava_next, tiny_qwen2_audio

    s = _with_layers(custom, family, text_layers, encoder_layers) if custom is not None else sizes(
        family, scale, text_layers, encoder_layers)
    builder = {"qwen2_audio": tiny_qwen2_audio, "llava_next": tiny_llava_next, "alma": tiny_llama}[family]
    arch = {k: v for k, v in s.items() if k not in ("media", "text_tokens")}
    if family == "alma":
        arch = arch.get("text", {})
    tokenizer = _tokenizer(family)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model, processor = builder(tokenizer, seed, sizes=arch)
    finally:
        torch.set_default_dtype(previous)
    return Backbone(family, scale, model, processor, s)


def example_batch(backbone: Backbone, batch_size: int, text_tokens: Optional[int] = None, device: str = "cpu",
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch of `batch_size` worst-case items through the project's collators (labels included).

    Audio: clips of the scale's full length; images: one square image of the scale's size (the
    base crop and a tile set); MT: a source and a target of `text_tokens` tokens each.
    """
    rng = np.random.default_rng(seed)
    n = text_tokens or backbone.sizes["text_tokens"]
    caption = " ".join(_WORDS[i % len(_WORDS)] for i in range(n))
    media = backbone.sizes["media"]
    if backbone.family == "qwen2_audio":
        rate = backbone.processor.feature_extractor.sampling_rate
        items = [{"audio": rng.standard_normal(int(rate * media["seconds"])).astype(np.float32) * 0.1,
                  "captions": [caption], "id": i} for i in range(batch_size)]
        batch = AudioCaptionCollator(backbone.processor, references="first")(items)
    elif backbone.family == "llava_next":
        from PIL import Image

        side = media["image"]
        items = [{"image": Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)),
                  "captions": [caption], "id": i} for i in range(batch_size)]
        batch = ImageCaptionCollator(backbone.processor, references="first")(items)
    else:
        items = [{"source": caption, "references": [caption], "id": i} for i in range(batch_size)]
        batch = TranslationCollator(backbone.tokenizer, references="first", max_source_tokens=n,
                                    max_target_tokens=n)(items)
    batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
    vocab = backbone.model.get_input_embeddings().num_embeddings
    if backbone.family == "alma" and int(batch["input_ids"].max()) >= vocab:  # a model smaller than the tokenizer
        batch["input_ids"] = batch["input_ids"] % vocab
        batch["labels"] = torch.where(batch["labels"] >= 0, batch["labels"] % vocab, batch["labels"])
    return batch


def prompts_of(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The prompt part of a right-padded training batch (labels == -100 before the target), left-padded
    for generation; media inputs are kept."""
    from loramcl.losses import IGNORE_INDEX

    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    lengths = [int(((labels[i] == IGNORE_INDEX) & (mask[i] == 1)).sum()) for i in range(ids.shape[0])]
    width = max(lengths)
    out_ids = ids.new_zeros((ids.shape[0], width))
    out_mask = mask.new_zeros((ids.shape[0], width))
    for i, n in enumerate(lengths):
        out_ids[i, width - n:] = ids[i, :n]
        out_mask[i, width - n:] = 1
    media = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels")}
    return {"input_ids": out_ids, "attention_mask": out_mask, **media}
