"""Prompt + target + EOS rows with the prompt and padding masked out of the labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

from loramcl.data.collate import AUDIO_PROMPT, AudioCaptionCollator, pick_references
from loramcl.tokenizer_builder import train_tokenizer

CAPTIONS = ["a high beep followed by static", "static comes after a shrill tone", "a low hum",
            "a deep tone hums quietly", "clicks repeat quickly"]


@pytest.fixture(scope="module")
def processor():
    tok = train_tokenizer(CAPTIONS * 5 + [AUDIO_PROMPT], "qwen2", vocab_size=300)
    return Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128, chunk_length=4), tokenizer=tok)


def items():
    return [{"id": "a", "audio": np.random.default_rng(0).standard_normal(16000).astype(np.float32), "captions": CAPTIONS[:2]},
            {"id": "b", "audio": np.zeros(48000, dtype=np.float32), "captions": CAPTIONS[2:]}]


def test_training_rows_score_only_caption_and_eos(processor):
    batch = AudioCaptionCollator(processor, references="first")(items())
    tok = processor.tokenizer
    for row, caption in zip(range(2), [CAPTIONS[0], CAPTIONS[2]]):
        scored = batch["labels"][row][batch["labels"][row] != -100]
        assert tok.decode(scored) == " " + caption + tok.eos_token
    # padding (right side) is never scored and attention_mask marks it
    pad_rows = batch["attention_mask"] == 0
    assert pad_rows.any() and (batch["labels"][pad_rows] == -100).all()
    # the audio placeholders were expanded: 1 s -> 25 tokens, 3 s -> 75 tokens
    audio_id = tok.convert_tokens_to_ids("<|AUDIO|>")
    assert (batch["input_ids"] == audio_id).sum(dim=1).tolist() == [25, 75]
    assert batch["input_features"].shape == (2, 128, 400)


def test_reference_modes(processor):
    batch = AudioCaptionCollator(processor, references="all")(items())
    assert batch["input_ids"].shape[0] == 5 and batch["targets"] == CAPTIONS
    picks = {tuple(AudioCaptionCollator(processor, references="random", seed=s)(items())["targets"]) for s in range(20)}
    assert len(picks) > 1  # a random reference per clip per step
    with pytest.raises(ValueError, match="no reference caption"):
        pick_references([], "random", None)


def test_generation_rows_are_left_padded_prompts(processor):
    batch = AudioCaptionCollator(processor, train=False)(items())
    assert "labels" not in batch
    assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][0, 0] == 0)
    text = processor.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0] == 1])
    assert text.endswith("<|audio_eos|>Generate the caption in English:")
