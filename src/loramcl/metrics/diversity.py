"""Diversity of the K candidates of an item (SPEC 7): Div-1, Div-2, mBLEU-4 and the vocabulary size.

The definitions are those of the paper's evaluation code (LoRA-MCL, `Qwen2-Audio/metrics/utils_diversity.py`,
`eval_div_stats`; mBLEU-4 as in Shetty et al. 2017). Every metric works on tokens:

    captioning   the PTB tokens the captioning metrics already computed (CoreNLP 3.4.1 PTBTokenizer,
                 lower-cased, punctuation tokens removed: what the paper's `eval_div_stats` runs), passed
                 in as `tokens` so no second JVM starts
    otherwise    `tokenize` below, plain Python (no Java): lower-case, every character that is neither a
                 word character nor whitespace becomes a space (so "don't." -> "don t"), whitespace split.
                 The paper's translation code reports no Div-n / mBLEU-4 / vocabulary, so there is no
                 tokenisation of its to follow there.

    div_n             per item: distinct n-grams over its K candidates / total tokens of its K candidates
                      (n-grams never cross candidates; an item with no token counts 0); mean over items.
                      The paper divides by (total + 1e-6) as a zero guard; we return 0 for an empty item
                      instead, which differs from it by less than 1e-6 / total (relative) elsewhere.
    mbleu_4           for each candidate index i = 0..K-1, ONE corpus-level BLEU-4 over all items, the
                      hypothesis of item n being its candidate i and its references the other K - 1
                      candidates of item n; then the mean over i; x100 like the other BLEU scores (lower =
                      more diverse). The BLEU is pycocoevalcap's `BleuScorer` with "closest" reference
                      length, as its `Bleu(4).compute_score` (the coco-caption BLEU), i.e. n-gram counts and
                      lengths are pooled over the items before the precisions and the brevity penalty.
    mbleu_4_sentence  the same K scorer runs, but the mean over items and i of each candidate's
                      sentence-level BLEU-4 (pycocoevalcap's per-sentence value, with its smoothing
                      (matches + 1e-15) / (guesses + 1e-9): no matching 4-gram scores ~0, not exactly 0);
                      x100. Not the paper's number: kept to compare with the earlier definition.
    vocab             distinct unigrams over all candidates of the test set (a count, as a float)

With K = 1 there are no other candidates: mbleu_4 and mbleu_4_sentence are left out (a warning says so).
"""

from __future__ import annotations

import logging
import re
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

_NOT_WORD = re.compile(r"[^\w\s]")

Tokens = list[list[list[str]]]  # tokens[i][k]: the tokens of candidate k of item i


def tokenize(text: str) -> list[str]:
    """Lower-case, punctuation to spaces, whitespace split: "A dog, barking!" -> ["a", "dog", "barking"]."""
    return _NOT_WORD.sub(" ", text.lower()).split()


def diversity_metrics(candidates: list[list[str]], tokens: Optional[Tokens] = None) -> dict[str, float]:
    """div_1, div_2, mbleu_4 and mbleu_4_sentence (K >= 2 only) and vocab of `candidates[i]` (K strings).

    `tokens[i][k]`, when given, is candidate k of item i already tokenised (captioning passes its PTB
    tokens); otherwise every candidate goes through `tokenize`.
    """
    if not candidates or any(len(item) != len(candidates[0]) for item in candidates) or not candidates[0]:
        raise ValueError("candidates must be N >= 1 lists of the same number K >= 1 of strings")
    if tokens is None:
        tokens = [[tokenize(c) for c in item] for item in candidates]
    elif len(tokens) != len(candidates) or any(len(t) != len(c) for t, c in zip(tokens, candidates)):
        raise ValueError("tokens must hold the tokens of every candidate: N lists of K token lists")
    out = {f"div_{n}": float(np.mean([distinct_ngram_ratio(item, n) for item in tokens])) for n in (1, 2)}
    if len(candidates[0]) >= 2:
        per_index, per_sentence = self_bleu_4(tokens)
        out["mbleu_4"] = 100.0 * float(per_index.mean())  # x100, like every BLEU here
        out["mbleu_4_sentence"] = 100.0 * float(per_sentence.mean())
    else:
        log.warning("mbleu_4 left out: it needs K >= 2 candidates per item (got K = 1)")
    out["vocab"] = float(len({word for item in tokens for cand in item for word in cand}))
    return out


def distinct_ngram_ratio(item: list[list[str]], n: int) -> float:
    """Distinct n-grams over the K tokenised candidates of one item / their total number of tokens."""
    total = sum(len(cand) for cand in item)
    ngrams = {tuple(cand[i : i + n]) for cand in item for i in range(len(cand) - n + 1)}
    return len(ngrams) / total if total else 0.0


def self_bleu_4(tokens: Tokens) -> tuple[np.ndarray, np.ndarray]:
    """BLEU-4 of each candidate against the other K - 1 of its item, one pycocoevalcap scorer per index i.

    Returns (K,) the corpus BLEU-4 of candidate index i over all items (the mbleu_4 terms) and (N, K)
    the sentence BLEU-4 of candidate i of item n from the same scorer (the mbleu_4_sentence terms).
    """
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    texts = [[" ".join(cand) for cand in item] for item in tokens]
    corpus, sentence = [], []
    for i in range(len(texts[0])):
        scorer = BleuScorer(n=4)
        for item in texts:
            scorer += (item[i], item[:i] + item[i + 1 :])
        total, per_sentence = scorer.compute_score(option="closest", verbose=0)  # as Bleu(4).compute_score
        corpus.append(total[3])  # BLEU-4 of the orders 1..4
        sentence.append(per_sentence[3])
    return np.asarray(corpus, dtype=np.float64), np.asarray(sentence, dtype=np.float64).T
