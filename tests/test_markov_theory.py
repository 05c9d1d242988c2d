"""Exact theory of the Markov-mixture toy against brute-force enumeration and reference numbers.

Every quantity of `loramcl.toy.markov` is recomputed here from its definition by enumerating all
S^T sequences (explicit Bayes posteriors, explicit minima over chains, context counting), with the
chains' initial distributions rebuilt independently (stationary by matrix power), and compared to
1e-12. The paper's reference numbers (T = 32) and the sampler's statistics are checked too.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from loramcl.toy.markov import (
    MarkovMixture,
    exact_loss_of_predictors,
    mcl_band,
    mle_optimum,
    paper_mixture,
    position_averaged_matrix,
    receptive_field_optimum,
    sample,
    stationary_average_matrix,
    theory_summary,
    wta_entropy_bound,
)

# Re-declared rather than imported, so that a typo in the module's presets would show up.
PAPER = {
    "transition1": ([[0.8, 0.2], [0.9, 0.1]], [[0.2, 0.8], [0.25, 0.75]]),
    "transition2": ([[0.3, 0.7], [0.8, 0.2]], [[0.2, 0.8], [0.25, 0.75]]),
}

# (transitions, weights, init, T): beyond two states, two chains and uniform weights.
GENERAL = {
    "three_chains": (
        [[[0.8, 0.2], [0.9, 0.1]], [[0.2, 0.8], [0.25, 0.75]], [[0.5, 0.5], [0.6, 0.4]]],
        [0.5, 0.3, 0.2],
        "stationary",
        5,
    ),
    "three_states": (
        [[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]],
         [[0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.3, 0.4, 0.3]]],
        [0.7, 0.3],
        [0.2, 0.3, 0.5],
        5,
    ),
    "three_states_stationary": (
        [[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]],
         [[0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.3, 0.4, 0.3]]],
        None,
        "stationary",
        5,
    ),
    "zero_entries": (  # chain 0 is absorbed in state 0: impossible sequences, infinite NLLs
        [[[1.0, 0.0], [0.5, 0.5]], [[0.3, 0.7], [0.6, 0.4]]],
        [0.4, 0.6],
        "uniform",
        6,
    ),
}


# --------------------------------------------------------------------------------------------
# Brute force
# --------------------------------------------------------------------------------------------


class Brute:
    """All S^T sequences of a mixture with their probabilities, straight from the definition."""

    def __init__(self, transitions, weights, init, seq_len):
        self.P = [np.asarray(p, dtype=np.float64) for p in transitions]
        self.C, self.S, self.T = len(self.P), self.P[0].shape[0], seq_len
        self.w = np.full(self.C, 1.0 / self.C) if weights is None else np.asarray(weights, float)
        if init == "uniform":
            self.init = [np.full(self.S, 1.0 / self.S)] * self.C
        elif init == "stationary":
            self.init = [np.linalg.matrix_power(p, 4096)[0] for p in self.P]
        else:
            self.init = [np.asarray(init, dtype=np.float64)] * self.C
        self.seqs = list(itertools.product(range(self.S), repeat=seq_len))
        self.probs = [self.prob(x) for x in self.seqs]

    def cond(self, c, x, stop=None):
        """P_c(x_2..x_stop | x_1), the product of the first stop - 1 transitions."""
        stop = len(x) if stop is None else stop
        return math.prod(self.P[c][x[s], x[s + 1]] for s in range(stop - 1))

    def joint(self, c, x, stop=None):
        return self.w[c] * self.init[c][x[0]] * self.cond(c, x, stop)

    def prob(self, x):
        return sum(self.joint(c, x) for c in range(self.C))

    def predictive(self, x, t):
        """Bayes p(. | x_1..x_t) as a length-S vector."""
        post = np.array([self.joint(c, x, t) for c in range(self.C)])
        post /= post.sum()
        return sum(post[c] * self.P[c][x[t - 1]] for c in range(self.C))

    def nll(self, q, x):
        """-log Q(x_2..T | x_1) for one matrix Q."""
        terms = [q[x[s], x[s + 1]] for s in range(len(x) - 1)]
        return math.inf if min(terms) == 0 else -sum(math.log(v) for v in terms)

    def mle(self):
        total = 0.0
        for x, p in zip(self.seqs, self.probs):
            if p > 0:
                total += sum(-p * math.log(self.predictive(x, t)[x[t]]) for t in range(1, self.T))
        return total / (self.T - 1)

    def context_loss(self, window):
        """Best loss with context x_{t-W+1..t}, the predictor counted from the enumeration."""
        total = 0.0
        for t in range(1, self.T):
            lo = max(0, t - window)
            ctx, ctx_next = defaultdict(float), defaultdict(float)
            for x, p in zip(self.seqs, self.probs):
                ctx[x[lo:t]] += p
                ctx_next[x[lo:t + 1]] += p
            for x, p in zip(self.seqs, self.probs):
                if p > 0:
                    total -= p * math.log(ctx_next[x[lo:t + 1]] / ctx[x[lo:t]])
        return total / (self.T - 1)

    def wta(self, matrices):
        total = 0.0
        for x, p in zip(self.seqs, self.probs):
            if p > 0:
                total += p * min(self.nll(np.asarray(q), x) for q in matrices)
        return total / (self.T - 1)

    def each(self, matrices):
        return [self.wta([q]) for q in matrices]

    def own_chain(self):
        total = 0.0
        for c in range(self.C):
            for x in self.seqs:
                pc = self.init[c][x[0]] * self.cond(c, x)
                if pc > 0:
                    total += self.w[c] * pc * self.nll(self.P[c], x)
        return total / (self.T - 1)

    def averaged_matrix(self):
        """sum_t E[p(. | x_1..t) 1{x_t = i}] / sum_t P(x_t = i), t = 1..T-1."""
        num, den = np.zeros((self.S, self.S)), np.zeros(self.S)
        for x, p in zip(self.seqs, self.probs):
            if p > 0:
                for t in range(1, self.T):
                    num[x[t - 1]] += p * self.predictive(x, t)
                    den[x[t - 1]] += p
        return num / den[:, None]


def _paper_cases():
    return [
        pytest.param(list(PAPER[n]), None, init, T, id=f"{n}-{init}-T{T}")
        for n in PAPER
        for init in ("uniform", "stationary")
        for T in (5, 8)
    ]


def _general_cases():
    return [pytest.param(*spec, id=name) for name, spec in GENERAL.items()]


ALL_CASES = _paper_cases() + _general_cases()


@pytest.fixture(scope="module")
def brute_cache():
    return {}


def _brute(cache, transitions, weights, init, T):
    key = json.dumps([transitions, weights, init, T])
    if key not in cache:
        cache[key] = Brute(transitions, weights, init, T)
    return cache[key]


# --------------------------------------------------------------------------------------------
# Exact theory against brute force
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transitions, weights, init, T", ALL_CASES)
def test_mle_optimum_matches_bayes_enumeration(brute_cache, transitions, weights, init, T):
    brute = _brute(brute_cache, transitions, weights, init, T)
    mix = MarkovMixture(transitions, weights, init)
    expected = brute.mle()
    assert mle_optimum(mix, T) == pytest.approx(expected, abs=1e-12)
    # The same optimum by counting contexts instead of Bayes' rule.
    assert brute.context_loss(T) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("transitions, weights, init, T", ALL_CASES)
def test_mcl_band_matches_enumeration(brute_cache, transitions, weights, init, T):
    brute = _brute(brute_cache, transitions, weights, init, T)
    lo, hi = mcl_band(MarkovMixture(transitions, weights, init), T)
    assert lo == pytest.approx(brute.wta(brute.P), abs=1e-12)
    assert hi == pytest.approx(brute.own_chain(), abs=1e-12)
    assert lo <= hi + 1e-15


@pytest.mark.parametrize("transitions, weights, init, T", ALL_CASES)
def test_position_averaged_matrix_matches_enumeration(brute_cache, transitions, weights, init, T):
    brute = _brute(brute_cache, transitions, weights, init, T)
    got = position_averaged_matrix(MarkovMixture(transitions, weights, init), T)
    np.testing.assert_allclose(got, brute.averaged_matrix(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "transitions, weights, init, T, window",
    [
        pytest.param(list(PAPER[n]), None, init, 8, 3, id=f"{n}-{init}-T8-W3")
        for n in PAPER
        for init in ("uniform", "stationary")
    ]
    + [pytest.param(*spec, 2, id=f"{name}-W2") for name, spec in GENERAL.items()]
    + [pytest.param(*GENERAL["three_states"], 1, id="three_states-W1")],
)
def test_receptive_field_optimum_matches_context_counting(
    brute_cache, transitions, weights, init, T, window
):
    brute = _brute(brute_cache, transitions, weights, init, T)
    got = receptive_field_optimum(MarkovMixture(transitions, weights, init), T, window)
    assert got == pytest.approx(brute.context_loss(window), abs=1e-12)


@pytest.mark.parametrize("transitions, weights, init, T", ALL_CASES)
def test_loss_of_fixed_predictors_matches_enumeration(brute_cache, transitions, weights, init, T):
    brute = _brute(brute_cache, transitions, weights, init, T)
    mix = MarkovMixture(transitions, weights, init)
    rng = np.random.default_rng(T)
    q = rng.dirichlet(np.ones(brute.S), size=(3, brute.S))  # (K, S, S)
    assert exact_loss_of_predictors(mix, T, q, "wta") == pytest.approx(brute.wta(q), abs=1e-12)
    each = exact_loss_of_predictors(mix, T, q, "each")
    np.testing.assert_allclose(each, brute.each(q), rtol=0, atol=1e-12)
    lo = mcl_band(mix, T)[0]
    assert exact_loss_of_predictors(mix, T, brute.P) == pytest.approx(lo, abs=1e-15)


def test_predictor_with_a_zero_the_data_use_has_infinite_loss():
    mix = paper_mixture("transition1")
    q = [[1.0, 0.0], [0.5, 0.5]]
    assert exact_loss_of_predictors(mix, 6, [q]) == math.inf
    assert math.isfinite(exact_loss_of_predictors(mix, 6, [q, mix.transitions[1]]))


def test_full_receptive_field_equals_mle_optimum():
    mix = paper_mixture("transition2", init="stationary")
    mle = mle_optimum(mix, 32)
    for window in (31, 32, 40):
        assert receptive_field_optimum(mix, 32, window) == pytest.approx(mle, abs=1e-14)
    assert receptive_field_optimum(mix, 32, 9) > mle


def test_losses_are_ordered():
    """band lo <= hi < receptive-field optimum (W = 9) < ... the entropy bound sits below lo."""
    for name in PAPER:
        for init in ("uniform", "stationary"):
            mix = paper_mixture(name, init)
            lo, hi = mcl_band(mix, 32)
            mle = mle_optimum(mix, 32)
            rf = [receptive_field_optimum(mix, 32, w) for w in (1, 3, 9)]
            assert wta_entropy_bound(mix, 32) <= lo <= hi < mle < rf[2] < rf[1] < rf[0]


# --------------------------------------------------------------------------------------------
# Reference numbers, T = 32
# --------------------------------------------------------------------------------------------

# Exact values from this module (nats per scored token, T = 32), init: mle optimum, receptive
# field W = 9, band [lo, hi], entropy bound mle - log(2) / 31:
#   transition1 stationary: 0.524606, W9 0.531595, band [0.508056, 0.508058], bound 0.502247
#   transition1 uniform:    0.529347, W9 0.536031, band [0.506989, 0.506991], bound 0.506987
#   transition2 stationary: 0.573893, W9 0.586791, band [0.553196, 0.553452], bound 0.551533
#   transition2 uniform:    0.575085, W9 0.587495, band [0.552901, 0.553164], bound 0.552725
# The paper's band lower end (0.5025, 0.5519) is not the WTA loss of the true chains (0.5081,
# 0.5532) but the generic bound mle_optimum - log(2) / (T - 1) that any two hypotheses obey.
GOLDEN = {  # (mle optimum, band lo, band hi, receptive field W = 9)
    ("transition1", "stationary"): (0.524606264931, 0.508055717155, 0.508057709261, 0.531594946181),
    ("transition1", "uniform"): (0.529346752692, 0.506988604030, 0.506990607509, 0.536031443167),
    ("transition2", "stationary"): (0.573892552875, 0.553195882671, 0.553452342030, 0.586790555318),
    ("transition2", "uniform"): (0.575085338452, 0.552901283935, 0.553163587524, 0.587495317537),
}


@pytest.mark.parametrize(
    "name, band, mle",
    [("transition1", (0.5025, 0.5081), 0.5249), ("transition2", (0.5519, 0.5535), 0.5742)],
)
def test_paper_reference_values_with_stationary_starts(name, band, mle):
    mix = paper_mixture(name, init="stationary")
    assert mle_optimum(mix, 32) == pytest.approx(mle, abs=5e-4)
    assert mcl_band(mix, 32)[1] == pytest.approx(band[1], abs=5e-4)
    assert wta_entropy_bound(mix, 32) == pytest.approx(band[0], abs=5e-4)


@pytest.mark.parametrize(
    "name, mle, lo", [("transition1", 0.530, 0.507), ("transition2", 0.575, 0.553)]
)
def test_reference_values_with_uniform_first_token(name, mle, lo):
    mix = paper_mixture(name)
    assert mle_optimum(mix, 32) == pytest.approx(mle, abs=2e-3)
    assert mcl_band(mix, 32)[0] == pytest.approx(lo, abs=2e-3)


@pytest.mark.parametrize("key", list(GOLDEN), ids=lambda k: "-".join(k))
def test_golden_values(key):
    mix = paper_mixture(*key)
    mle, lo, hi, rf9 = GOLDEN[key]
    assert mle_optimum(mix, 32) == pytest.approx(mle, abs=1e-10)
    np.testing.assert_allclose(mcl_band(mix, 32), (lo, hi), rtol=0, atol=1e-10)
    assert receptive_field_optimum(mix, 32, 9) == pytest.approx(rf9, abs=1e-10)


def test_paper_presets_match_the_paper():
    for name, (p1, p2) in PAPER.items():
        mix = paper_mixture(name)
        np.testing.assert_array_equal(mix.transition_stack(), np.array([p1, p2]))
        np.testing.assert_array_equal(mix.weights, [0.5, 0.5])
        np.testing.assert_array_equal(mix.initial_stack(), np.full((2, 2), 0.5))


# --------------------------------------------------------------------------------------------
# Averaged matrices
# --------------------------------------------------------------------------------------------


def test_stationary_average_by_hand_transition1():
    mix = paper_mixture("transition1")
    np.testing.assert_allclose(mix.stationary(0), [9 / 11, 2 / 11], atol=1e-14)
    np.testing.assert_allclose(mix.stationary(1), [5 / 21, 16 / 21], atol=1e-14)
    # Row i: (pi1(i) P1[i] + pi2(i) P2[i]) / (pi1(i) + pi2(i));
    # in units of 1/231: pi1 = (189, 42), pi2 = (55, 176).
    expected = [
        [(189 * 0.8 + 55 * 0.2) / 244, (189 * 0.2 + 55 * 0.8) / 244],
        [(42 * 0.9 + 176 * 0.25) / 218, (42 * 0.1 + 176 * 0.75) / 218],
    ]
    np.testing.assert_allclose(stationary_average_matrix(mix), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", list(PAPER))
def test_position_averaged_matrix_properties(name):
    mix = paper_mixture(name)
    avg = position_averaged_matrix(mix, 32)
    np.testing.assert_allclose(avg.sum(axis=1), 1.0, atol=1e-14)
    chains = mix.transition_stack()
    assert np.all(avg >= chains.min(axis=0) - 1e-15) and np.all(avg <= chains.max(axis=0) + 1e-15)
    for c in range(2):
        only_c = position_averaged_matrix(mix, 32, chains=[c])
        np.testing.assert_allclose(only_c, chains[c], rtol=0, atol=1e-14)
    stationary = paper_mixture(name, init="stationary")
    np.testing.assert_allclose(
        position_averaged_matrix(stationary, 32), stationary_average_matrix(stationary), atol=1e-14
    )
    # With a uniform start the average differs from Pbar (by ~5e-3 here), which is why both exist.
    assert np.abs(avg - stationary_average_matrix(mix)).max() > 1e-3


def test_theory_summary_is_plain_json():
    summary = theory_summary(paper_mixture("transition1"), 32, window=9)
    assert set(summary) >= {
        "mle_optimum", "mle_receptive_field_optimum", "receptive_field", "mcl_band",
        "average", "stationary_average", "chains",
    }
    assert json.loads(json.dumps(summary)) == summary
    assert type(summary["mle_optimum"]) is float and type(summary["mcl_band"][0]) is float
    assert type(summary["average"][0][0]) is float and summary["receptive_field"] == 9
    assert theory_summary(paper_mixture("transition1"), 32)["mle_receptive_field_optimum"] is None


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _transition_frequencies(tokens, num_states):
    """Row-normalised counts of (x_t, x_{t+1}) pairs, shape (S, S)."""
    pairs = tokens[:, :-1] * num_states + tokens[:, 1:]
    counts = torch.bincount(pairs.flatten(), minlength=num_states**2).double()
    counts = counts.reshape(num_states, num_states)
    return (counts / counts.sum(dim=1, keepdim=True)).numpy()


@pytest.mark.parametrize("init", ["uniform", "stationary"])
def test_sample_statistics_match_the_chains(init):
    mix = paper_mixture("transition1", init=init)
    tokens, chain_ids = sample(mix, 20000, 32, torch.Generator().manual_seed(0))
    assert tokens.shape == (20000, 32) and chain_ids.shape == (20000,)
    assert tokens.dtype == torch.long and chain_ids.dtype == torch.long
    assert abs(chain_ids.double().mean().item() - 0.5) < 0.01
    for c in range(2):
        mine = tokens[chain_ids == c]
        np.testing.assert_allclose(_transition_frequencies(mine, 2), mix.transitions[c], atol=0.01)
        first = torch.bincount(mine[:, 0], minlength=2).double() / len(mine)
        np.testing.assert_allclose(first.numpy(), mix.initial_distribution(c), atol=0.02)


def test_sample_three_states_non_uniform_weights():
    transitions, weights, init, _ = GENERAL["three_states"]
    mix = MarkovMixture(transitions, weights, init)
    tokens, chain_ids = sample(mix, 20000, 16, torch.Generator().manual_seed(1))
    freq = torch.bincount(chain_ids, minlength=2).double() / 20000
    np.testing.assert_allclose(freq.numpy(), weights, atol=0.01)
    first = torch.bincount(tokens[:, 0], minlength=3).double() / 20000
    np.testing.assert_allclose(first.numpy(), init, atol=0.015)
    for c in range(2):
        freq_c = _transition_frequencies(tokens[chain_ids == c], 3)
        np.testing.assert_allclose(freq_c, transitions[c], atol=0.01)


def test_sample_is_deterministic_given_the_generator():
    mix = paper_mixture("transition2")
    a = sample(mix, 64, 32, torch.Generator().manual_seed(7))
    b = sample(mix, 64, 32, torch.Generator().manual_seed(7))
    c = sample(mix, 64, 32, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_sample_never_takes_a_zero_probability_transition():
    transitions, weights, _, _ = GENERAL["zero_entries"]
    mix = MarkovMixture(transitions, weights, init=[1.0, 0.0])
    tokens, chain_ids = sample(mix, 2000, 20, torch.Generator().manual_seed(3))
    assert torch.all(tokens[chain_ids == 0] == 0)  # chain 0 starts in 0 and never leaves it
    assert torch.all(tokens[:, 0] == 0)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

GOOD = [[0.8, 0.2], [0.9, 0.1]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(transitions=[]), "at least one chain"),
        (dict(transitions=[[[0.5, 0.4], [0.5, 0.5]]]), r"rows of transitions\[0\] must sum to 1"),
        (dict(transitions=[GOOD, [[1.2, -0.2], [0.5, 0.5]]]), r"transitions\[1\] must be non-neg"),
        (dict(transitions=[[[0.5, 0.5]]]), r"transitions\[0\] must be a square"),
        (dict(transitions=[[[0.5, float("nan")], [0.5, 0.5]]]), "must be finite"),
        (dict(transitions=[[[0.5, 0.5], [1.0]]]), "numeric"),
        (dict(transitions=[GOOD, np.eye(3)]), "same number of states"),
        (dict(transitions=[GOOD, GOOD], weights=[1.0]), "weights .* must have 2 entries"),
        (dict(transitions=[GOOD, GOOD], weights=[1.0, 0.0]), "weights .* must be positive"),
        (dict(transitions=[GOOD, GOOD], weights=[0.5, 0.6]), "weights .* must sum to 1"),
        (dict(transitions=[GOOD], init="stationnary"), "init must be 'uniform', 'stationary'"),
        (dict(transitions=[GOOD], init=[0.2, 0.3, 0.5]), "init must have 2 entries"),
        (dict(transitions=[GOOD], init=[1.5, -0.5]), "init must be non-negative"),
    ],
)
def test_bad_mixture_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MarkovMixture(**kwargs)


def test_bad_arguments_are_rejected():
    mix = paper_mixture("transition1")
    with pytest.raises(ValueError, match="seq_len must be an integer >= 2"):
        mle_optimum(mix, 1)
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        receptive_field_optimum(mix, 8, 0)
    with pytest.raises(ValueError, match="assignment must be one of"):
        exact_loss_of_predictors(mix, 8, mix.transitions, assignment="oracle")
    with pytest.raises(ValueError, match=r"matrices must be 2 x 2"):
        exact_loss_of_predictors(mix, 8, [np.eye(3)])
    with pytest.raises(ValueError, match=r"chains must be a non-empty list"):
        position_averaged_matrix(mix, 8, chains=[2])
    with pytest.raises(ValueError, match="name must be one of"):
        paper_mixture("transition3")


def test_validation_lines_match_the_exact_ones():
    """task.theory=validation (the 3-state toy): on 2000 sampled sequences of transition1 the measured
    MLE optimum, true-chain WTA loss and own-chain loss are within 0.01 of the exact expectations, the
    matrices are the exact ones, and the band's ends are ordered."""
    from loramcl.toy.runner import validation_references, validation_theory

    mix = paper_mixture("transition1")
    tokens, chains = sample(mix, 2000, 32, torch.Generator().manual_seed(0))
    exact = theory_summary(mix, 32)
    measured = validation_theory(mix, 32, validation_references(mix, tokens, chains))
    assert measured["lines"] == "validation" and exact["lines"] == "exact"
    assert measured["mle_optimum"] == pytest.approx(exact["mle_optimum"], abs=0.01)
    assert measured["mcl_band"] == pytest.approx(exact["mcl_band"], abs=0.01)
    assert measured["average"] == exact["average"] and measured["chains"] == exact["chains"]
    lo = measured["mle_optimum"] - math.log(2) / 31  # per sequence -log p_mix <= -log P_own + log 2
    assert lo <= measured["mcl_band"][1]
