"""Collators that turn raw items into model batches with the paper's prompts and label masking.

Training rows are `prompt + " " + target + EOS`; the prompt (audio / image placeholders included)
and the padding are masked out of the labels (-100), so only the target and its EOS are scored.
Generation rows are the prompt alone, left-padded. Each collator takes one reference per item at
random per step (`references="random"`, the paper), every reference as its own row ("all"), or
the first one ("first", deterministic validation).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np
import torch

from loramcl.losses import IGNORE_INDEX

AUDIO_PROMPT = "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:"  # paper
REFERENCE_MODES = ("random", "all", "first")


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a batch (collators also pass references, ids and targets for evaluation)."""
    return {k: v for k, v in batch.items() if torch.is_tensor(v)}


def pick_references(references: Sequence[str], mode: str, rng: random.Random) -> list[str]:
    if mode not in REFERENCE_MODES:
        raise ValueError(f"references must be one of {', '.join(REFERENCE_MODES)}, got {mode!r}")
    if not references:
        raise ValueError("an item has no reference caption")
    if mode == "all":
        return list(references)
    return [references[0] if mode == "first" else rng.choice(list(references))]


def mask_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: Sequence[int],
                padding_side: str = "right") -> torch.Tensor:
    """labels = input_ids with the prompt and the padding replaced by -100."""
    labels = input_ids.clone()
    labels[attention_mask == 0] = IGNORE_INDEX
    for row, n in enumerate(prompt_lengths):
        start = 0 if padding_side == "right" else int((attention_mask[row] == 0).sum())
        labels[row, start:start + n] = IGNORE_INDEX
    return labels


class CaptionCollator:
    """Prompt with a media placeholder (expanded by the processor) + caption + EOS.

    Items are dicts with the media under `media_key`, "captions" and "id". The prompt ends at the
    last `boundary_token` (the placeholder's closing token) plus the prompt's text after it, which
    is tokenised alone to find where each row's target starts.
    """

    media_key = ""
    model_keys: tuple[str, ...] = ("input_ids", "attention_mask")

    def __init__(self, processor: Any, prompt: str, references: str = "random", train: bool = True, seed: int = 0):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.prompt = prompt
        self.references = references
        self.train = train
        self.rng = random.Random(seed)
        boundary = self.boundary_token()
        if boundary not in prompt:
            raise ValueError(f"the prompt {prompt!r} has no {boundary} placeholder")
        self.boundary_id = self.tokenizer.convert_tokens_to_ids(boundary)
        tail = prompt.split(boundary)[-1]
        self.tail_length = len(self.tokenizer(tail, add_special_tokens=False)["input_ids"]) if tail else 0

    def boundary_token(self) -> str:
        raise NotImplementedError

    def process(self, texts: list[str], media: list[Any], padding_side: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, items: Sequence[dict]) -> dict[str, Any]:
        media, texts, targets, ids = [], [], [], []
        for item in items:
            if not self.train:  # one generation row per item, captions or not (a new input: predict.py)
                media.append(item[self.media_key])
                targets.append(item["captions"][0] if item.get("captions") else "")
                ids.append(item.get("id"))
                texts.append(self.prompt)
                continue
            rng = random.Random(item["draw"]) if "draw" in item else self.rng
            for ref in pick_references(item["captions"], self.references, rng):
                media.append(item[self.media_key])
                targets.append(ref)
                ids.append(item.get("id"))
                texts.append(self.prompt + " " + ref + self.tokenizer.eos_token)
        padding_side = "right" if self.train else "left"  # per call: the shared tokenizer is never changed
        batch = {k: v for k, v in self.process(texts, media, padding_side).items() if k in self.model_keys}
        if self.train:
            batch["labels"] = mask_prompt(batch["input_ids"], batch["attention_mask"], self._prompt_lengths(batch),
                                          padding_side)
        extra = {"references": [item["captions"] for item in items], "ids": ids, "targets": targets}
        if any("languages" in item for item in items):
            extra["languages"] = [item.get("languages") for item in items]
        return {**batch, **extra}

    def _prompt_lengths(self, batch: dict[str, torch.Tensor]) -> list[int]:
        lengths = []
        for row in batch["input_ids"]:
            ends = (row == self.boundary_id).nonzero()
            if len(ends) == 0:
                raise ValueError("a row lost its media placeholder: check the prompt and the tokenizer")
            lengths.append(int(ends[-1]) + 1 + self.tail_length)
        return lengths


class AudioCaptionCollator(CaptionCollator):
    """Qwen2-Audio batches: Whisper features + `<|AUDIO|>`-expanded prompt (+ caption + EOS)."""

    media_key = "audio"
    model_keys = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")

    def __init__(self, processor: Any, prompt: str = AUDIO_PROMPT, references: str = "random", train: bool = True,
                 seed: int = 0):
        super().__init__(processor, prompt, references, train, seed)

    def boundary_token(self) -> str:
        return self.processor.audio_eos_token

    def process(self, texts: list[str], media: list[Any], padding_side: str) -> dict[str, torch.Tensor]:
        audios = [np.asarray(a, dtype=np.float32) for a in media]
        return self.processor(text=texts, audio=audios, sampling_rate=self.processor.feature_extractor.sampling_rate,
                              padding=True, padding_side=padding_side, return_tensors="pt")


IMAGE_PROMPT = "<image>\nPlease carefully observe the image and come up with a caption for the image."  # paper


class ImageCaptionCollator(CaptionCollator):
    """LLaVA-NeXT batches: pixel values of the anyres crops + `<image>`-expanded prompt (+ caption + EOS)."""

    media_key = "image"
    model_keys = ("input_ids", "attention_mask", "pixel_values", "image_sizes")

    def __init__(self, processor: Any, prompt: str = IMAGE_PROMPT, references: str = "random", train: bool = True,
                 seed: int = 0):
        super().__init__(processor, prompt, references, train, seed)

    def boundary_token(self) -> str:
        return self.processor.image_token

    def process(self, texts: list[str], media: list[Any], padding_side: str) -> dict[str, torch.Tensor]:
        return self.processor(text=texts, images=media, padding=True, padding_side=padding_side, return_tensors="pt")


TRANSLATION_PROMPT = "Translate this from {src_name} to {tgt_name}:\n{src_name}: {source}\n{tgt_name}:"  # ALMA
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "cs": "Czech", "ru": "Russian", "zh": "Chinese",
                  "is": "Icelandic"}


class PromptCollator:
    """Text-to-text batches: `render(item)` (the prompt) + `separator` + target + EOS.

    Items are dicts with "source", "references" and "id". Sources are cut to `max_source_tokens`,
    targets to `max_target_tokens`. Generation rows (train=False) are the prompts alone, left padded;
    an item without references (a new input, predict.py) is decoded all the same.
    """

    separator = " "
    add_special_tokens = True  # the tokenizer's BOS before the prompt (a chat template writes its own)

    def __init__(self, tokenizer: Any, references: str = "random", train: bool = True, seed: int = 0,
                 max_source_tokens: int = 256, max_target_tokens: int = 256):
        self.tokenizer = tokenizer
        self.references, self.train = references, train
        self.rng = random.Random(seed)
        self.max_source_tokens, self.max_target_tokens = max_source_tokens, max_target_tokens

    def render(self, item: dict) -> str:
        raise NotImplementedError

    def cut(self, text: str) -> str:
        """`text` cut to `max_source_tokens` tokens."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_source_tokens else self.tokenizer.decode(ids[: self.max_source_tokens])

    def __call__(self, items: Sequence[dict]) -> dict[str, Any]:
        prompts, targets, ids = [], [], []
        for item in items:
            prompt = self.render(item)
            if not self.train:  # one generation row per item, references or not
                prompts.append(prompt)
                targets.append(item["references"][0] if item.get("references") else "")
                ids.append(item.get("id"))
                continue
            rng = random.Random(item["draw"]) if "draw" in item else self.rng
            for ref in pick_references(item["references"], self.references, rng):
                prompts.append(prompt)
                targets.append(ref)
                ids.append(item.get("id"))
        tok = self.tokenizer
        extra = {"references": [item["references"] for item in items], "ids": ids, "targets": targets}
        if not self.train:
            batch = dict(tok(prompts, padding=True, padding_side="left", return_tensors="pt",
                             add_special_tokens=self.add_special_tokens))
            return {**batch, **extra}
        rows, prompt_lengths = [], []
        for prompt, target in zip(prompts, targets):
            p = tok(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]  # as at generation time
            t = tok(self.separator + target, add_special_tokens=False)["input_ids"][: self.max_target_tokens]
            rows.append(p + t + [tok.eos_token_id])
            prompt_lengths.append(len(p))
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        labels = mask_prompt(input_ids, attention_mask, prompt_lengths, "right")
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **extra}


class TranslationCollator(PromptCollator):
    """ALMA batches: `Translate this from English to German:\\nEnglish: {src}\\nGerman:` + target + EOS."""

    def __init__(self, tokenizer: Any, src_lang: str = "en", tgt_lang: str = "de", references: str = "random",
                 train: bool = True, seed: int = 0, max_source_tokens: int = 256, max_target_tokens: int = 256,
                 prompt: str = TRANSLATION_PROMPT):
        super().__init__(tokenizer, references, train, seed, max_source_tokens, max_target_tokens)
        self.names = {"src_name": LANGUAGE_NAMES.get(src_lang, src_lang), "tgt_name": LANGUAGE_NAMES.get(tgt_lang, tgt_lang)}
        self.prompt = prompt

    def render(self, item: dict) -> str:
        return self.prompt.format(source=self.cut(item["source"]), **self.names)
