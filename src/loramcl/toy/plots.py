"""Figures of the toy experiment: loss curves with the exact theoretical lines, matrix grid."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_loss(histories: dict[str, list], results: dict[str, Any], theory: dict[str, Any], title: str):
    """Validation WTA loss against steps, the MLE optimum (full context and receptive field), the MCL band."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {"mle": "tab:blue", "mcl": "tab:red"}
    for name, hist in histories.items():
        if hist:
            k = results[name]["num_hypotheses"]
            label = "LoRA-MLE (K=1)" if name == "mle" else f"LoRA-MCL (K={k}, {results[name]['mode']})"
            ax.plot([h["step"] for h in hist], [h["val/wta_loss"] for h in hist], color=colors.get(name), label=label)
    measured = " on the validation set" if theory.get("lines") == "validation" else ""
    ax.axhline(theory["mle_optimum"], color="tab:blue", ls="--", lw=1, label=f"MLE optimum (full context{measured})")
    if theory.get("mle_receptive_field_optimum") is not None:
        ax.axhline(theory["mle_receptive_field_optimum"], color="tab:blue", ls=":", lw=1,
                   label=f"MLE optimum ({theory['receptive_field']}-token receptive field)")
    lo, hi = theory["mcl_band"]
    ax.axhspan(lo, hi, color="tab:red", alpha=0.2)
    ax.axhline(lo, color="tab:red", ls="--", lw=0.8, label=f"MCL band low: MLE optimum - ln K/(T-1) ({lo:.4f})")
    ax.axhline(hi, color="tab:red", ls=":", lw=1, label=f"MCL band high: own-chain loss ({hi:.4f})")
    finals = [h["val/wta_loss"] for hist in histories.values() for h in hist[len(hist) // 5:]]
    if finals:
        top = max(max(finals), theory["mle_optimum"])
        ax.set_ylim(lo - 0.3 * (top - lo) - 0.005, top + 0.3 * (top - lo) + 0.005)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation WTA loss (nats / token)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def _heatmap(ax, matrix: np.ndarray, title: str) -> None:
    ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=9)
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(matrix.shape[0]))
    ax.set_title(title, fontsize=9)


def plot_matrices(results: dict[str, Any], targets: dict[str, Any], title: str):
    """Top row: predicted matrices (MLE, each MCL hypothesis); bottom row: their targets."""
    columns = []
    for name, res in results.items():
        for k, m in enumerate(res["matrices"]):
            if name == "mle" or res["num_hypotheses"] == 1:
                columns.append((f"{name.upper()}", m, "average of the chains", targets["average"]))
            else:
                c = res["assignment"][k]["chain"]
                columns.append((f"MCL hypothesis {k}", m, f"chain P{c + 1}", targets["chains"][c]))
    fig, axes = plt.subplots(2, len(columns), figsize=(2.6 * len(columns), 5.2), squeeze=False)
    for j, (pname, pred, tname, target) in enumerate(columns):
        _heatmap(axes[0, j], np.asarray(pred, dtype=float), f"predicted: {pname}")
        _heatmap(axes[1, j], np.asarray(target, dtype=float), f"target: {tname}")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
