"""Diversity of the K candidates of an item (SPEC 7): Div-1, Div-2, mBLEU-4 and the vocabulary size.

Tokenisation (the same for every metric here): lower-case, every character that is neither a word
character nor whitespace becomes a space (so "don't." -> "don t"), split on whitespace. It is plain
Python (no Java), so diversity can be computed for any task, translation included.

    div_n    per item: distinct n-grams over its K candidates / total tokens of its K candidates
             (n-grams never cross candidates; an item with no token counts 0); mean over items
    mbleu_4  per candidate: BLEU-4 against the other K - 1 candidates of its item as references;
             mean over candidates and items, x100 like the other BLEU scores (lower = more
             diverse). The BLEU is pycocoevalcap's
             BleuScorer at sentence level (the coco-caption BLEU of the captioning papers): "closest"
             reference length for the brevity penalty and its built-in smoothing of every precision,
             (matches + 1e-15) / (guesses + 1e-9), so a candidate with no matching 4-gram scores ~0
             (not exactly 0) and one shorter than 4 tokens gets a 4-gram precision of 1e-6. With K = 1
             there are no other candidates and mbleu_4 is left out of the result (a warning says so).
    vocab    distinct unigrams over all candidates of the test set (a count, as a float)
"""

from __future__ import annotations

import logging
import re

import numpy as np

log = logging.getLogger(__name__)

_NOT_WORD = re.compile(r"[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-case, punctuation to spaces, whitespace split: "A dog, barking!" -> ["a", "dog", "barking"]."""
    return _NOT_WORD.sub(" ", text.lower()).split()


def diversity_metrics(candidates: list[list[str]]) -> dict[str, float]:
    """div_1, div_2, mbleu_4 (K >= 2 only) and vocab of `candidates[i]` (the K strings of item i)."""
    if not candidates or any(len(item) != len(candidates[0]) for item in candidates) or not candidates[0]:
        raise ValueError("candidates must be N >= 1 lists of the same number K >= 1 of strings")
    tokens = [[tokenize(c) for c in item] for item in candidates]
    out = {f"div_{n}": float(np.mean([distinct_ngram_ratio(item, n) for item in tokens])) for n in (1, 2)}
    if len(candidates[0]) >= 2:
        out["mbleu_4"] = 100.0 * float(np.mean(self_bleu_4(tokens)))  # x100, like every BLEU here
    else:
        log.warning("mbleu_4 left out: it needs K >= 2 candidates per item (got K = 1)")
    out["vocab"] = float(len({word for item in tokens for cand in item for word in cand}))
    return out


def distinct_ngram_ratio(item: list[list[str]], n: int) -> float:
    """Distinct n-grams over the K tokenised candidates of one item / their total number of tokens."""
    total = sum(len(cand) for cand in item)
    ngrams = {tuple(cand[i : i + n]) for cand in item for i in range(len(cand) - n + 1)}
    return len(ngrams) / total if total else 0.0


def self_bleu_4(tokens: list[list[list[str]]]) -> np.ndarray:
    """(N, K) sentence BLEU-4 of each candidate against the other K - 1 of its item (pycocoevalcap BLEU)."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    n, k = len(tokens), len(tokens[0])
    scorer = BleuScorer(n=4)
    for item in tokens:
        texts = [" ".join(cand) for cand in item]
        for j in range(k):
            scorer += (texts[j], texts[:j] + texts[j + 1 :])
    _, per_order = scorer.compute_score(option="closest", verbose=0)
    return np.asarray(per_order[3], dtype=np.float64).reshape(n, k)  # BLEU-4 row of the 1..4 orders
