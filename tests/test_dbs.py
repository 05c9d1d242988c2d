"""Diverse beam search reproduces transformers 4.56.2's group beam search (recorded fixture).

The reference (a tiny seeded Llama and the ids / scores transformers 4.56.2 returned) is part of the
repository: tests/fixtures/dbs_reference (its README says how it was made). The vectorised
implementation returns exactly what the former per-candidate loop (tests/dbs_reference.py) returns, on
random tiny models, pooled or per group (`per_group=True`), with the group of each row (`return_groups`).
"""

import json
import random
from functools import lru_cache
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

import dbs_reference
from helpers import FIXTURES
from loramcl.decoding.dbs import diverse_beam_search

REFERENCE = FIXTURES / "dbs_reference"
SEARCHES = {"vectorized": diverse_beam_search, "loop": dbs_reference.diverse_beam_search}


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

    search = SEARCHES[implementation]
    with mock.patch.object(dbs._Hypotheses, "is_done", traced):
        sequences, scores, groups = search(
            _eos_model(), input_ids, attention_mask, num_beams=K, num_beam_groups=G,
            diversity_penalty=diversity, num_return_sequences=n, max_new_tokens=MAX_NEW,
            eos_token_id=EOS, pad_token_id=PAD, length_penalty=length_penalty,
            repetition_penalty=repetition, return_groups=True,
        )
    # the same search, every group's hypotheses returned (per_group, n = k = K / G)
    every = search(
        _eos_model(), input_ids, attention_mask, num_beams=K, num_beam_groups=G, diversity_penalty=diversity,
        num_return_sequences=K // G, max_new_tokens=MAX_NEW, eos_token_id=EOS, pad_token_id=PAD,
        length_penalty=length_penalty, repetition_penalty=repetition,
        per_group=True, return_groups=True,
    )
    return sequences, scores, sorted(checks), groups, every


@pytest.mark.parametrize("case_idx", range(len(CASES)))
def test_vectorized_equals_loop(case_idx):
    sequences, scores, checks, groups, every = _decode(case_idx, "vectorized")
    loop_sequences, loop_scores, loop_checks, loop_groups, loop_every = _decode(case_idx, "loop")
    assert torch.equal(sequences, loop_sequences)
    assert torch.equal(scores, loop_scores)
    assert checks == loop_checks  # the same groups finish at the same steps
    assert torch.equal(groups, loop_groups)
    assert all(torch.equal(a, b) for a, b in zip(every, loop_every))


@pytest.mark.parametrize("case_idx", range(len(CASES)))
def test_per_group_returns_each_groups_hypotheses_and_pooling_keeps_their_groups(case_idx):
    """per_group with n = k returns all k finished hypotheses of every group, groups in order, best
    first in each; the pooled rows are the best of them, with the group they came from."""
    B, K, G, _, _, _, n = CASES[case_idx]
    k = K // G
    sequences, scores, _, groups, (every_seq, every_scores, every_groups) = _decode(case_idx, "vectorized")
    assert every_seq.shape == (B * K, MAX_NEW)
    assert every_groups.tolist() == [g for _ in range(B) for g in range(G) for _ in range(k)]
    per_group = every_scores.view(B, G, k)
    assert torch.all(per_group[..., :-1] >= per_group[..., 1:])
    for b in range(B):
        pool = {(tuple(every_seq[i].tolist()), float(every_scores[i]), int(every_groups[i]))
                for i in range(b * K, (b + 1) * K)}
        rows = range(b * n, (b + 1) * n)
        returned = [(tuple(sequences[i].tolist()), float(scores[i]), int(groups[i])) for i in rows]
        assert set(returned) <= pool
        best = sorted((s for _, s, _ in pool), reverse=True)[:n]
        assert [s for _, s, _ in returned] == best


def test_per_group_rejects_more_returns_than_beams_per_group():
    with pytest.raises(ValueError, match="per_group returns num_return_sequences per group: it must be <= .* = 2"):
        diverse_beam_search(_eos_model(), torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long),
                            num_beams=4, num_beam_groups=2, diversity_penalty=0.5, num_return_sequences=3,
                            max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD, per_group=True)


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
    if rng.random() < 0.5:  # drawn last: the cases above stay the ones they were
        kwargs.update(per_group=True, num_return_sequences=rng.randint(1, K // kwargs["num_beam_groups"]))
    attention_mask = torch.ones_like(input_ids)
    out = diverse_beam_search(model, input_ids, attention_mask, return_groups=True, **kwargs)
    loop = dbs_reference.diverse_beam_search(model, input_ids, attention_mask, return_groups=True, **kwargs)
    for a, b in zip(out, loop):  # sequences, scores, groups
        assert torch.equal(a, b)


def test_unpenalised_padding_decodes_each_prompt_as_if_alone():
    """penalise_padding=False (transformers 5's `generate`): the repetition penalty leaves the prompt's
    left padding out, so a prompt gives in a padded batch what it gives alone, in both implementations
    (the loop through HF's `prompt_ignore_length`, the vectorised one through out-of-vocabulary ids).
    With the default (transformers 4, the recorded reference) the pad token is penalised in padded
    prompts only, and some of these prompts decode differently."""
    differs = False
    for seed in range(10):
        rng = random.Random(seed)
        vocab, K = rng.choice([6, 8]), rng.choice([2, 4, 6])
        G = rng.choice([g for g in range(1, K + 1) if K % g == 0])
        model = _Bigram(seed, vocab, eos_bias=0.0)  # PAD (0) is an ordinary token of the table
        kwargs = dict(num_beams=K, num_beam_groups=G, diversity_penalty=0.5, num_return_sequences=K, max_new_tokens=6,
                      eos_token_id=EOS, pad_token_id=PAD, repetition_penalty=rng.choice([1.5, 0.7]))
        input_ids = torch.randint(2, vocab, (3, 4), generator=torch.Generator().manual_seed(seed))
        attention_mask = torch.ones_like(input_ids)
        for b in range(3):  # left padding of b tokens
            input_ids[b, :b], attention_mask[b, :b] = PAD, 0
        batches = {}
        for implementation in ("vectorized", "loop"):
            for penalise_padding in (False, True):
                search = SEARCHES[implementation]
                batch = search(model, input_ids, attention_mask, penalise_padding=penalise_padding, **kwargs)
                batches[implementation, penalise_padding] = batch
                for b in range(3):
                    alone = search(model, input_ids[b:b + 1, b:], attention_mask[b:b + 1, b:],
                                   penalise_padding=penalise_padding, **kwargs)
                    rows = slice(b * K, (b + 1) * K)
                    same = torch.equal(batch[0][rows], alone[0]) and torch.equal(batch[1][rows], alone[1])
                    if not penalise_padding:
                        assert same, (seed, implementation, b)
                    differs |= not same
        for penalise_padding in (False, True):
            assert all(torch.equal(a, b) for a, b in zip(batches["vectorized", penalise_padding],
                                                         batches["loop", penalise_padding]))
    assert differs

