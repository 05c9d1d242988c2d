"""Diverse beam search reproduces transformers 4.56.2's group beam search (recorded fixture).

The reference (a tiny seeded Llama and the ids / scores transformers 4.56.2 returned) is part of the
repository: tests/fixtures/dbs_reference (its README says how it was made). The vectorised
implementation (the default) returns exactly what the former per-candidate loop returns, on random
tiny models.
"""

import json
import random
from functools import lru_cache
from types import SimpleNamespace
from unittest import mock

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


# ---- the vectorised implementation against the former per-candidate loop --------------------------

EOS, PAD, MAX_NEW = 1, 0, 10
# (B, K, G, diversity, repetition, length penalty, return): G from 1 to K, k = 1 to 3, and with the EOS
# bias of _eos_model groups finish at different steps and some cases stop before MAX_NEW
CASES = [
    (1, 4, 2, 0.0, None, 1.0, 4),
    (2, 6, 3, 0.7, None, 0.8, 6),
    (3, 4, 4, 1.0, None, 1.0, 3),
    (3, 4, 2, 0.5, 1.3, 1.2, 4),
    (3, 6, 2, 0.5, 1.3, 0.9, 6),
    (2, 6, 1, 0.0, 1.2, 0.7, 6),
    (3, 9, 3, 0.3, 0.8, 0.5, 5),
    (3, 6, 3, 0.3, 1.5, 0.7, 6),
]


@lru_cache(maxsize=1)
def _eos_model():
    """A tiny random Llama whose scaled-up EOS row of `lm_head` makes beams finish early."""
    from tiny_models import tiny_llama

    model = tiny_llama(seed=0)
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 7.0
    return model


@lru_cache(maxsize=None)
def _decode(case_idx: int, implementation: str):
    """(sequences, scores, the (step, result) of every is_done check) of one case."""
    from loramcl.decoding import dbs

    B, K, G, diversity, repetition, length_penalty, n = CASES[case_idx]
    generator = torch.Generator().manual_seed(case_idx)
    input_ids = torch.randint(2, 64, (B, 5), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for b in range(B):  # left padding of b tokens
        input_ids[b, :b] = PAD
        attention_mask[b, :b] = 0
    checks, is_done = [], dbs._Hypotheses.is_done

    def traced(self, best_sum_logprobs, gen_len):
        result = is_done(self, best_sum_logprobs, gen_len)
        checks.append((gen_len, result))
        return result

    with mock.patch.object(dbs._Hypotheses, "is_done", traced):
        sequences, scores = diverse_beam_search(
            _eos_model(), input_ids, attention_mask, num_beams=K, num_beam_groups=G,
            diversity_penalty=diversity, num_return_sequences=n, max_new_tokens=MAX_NEW,
            eos_token_id=EOS, pad_token_id=PAD, length_penalty=length_penalty,
            repetition_penalty=repetition, implementation=implementation,
        )
    return sequences, scores, sorted(checks)


@pytest.mark.parametrize("case_idx", range(len(CASES)))
def test_vectorized_equals_loop(case_idx):
    sequences, scores, checks = _decode(case_idx, "vectorized")
    loop_sequences, loop_scores, loop_checks = _decode(case_idx, "loop")
    assert torch.equal(sequences, loop_sequences)
    assert torch.equal(scores, loop_scores)
    assert checks == loop_checks  # the same groups finish at the same steps


def test_equivalence_cases_finish_groups_early():
    """The cases above exercise finished groups (pad, score 0) next to running ones, and early stop."""
    checks = [_decode(i, "vectorized")[2] for i in range(len(CASES))]
    assert any(len({t for t, done in c if done}) > 1 for c in checks)
    assert any(max(t for t, _ in c) < MAX_NEW for c in checks)


class _Bigram(torch.nn.Module):
    """A random bigram table as a causal LM (logits from the last token only), EOS favoured.

    With a vocabulary of a few tokens the groups compete for the same ones, so the Hamming penalties
    matter: e.g. seed 3 fails if a finished group counts its would-be token instead of the pad it emits.
    """

    def __init__(self, seed: int, vocab: int, eos_bias: float) -> None:
        super().__init__()
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 2
        self.table[:, EOS] += eos_bias

    def forward(self, input_ids, past_key_values=None, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=past_key_values)


@pytest.mark.parametrize("seed", range(40))
def test_vectorized_equals_loop_on_random_bigram_models(seed):
    rng = random.Random(seed)
    vocab, B, K = rng.choice([8, 12, 16]), rng.randint(1, 3), rng.choice([2, 3, 4, 6, 8])
    model = _Bigram(seed, vocab, eos_bias=rng.choice([0.0, 1.0, 2.0]))
    input_ids = torch.randint(2, vocab, (B, 4), generator=torch.Generator().manual_seed(seed))
    kwargs = dict(
        num_beams=K, num_beam_groups=rng.choice([g for g in range(1, K + 1) if K % g == 0]),
        diversity_penalty=rng.choice([0.0, 0.5, 2.0]), num_return_sequences=rng.randint(1, K),
        max_new_tokens=rng.randint(3, 12), eos_token_id=EOS, pad_token_id=PAD,
        length_penalty=rng.choice([0.5, 1.0, 1.5]), repetition_penalty=rng.choice([None, 1.3, 0.8]),
    )
    attention_mask = torch.ones_like(input_ids)
    sequences, scores = diverse_beam_search(model, input_ids, attention_mask, **kwargs)
    loop_sequences, loop_scores = diverse_beam_search(model, input_ids, attention_mask, implementation="loop", **kwargs)
    assert torch.equal(sequences, loop_sequences)
    assert torch.equal(scores, loop_scores)


def test_unknown_implementation_is_rejected():
    model, expected = _load()
    with pytest.raises(ValueError, match="implementation must be one of"):
        diverse_beam_search(
            model, torch.tensor(expected["prompt_ids"]), torch.tensor(expected["attention_mask"]),
            num_beams=2, num_beam_groups=2, diversity_penalty=0.5, num_return_sequences=2, max_new_tokens=2,
            eos_token_id=2, pad_token_id=0, implementation="cuda",
        )
