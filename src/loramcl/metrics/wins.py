"""Win rates at evaluation: how often each hypothesis gives the oracle-best candidate of an item.

    win_rate_hyp<k> = (1 / N) * #{i : argbest_j S[i, j] = k}        ties: lowest index

A hypothesis that never wins shows 0 (a collapsed hypothesis); the K rates sum to 1.
"""

from __future__ import annotations

import numpy as np

from loramcl.metrics.result import best_per_item


def win_rates(sentence_scores: np.ndarray, higher_is_better: bool = True) -> dict[str, float]:
    """`win_rate_hyp<k>` from an (N, K) matrix of sentence scores (e.g. `MetricResult.sentence["bleu"]`)."""
    scores = np.asarray(sentence_scores, dtype=np.float64)
    _, winners = best_per_item(scores, higher_is_better)  # (N,)
    counts = np.bincount(winners, minlength=scores.shape[1])
    return {f"win_rate_hyp{k}": float(c) / len(winners) for k, c in enumerate(counts)}
