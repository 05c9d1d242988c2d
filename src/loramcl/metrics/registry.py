"""Names, labels and directions of every evaluation metric (shared by eval.py, MLflow and the collector).

Keys are flat (they are MLflow metric names). `higher` says which direction is better for quality
metrics and which direction is *more diverse* for diversity metrics, so "best" in a table is always
`max` when `higher` is True and `min` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # column header (LaTeX-safe)
    higher: bool  # True: larger is better (quality) / more diverse (diversity)
    family: str  # "quality" | "diversity" | "cost"


_ALL = [
    # captioning, oracle over the K candidates (per item best, then mean over items), x100 for BLEU..SPIDEr
    Metric("oracle_bleu_1", "BLEU-1", True, "quality"),
    Metric("oracle_bleu_2", "BLEU-2", True, "quality"),
    Metric("oracle_bleu_3", "BLEU-3", True, "quality"),
    Metric("oracle_bleu_4", "BLEU-4", True, "quality"),
    Metric("oracle_meteor", "METEOR", True, "quality"),
    Metric("oracle_rouge_l", "ROUGE-L", True, "quality"),
    Metric("oracle_cider_d", "CIDEr-D", True, "quality"),
    Metric("oracle_spice", "SPICE", True, "quality"),
    Metric("oracle_spider", "SPIDEr", True, "quality"),
    Metric("oracle_fense", "FENSE", True, "quality"),
    # teacher-forced NLL of the references, min over hypotheses (lower is better)
    Metric("oracle_nll", "NLL", False, "quality"),
    # translation (sacrebleu, 13a)
    Metric("bleu_mean", "BLEU (mean hyp.)", True, "quality"),
    Metric("oracle_bleu", "Oracle BLEU", True, "quality"),
    Metric("loo_bleu", "LOO multi-ref BLEU", True, "quality"),
    Metric("chrf_mean", "chrF (mean hyp.)", True, "quality"),
    Metric("oracle_chrf", "Oracle chrF", True, "quality"),
    # sentence embeddings (metrics.semantic): the best candidate's mean cosine similarity to the references
    Metric("oracle_semantic_similarity", "Oracle sem. sim.", True, "quality"),
    # diversity over the K candidates of an item
    Metric("div_1", "Div-1", True, "diversity"),
    Metric("div_2", "Div-2", True, "diversity"),
    Metric("mbleu_4", "mBLEU-4", False, "diversity"),  # the paper's: corpus BLEU-4 per candidate index, mean
    Metric("mbleu_4_sentence", "mBLEU-4 (sent.)", False, "diversity"),  # mean of sentence BLEU-4 instead
    Metric("pairwise_bleu", "Pairwise BLEU", False, "diversity"),
    Metric("vocab", "Vocab", True, "diversity"),
    Metric("semantic_diversity", "Sem. div.", True, "diversity"),  # mean pairwise cosine distance of embeddings
    # cost of the decoding method
    Metric("forward_passes", "Fwd passes", False, "cost"),
]

METRICS: dict[str, Metric] = {m.key: m for m in _ALL}

# Per-hypothesis metrics are `<name>_hyp<k>` (e.g. bleu_hyp0, win_rate_hyp2); they are not table columns.
# The captioning ones (cider_d_hyp0, ...) are the mean over items of hypothesis k's sentence scores.
CAPTION_PER_HYPOTHESIS_PREFIXES = tuple(
    f"{name}_hyp"
    for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider", "fense")
)
PER_HYPOTHESIS_PREFIXES = ("bleu_hyp", "chrf_hyp", "win_rate_hyp") + CAPTION_PER_HYPOTHESIS_PREFIXES


def quality_keys() -> list[str]:
    return [m.key for m in _ALL if m.family == "quality"]


def diversity_keys() -> list[str]:
    return [m.key for m in _ALL if m.family == "diversity"]
