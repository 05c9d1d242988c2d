"""Metrics of a text task of one's own (`data=text`): the translation metrics plus ROUGE-L.

Everything `translation_metrics` computes with sacrebleu (corpus and oracle BLEU and chrF, pairwise
BLEU, leave-one-out BLEU when items have several references), and ROUGE-L (LCS F-measure with
beta = 1.2, best over an item's references, as pycocoevalcap's Rouge) per candidate and its oracle,
x100 like the captioning ROUGE-L. ROUGE-L reads the tokens the diversity metrics use for text
without a tokenizer of its own (`diversity.tokenize`: lower-cased, punctuation removed, as the
captioning metrics' PTB tokens), so both count the same words.

`sentence` holds "bleu", "chrf" and "rouge_l", each (N, K).
"""

from __future__ import annotations

import numpy as np

from loramcl.metrics.diversity import tokenize
from loramcl.metrics.result import MetricResult, check_inputs, oracle_mean
from loramcl.metrics.translation import translation_metrics


def rouge_l_scores(candidates: list[list[str]], references: list[list[str]]) -> np.ndarray:
    """(N, K) sentence ROUGE-L of every candidate against its item's references."""
    from aac_metrics.functional.rouge_l import rouge_l

    tok_refs = [[" ".join(tokenize(r)) for r in refs] for refs in references]
    k = len(candidates[0])
    columns = []
    for j in range(k):
        cands_j = [" ".join(tokenize(item[j])) for item in candidates]
        columns.append(rouge_l(cands_j, tok_refs)[1]["rouge_l"].numpy())
    return np.stack(columns, axis=1).astype(np.float64)


def text_metrics(candidates: list[list[str]], references: list[list[str]]) -> MetricResult:
    """translation_metrics + (oracle) ROUGE-L and the tokens for the diversity metrics."""
    check_inputs(candidates, references)
    result = translation_metrics(candidates, references)
    rouge = rouge_l_scores(candidates, references)
    result.sentence["rouge_l"] = rouge
    result.corpus["oracle_rouge_l"] = 100.0 * oracle_mean(rouge, "oracle_rouge_l")
    for j in range(rouge.shape[1]):
        result.corpus[f"rouge_l_hyp{j}"] = 100.0 * float(rouge[:, j].mean())
    result.tokens = [[tokenize(c) for c in item] for item in candidates]
    return result
