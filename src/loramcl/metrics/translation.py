"""Translation metrics of K candidates per item with sacrebleu 2.6.0 (13a tokenisation), SPEC 7.

All BLEU / chrF values are sacrebleu's, on its 0-100 scale. Every item may have its own number of
references (sacrebleu's reference streams are padded with None, which it ignores).

    bleu_hyp<k>, chrf_hyp<k>   corpus BLEU / chrF of hypothesis position k over all items, all references
    bleu_mean, chrf_mean       mean over k of the above
    oracle_bleu, oracle_chrf   mean over items of the best sentence score among the K (sentence BLEU with
                               effective order, as `sacrebleu.sentence_bleu`; the registry direction picks max)
    pairwise_bleu              one corpus BLEU over all ordered pairs (i != j) of an item's candidates, c_i the
                               hypothesis and c_j its single reference, pooled over items (lower = more diverse;
                               needs K >= 2)
    loo_bleu                   leave-one-out multi-reference BLEU of Shen et al. (2019), as in their released
                               scorer (fairseq examples/translation_moe/score.py): with m references per item,
                               for each held-out index r = 1..m, one corpus BLEU of all N*K candidates, each
                               scored against the m - 1 other references of its item; mean over r. Holding one
                               reference out makes it comparable with the same score of each human reference
                               against the other m - 1. Needs m >= 2; with ragged references m is the smallest
                               count and each item uses its first m references (as their scorer's zip does).

`sentence` has the (N, K) matrices "bleu" (sentence BLEU) and "chrf" (sentence chrF).

The paper's translation table (LoRA-MCL, `ALMA/compute_metrics.py`; `ALMA/extract_results.py` picks the
columns) reports three of these, computed as above: oracle_bleu (`compute_oracle_sentence_bleu`),
pairwise_bleu (`pairwise_bleu_fairseq_exact`, 13a) and loo_bleu (`leave_one_out_multi_ref_bleu`, 13a).
Two differences outside these definitions: that script first Moses-detokenises (German) candidates
and references, because the WMT'14 extra references of Ott et al. are Moses-tokenised, whereas
`translation_metrics` scores the strings as given (Moses-tokenised references must be detokenised before
they reach it to match); and its per-hypothesis corpus BLEU (not in the table) uses only each item's
first reference.
"""

from __future__ import annotations

import logging

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

from loramcl.metrics.result import MetricResult, check_inputs, oracle_mean

log = logging.getLogger(__name__)

TOKENIZE = "13a"  # sacrebleu's default for every language but zh / ja / ko (SPEC 7)


def translation_metrics(candidates: list[list[str]], references: list[list[str]]) -> MetricResult:
    """BLEU / chrF per hypothesis, oracles, pairwise BLEU and leave-one-out multi-reference BLEU."""
    n, k = check_inputs(candidates, references)
    notes: list[str] = []
    streams = reference_streams(references)
    bleu, chrf = BLEU(tokenize=TOKENIZE), CHRF()
    corpus: dict[str, float] = {}
    for j in range(k):
        hyps = [item[j] for item in candidates]
        corpus[f"bleu_hyp{j}"] = bleu.corpus_score(hyps, streams).score
        corpus[f"chrf_hyp{j}"] = chrf.corpus_score(hyps, streams).score
    corpus["bleu_mean"] = float(np.mean([corpus[f"bleu_hyp{j}"] for j in range(k)]))
    corpus["chrf_mean"] = float(np.mean([corpus[f"chrf_hyp{j}"] for j in range(k)]))
    sentence = sentence_scores(candidates, references)
    corpus["oracle_bleu"] = oracle_mean(sentence["bleu"], "oracle_bleu")
    corpus["oracle_chrf"] = oracle_mean(sentence["chrf"], "oracle_chrf")
    if k >= 2:
        corpus["pairwise_bleu"] = pairwise_bleu(candidates)
    else:
        _note(notes, "pairwise_bleu skipped: it needs K >= 2 candidates per item (got K = 1)")
    loo = loo_bleu(candidates, references, notes)
    if loo is not None:
        corpus["loo_bleu"] = loo
    return MetricResult(corpus, sentence, notes)


def reference_streams(references: list[list[str]]) -> list[list]:
    """sacrebleu's layout: stream r holds reference r of every item (None where an item has fewer)."""
    m = max(len(refs) for refs in references)
    return [[refs[r] if r < len(refs) else None for refs in references] for r in range(m)]


def sentence_scores(candidates: list[list[str]], references: list[list[str]]) -> dict[str, np.ndarray]:
    """(N, K) sentence BLEU (effective order, as sacrebleu.sentence_bleu) and sentence chrF."""
    bleu, chrf = BLEU(tokenize=TOKENIZE, effective_order=True), CHRF()
    scores = {
        "bleu": [[bleu.sentence_score(c, refs).score for c in cands] for cands, refs in zip(candidates, references)],
        "chrf": [[chrf.sentence_score(c, refs).score for c in cands] for cands, refs in zip(candidates, references)],
    }
    return {name: np.asarray(rows, dtype=np.float64) for name, rows in scores.items()}


def pairwise_bleu(candidates: list[list[str]]) -> float:
    """Corpus BLEU over all ordered pairs (c_i hypothesis, c_j reference), i != j, of every item."""
    hyps, refs = [], []
    for item in candidates:
        for i, hyp in enumerate(item):
            for j, ref in enumerate(item):
                if i != j:
                    hyps.append(hyp)
                    refs.append(ref)
    return BLEU(tokenize=TOKENIZE).corpus_score(hyps, [refs]).score


def loo_bleu(candidates: list[list[str]], references: list[list[str]], notes: list[str]) -> float | None:
    """Shen et al. (2019) leave-one-out multi-reference BLEU (module docstring); None with a note if m < 2."""
    m = min(len(refs) for refs in references)
    if m < 2:
        _note(notes, f"loo_bleu skipped: leave-one-out BLEU needs >= 2 references per item (smallest count: {m})")
        return None
    if any(len(refs) != m for refs in references):
        _note(notes, f"loo_bleu uses the first {m} references of every item (reference counts differ between items)")
    k = len(candidates[0])
    hyps = [c for item in candidates for c in item]  # item-major, K per item
    repeated = [[refs[r] for refs in references for _ in range(k)] for r in range(m)]  # (m streams, N*K)
    bleu = BLEU(tokenize=TOKENIZE)
    scores = [bleu.corpus_score(hyps, repeated[:r] + repeated[r + 1 :]).score for r in range(m)]
    return float(np.mean(scores))


def _note(notes: list[str], line: str) -> None:
    log.warning(line)
    notes.append(line)
