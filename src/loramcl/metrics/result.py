"""The result type of the quality metrics and the oracle selection over the K candidates of an item.

Every quality metric is first computed per candidate, as an (N, K) matrix (N items, K hypotheses),
then the oracle keeps per item the best candidate and averages over items:

    oracle = (1 / N) * sum_i best_k S[i, k]        best = max if the registry says higher is better, else min

Ties go to the lowest hypothesis index (numpy's argmax / argmin), as in aac-metrics'
`mult_cands_metric(..., selection="max")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from loramcl.metrics.registry import METRICS


@dataclass
class MetricResult:
    """Corpus-level numbers (MLflow / table values), (N, K) sentence-level scores, and skip notes.

    `corpus` keys are registry keys (`oracle_cider_d`, `loo_bleu`, ...) or per-hypothesis keys
    (`bleu_hyp0`, `cider_d_hyp2`, ...). `sentence[name]` is the (N, K) matrix of metric `name` (no
    `oracle_` prefix) for item i and hypothesis k. `notes` has one line per metric that was skipped,
    saying what is missing and how to get it. `tokens[i][k]` is candidate k of item i as the task's
    metrics tokenised it (captioning: PTB tokens), for the diversity metrics to reuse; None when the
    task does not tokenise (translation: sacrebleu tokenises internally).
    """

    corpus: dict[str, float]
    sentence: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)
    tokens: Optional[list[list[list[str]]]] = None


def higher_is_better(key: str) -> bool:
    """Direction of registry metric `key` (e.g. "oracle_cider_d" -> True, "oracle_nll" -> False)."""
    if key not in METRICS:
        raise KeyError(f"unknown metric key {key!r}: add it to loramcl.metrics.registry first")
    return METRICS[key].higher


def best_per_item(scores: np.ndarray, higher: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per row of an (N, K) score matrix, the best value and its column (ties: lowest index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be an (N, K) matrix with K >= 1, got shape {scores.shape}")
    index = scores.argmax(axis=1) if higher else scores.argmin(axis=1)  # (N,)
    return np.take_along_axis(scores, index[:, None], axis=1)[:, 0], index


def oracle_mean(scores: np.ndarray, key: str) -> float:
    """Mean over items of the per-item best candidate; the direction comes from registry `key`."""
    best, _ = best_per_item(scores, higher_is_better(key))
    return float(best.mean())


def check_inputs(candidates: list[list[str]], references: list[list[str]]) -> tuple[int, int]:
    """(N, K) of K candidates per item with at least one reference each; ValueError otherwise."""
    if len(candidates) != len(references):
        raise ValueError(f"need one reference list per item: got {len(candidates)} candidate lists and "
                         f"{len(references)} reference lists")
    if len(candidates) == 0:
        raise ValueError("no items to evaluate (empty candidates)")
    k = len(candidates[0])
    for i, (cands, refs) in enumerate(zip(candidates, references)):
        if isinstance(cands, str) or isinstance(refs, str):
            raise ValueError(f"item {i}: candidates and references must be lists of strings, got a plain string")
        if len(cands) != k or k == 0:
            raise ValueError(f"every item needs the same number K >= 1 of candidates: item 0 has {k}, "
                             f"item {i} has {len(cands)}")
        if len(refs) == 0:
            raise ValueError(f"item {i} has no reference")
        if not all(isinstance(s, str) for s in [*cands, *refs]):
            raise ValueError(f"item {i}: candidates and references must be strings")
    return len(candidates), k
