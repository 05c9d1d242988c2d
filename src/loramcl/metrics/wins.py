"""Win rates at evaluation: how often each hypothesis gives the oracle-best candidate of an item.

    win_rate_hyp<k> = (1 / N) * sum_i [k is among the best of item i] / #(best of item i)

Ties share the item: when several hypotheses give equally good candidates (often identical
strings), each gets 1 / (number tied). Crediting the lowest index instead would hand hypothesis 0
every item on which the hypotheses agree. A hypothesis that never wins shows 0 (a collapsed
hypothesis); the K rates sum to 1.
"""

from __future__ import annotations

import numpy as np


def win_rates(sentence_scores: np.ndarray, higher_is_better: bool = True) -> dict[str, float]:
    """`win_rate_hyp<k>` from an (N, K) matrix of sentence scores (e.g. `MetricResult.sentence["bleu"]`)."""
    scores = np.asarray(sentence_scores, dtype=np.float64)
    best = scores.max(axis=1, keepdims=True) if higher_is_better else scores.min(axis=1, keepdims=True)
    tied = np.isclose(scores, best, rtol=0.0, atol=1e-12)  # (N, K)
    credit = tied / tied.sum(axis=1, keepdims=True)
    return {f"win_rate_hyp{k}": float(c) for k, c in enumerate(credit.mean(axis=0))}
