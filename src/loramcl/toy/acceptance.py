"""Acceptance checks of a toy run's summary.json (issue thresholds), shared by tests and scripts.

Thresholds: each MCL hypothesis within 0.05 (max abs) of a different true chain under wta, 0.08
under relaxed-wta (eps pulls each hypothesis towards the other chain by up to eps * |P1 - P2|);
the MLE matrix within 0.05 of the mixture average; the MCL final WTA loss below the theoretical
MLE optimum and within 0.01 of the MCL band; the MLE final loss within 0.025 of its full-context
optimum.
"""

from __future__ import annotations

from typing import Any


def check_summary(summary: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """{check name: (passed, detail)} for one summary.json."""
    th = summary["theory"]
    mle, mcl = summary["models"]["mle"], summary["models"]["mcl"]
    tol = 0.08 if mcl["mode"] == "relaxed-wta" else 0.05
    chains = [a["chain"] for a in mcl["assignment"]]
    errs = [a["max_abs_error"] for a in mcl["assignment"]]
    lo, hi = th["mcl_band"]
    loss = mcl["eval_wta_loss"]
    return {
        "mcl_chains": (len(set(chains)) == len(chains) and max(errs) <= tol,
                       f"errors {[round(e, 4) for e in errs]} (tol {tol}), chains {chains}"),
        "mle_average": (mle["average_max_abs_error"] <= 0.05, f"error {mle['average_max_abs_error']:.4f} (tol 0.05)"),
        "mcl_below_mle_optimum": (loss < th["mle_optimum"], f"{loss:.4f} < {th['mle_optimum']:.4f}"),
        "mcl_near_band": (lo - 0.01 <= loss <= hi + 0.01, f"{loss:.4f} vs band [{lo:.4f}, {hi:.4f}] +- 0.01"),
        "mle_near_optimum": (abs(mle["eval_wta_loss"] - th["mle_optimum"]) <= 0.025,
                             f"{mle['eval_wta_loss']:.4f} vs {th['mle_optimum']:.4f} +- 0.025 "
                             f"(receptive-field optimum {th['mle_receptive_field_optimum']:.4f})"),
    }
