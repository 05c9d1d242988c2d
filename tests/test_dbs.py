"""Diverse beam search reproduces transformers 4.56.2's group beam search (recorded fixture)."""

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from loramcl.decoding.dbs import diverse_beam_search


def _fixture_dir() -> Path:
    here = Path(__file__).resolve()
    for root in (here.parents[2], here.parents[1]):
        path = root / "shared" / "fixtures" / "dbs_reference"
        if (path / "expected.json").is_file():
            return path
    pytest.skip("dbs_reference fixture not found")


@lru_cache(maxsize=1)
def _load(path: Path):
    from transformers import LlamaForCausalLM

    expected = json.loads((path / "expected.json").read_text())
    model = LlamaForCausalLM.from_pretrained(path / "model").eval()
    return model, expected


@lru_cache(maxsize=None)
def _run(path: Path, case_idx: int):
    model, expected = _load(path)
    params = expected["cases"][case_idx]["params"]
    return diverse_beam_search(
        model,
        torch.tensor(expected["prompt_ids"]),
        torch.tensor(expected["attention_mask"]),
        eos_token_id=expected["eos_token_id"],
        pad_token_id=expected["pad_token_id"],
        **params,
    )


@pytest.mark.parametrize("case_idx", range(4))
def test_matches_transformers_4_group_beam_search(case_idx):
    path = _fixture_dir()
    _, expected = _load(path)
    case = expected["cases"][case_idx]
    sequences, scores = _run(path, case_idx)
    assert sequences.tolist() == case["sequences"]
    torch.testing.assert_close(
        scores, torch.tensor(case["sequences_scores"]), atol=1e-4, rtol=0
    )


def test_returns_num_return_sequences_rows_per_prompt():
    path = _fixture_dir()
    _, expected = _load(path)
    n_prompts = len(expected["prompt_ids"])
    for case_idx, case in enumerate(expected["cases"]):
        params = case["params"]
        sequences, scores = _run(path, case_idx)
        rows = n_prompts * params["num_return_sequences"]
        assert sequences.shape == (rows, params["max_new_tokens"])
        assert scores.shape == (rows,)
        # best first within each prompt
        per_prompt = scores.view(n_prompts, params["num_return_sequences"])
        assert torch.all(per_prompt[:, :-1] >= per_prompt[:, 1:])
