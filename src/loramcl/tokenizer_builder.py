"""Small byte-level BPE tokenizers trained locally, for the tiny backbones.

No tokenizer can be downloaded on the project's machines, so the tiny variants of each backbone get
a tokenizer trained on the project's synthetic corpora (plus the task prompts), with the special
tokens the real model's processor expects (`<|AUDIO|>` for Qwen2-Audio, `<image>` for LLaVA-NeXT,
...). It is saved with `save_pretrained` and loaded back through `AutoTokenizer.from_pretrained`,
the same path as a real checkpoint's tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Special tokens per backbone family: (bos, eos, pad, unk, additional)
SPECIAL_TOKENS = {
    "qwen2": ("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", None,
              ["<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]),
    "llama": ("<s>", "</s>", "<unk>", "<unk>", []),
    "llava": ("<s>", "</s>", "<unk>", "<unk>", ["<image>"]),
}


def train_tokenizer(texts: Iterable[str], family: str, vocab_size: int = 1024, out_dir: str | Path | None = None,
                    extra_special: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` with the special tokens of `family`; save it if `out_dir`."""
    if family not in SPECIAL_TOKENS:
        raise ValueError(f"tokenizer family must be one of {', '.join(SPECIAL_TOKENS)}, got {family!r}")
    bos, eos, pad, unk, additional = SPECIAL_TOKENS[family]
    additional = list(additional) + list(extra_special)
    specials = list(dict.fromkeys(t for t in (pad, bos, eos, unk, *additional) if t))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                      unk_token=unk, additional_special_tokens=additional)
    if out_dir is not None:
        wrapped.save_pretrained(str(out_dir))
    return wrapped
