"""Labels of the quality-diversity plots never overlap (checked from the text boxes matplotlib's
renderer reports), and every method is named: beside its point, or numbered in the key."""

from __future__ import annotations

import numpy as np
import pytest

from loramcl.evaluation.collect import quality_diversity_figure
from loramcl.evaluation.labels import overlaps

METHODS = ["Beam search (B=5)", "DBS (lambda=0.5)", "Sampling (nucleus)", "Sampling (top-k)", "Sampling (typical)",
           "TTA, beam 1", "Router mixture, beam 5", "Hypotheses, beam 1", "Hypothesis DBS (B=2, lambda=0.5)"]


def rows(spread: float, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i, method in enumerate(METHODS):
        out.append({"experiment": "eval_demo", "scheme": ["LoRA-MLE", "LoRA-MoE", "LoRA-MCL"][i * 3 // len(METHODS)],
                    "method": method, "oracle_bleu": 30 + spread * rng.standard_normal(),
                    "pairwise_bleu": 50 + spread * rng.standard_normal(), "forward_passes": float(1 + i % 4)})
    return out


@pytest.mark.parametrize("spread", [0.01, 0.5, 5.0, 20.0])
def test_no_label_overlaps_another_and_every_method_is_named(spread):
    fig, points = quality_diversity_figure(rows(spread), "oracle_bleu", "pairwise_bleu")
    assert overlaps(fig) == []
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    key = " ".join(t.get_text() for t in fig.texts)
    for method in METHODS:
        assert method in labels or method in key, (method, labels, key)
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    for t in ax.texts + fig.texts:  # inside the figure
        box = t.get_window_extent(renderer)
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1


def test_the_former_fixed_offsets_did_overlap():
    """The same points with every label at one fixed offset (the former placement) do overlap: the
    check above can fail."""
    from matplotlib.figure import Figure

    from loramcl.evaluation.labels import _renderer

    data = rows(0.01)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    ax.scatter([r["pairwise_bleu"] for r in data], [r["oracle_bleu"] for r in data])
    for r in data:
        ax.annotate(r["method"], (r["pairwise_bleu"], r["oracle_bleu"]), xytext=(5, 4), textcoords="offset points",
                    fontsize=7)
    _renderer(fig)
    assert overlaps(fig)
