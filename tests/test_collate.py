"""Prompt + target + EOS rows with the prompt and padding masked out of the labels."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_translation_rows_score_only_target_and_eos():
    from loramcl.data.collate import TranslationCollator

    pairs = [("the cat sleeps", ["die Katze schläft", "die Katze pennt"]), ("two red cars", ["zwei rote Autos"])]
    tok = train_tokenizer([s for s, _ in pairs] + [r for _, refs in pairs for r in refs] * 3
                          + ["Translate this from English to German:\nEnglish:\nGerman:"], "llama", vocab_size=300)
    items = [{"id": i, "source": s, "references": refs} for i, (s, refs) in enumerate(pairs)]
    batch = TranslationCollator(tok, references="first")(items)
    for row, (source, refs) in enumerate(pairs):
        scored = batch["labels"][row][batch["labels"][row] != -100]
        assert tok.decode(scored) == " " + refs[0] + tok.eos_token
        text = tok.decode(batch["input_ids"][row][batch["attention_mask"][row] == 1])
        assert text.startswith(f"Translate this from English to German:\nEnglish: {source}\nGerman: {refs[0]}")
    assert TranslationCollator(tok, references="all")(items)["input_ids"].shape[0] == 3
    # generation rows: the prompt alone, left padded, ending with "German:"
    gen = TranslationCollator(tok, train=False)(items)
    assert "labels" not in gen and tok.decode(gen["input_ids"][1][gen["attention_mask"][1] == 1]).endswith("\nGerman:")
    # sources are cut to max_source_tokens
    long_item = [{"id": 0, "source": "the cat sleeps " * 20, "references": ["x"]}]
    full = TranslationCollator(tok, references="first")(long_item)["input_ids"].shape[1]
    cut = TranslationCollator(tok, references="first", max_source_tokens=2)(long_item)["input_ids"].shape[1]
    source_tokens = len(tok("the cat sleeps " * 20, add_special_tokens=False)["input_ids"])
    assert full - cut == source_tokens - 2
