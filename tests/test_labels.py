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


@pytest.mark.parametrize("scale", ["paper", "demo"])
def test_a_rehearsals_loss_curves_are_not_squeezed_under_the_papers(scale, tmp_path):
    """audio_loss_vs_k: ours at tiny-model magnitude (~5.5) against the paper's (~2.6). A rehearsal
    draws the paper's on a twin axis, so each curve spans its own axis; at scale=paper both share one."""
    from helpers import ROOT
    from loramcl.reproduce.main import compose_all
    from loramcl.reproduce.results import Line, lines_figure

    _, table = compose_all(ROOT, ["table=audio_loss_vs_k", f"scale={scale}", f"paths.log_dir={tmp_path}",
                                  f"results_dir={tmp_path / 'results'}"])
    lines = [Line(row, "Test loss", "test_loss", "done", {"oracle_nll": 5.5 + 0.05 * i}) for i, row in enumerate(table.rows)]
    fig, drawn = lines_figure(table, lines)
    assert drawn == len(lines)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2
    for ax in panels:
        ours = [y for line in ax.get_lines() for y in line.get_ydata()]
        low, high = ax.get_ylim()
        if scale == "demo":  # our curve fills its axis; the paper's dashed curve is on the twin
            assert (max(ours) - min(ours)) / (high - low) > 0.5 and min(ours) > 5
            (twin,) = [a for a in fig.axes if a is not ax and a.bbox.bounds == ax.bbox.bounds]
            theirs = [y for line in twin.get_lines() for y in line.get_ydata()]
            assert theirs and max(theirs) < 4 and all(line.get_linestyle() == "--" for line in twin.get_lines())
        else:  # one axis: the paper's values (~2.6) and ours (~5.5) share it
            assert min(ours) < 4 < 5 < max(ours)
