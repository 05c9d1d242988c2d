"""Diverse beam search reproduces transformers 4.56.2's group beam search (recorded fixture).

The reference (a tiny seeded Llama and the ids / scores transformers 4.56.2 returned) is part of the
repository: tests/fixtures/dbs_reference (its README says how it was made).
"""

import json
from functools import lru_cache

import pytest
import torch

from helpers import FIXTURES
from loramcl.decoding.dbs import diverse_beam_search

REFERENCE = FIXTURES / "dbs_reference"


@lru_cache(maxsize=1)
def _load():
    from transformers import LlamaForCausalLM

    expected = json.loads((REFERENCE / "expected.json").read_text())
    model = LlamaForCausalLM.from_pretrained(REFERENCE / "model").eval()
    return model, expected


@lru_cache(maxsize=None)
def _run(case_idx: int):
    model, expected = _load()
    params = expected["cases"][case_idx]["params"]
    return diverse_beam_search(
        model,
        torch.tensor(expected["prompt_ids"]),
        torch.tensor(expected["attention_mask"]),
        eos_token_id=expected["eos_token_id"],
        pad_token_id=expected["pad_token_id"],
        **params,
    )


def test_reference_fixture_is_complete():
    """The recorded reference ships with the repository: four cases over three prompts."""
    _, expected = _load()
    assert len(expected["cases"]) == 4 and len(expected["prompt_ids"]) == 3


@pytest.mark.parametrize("case_idx", range(4))
def test_matches_transformers_4_group_beam_search(case_idx):
    _, expected = _load()
    case = expected["cases"][case_idx]
    sequences, scores = _run(case_idx)
    assert sequences.tolist() == case["sequences"]
    torch.testing.assert_close(
        scores, torch.tensor(case["sequences_scores"]), atol=1e-4, rtol=0
    )


def test_returns_num_return_sequences_rows_per_prompt():
    _, expected = _load()
    n_prompts = len(expected["prompt_ids"])
    for case_idx, case in enumerate(expected["cases"]):
        params = case["params"]
        sequences, scores = _run(case_idx)
        rows = n_prompts * params["num_return_sequences"]
        assert sequences.shape == (rows, params["max_new_tokens"])
        assert scores.shape == (rows,)
        # best first within each prompt
        per_prompt = scores.view(n_prompts, params["num_return_sequences"])
        assert torch.all(per_prompt[:, :-1] >= per_prompt[:, 1:])
