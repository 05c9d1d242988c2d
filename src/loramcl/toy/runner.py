"""The toy experiment runner (`task=toy_markov`, the default job; paper Figures 1 and 4).

One run trains an MLE model (K = 1) and an MCL model (K = mcl.num_hypotheses) on the same data
stream, then reads each hypothesis' next-token matrix from the model and writes to the run folder:
`summary.json`, `loss.png` (validation WTA loss against steps with the exact theoretical lines) and
`matrices.png` (predicted against target matrices); the same go to MLflow and TensorBoard.

How a matrix is read: over the held-out validation sequences, each sequence is credited to the
hypothesis with the lowest NLL on it (its WTA winner; all sequences for K = 1); the hypothesis'
predicted next-state distribution is averaged over every scored position of the sequences it wins,
grouped by the current state. For the MLE model the matching target is therefore the
position-averaged next-state distribution of the mixture as generated (`targets.average`); with a
uniform first token it differs slightly from the stationary-weighted average.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from loramcl.backbones import receptive_field
from loramcl.model import MCLModel
from loramcl.preflight import preflight
from loramcl.schema import TrainSettings, train_settings
from loramcl.toy.markov import (MarkovMixture, own_chain_loss, position_averaged_matrix, stationary_average_matrix,
                                 theory_summary, wta_entropy_bound)
from loramcl.training import FitResult, apply_extras, train_mle_and_mcl

log = logging.getLogger(__name__)


@torch.no_grad()
def read_matrices(model: MCLModel, tokens: torch.Tensor, num_states: int, batch_size: int = 1000) -> dict[str, Any]:
    """Per-hypothesis next-state matrices (K, S, S), per-sequence losses (K, N) and winners (N,)."""
    was_training = model.training
    model.eval()
    probs, losses = [], []
    for x in tokens.split(batch_size):
        out = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x)
        probs.append(torch.softmax(out.logits[..., :num_states].float(), dim=-1))  # (K, b, T, S)
        losses.append(out.hypothesis_losses.float())  # (K, b)
    model.train(was_training)
    probs, losses = torch.cat(probs, dim=1), torch.cat(losses, dim=1)
    winners = losses.argmin(dim=0)
    current = tokens[:, :-1]  # states whose next state is predicted
    K = probs.shape[0]
    matrices = torch.full((K, num_states, num_states), float("nan"))
    for k in range(K):
        won = winners == k
        if not won.any():
            continue
        p, cur = probs[k, won, :-1], current[won]  # (n, T-1, S), (n, T-1)
        for i in range(num_states):
            if (cur == i).any():
                matrices[k, i] = p[cur == i].mean(dim=0)
    return {"matrices": matrices, "losses": losses, "winners": winners}


def model_summary(fit: FitResult, tokens: torch.Tensor, num_states: int, mode: str) -> dict[str, Any]:
    """What summary.json says of one trained model: its matrices, losses and win rates."""
    k = fit.module.num_hypotheses
    read = read_matrices(fit.module.model, tokens, num_states)
    counts = torch.bincount(read["winners"], minlength=k)
    return {
        "num_hypotheses": k,
        "mode": mode if k > 1 else "mle",
        "matrices": read["matrices"].tolist(),
        "eval_wta_loss": float(read["losses"].min(dim=0).values.mean()),
        "hypothesis_losses": read["losses"].mean(dim=1).tolist(),
        "win_rates": (counts.float() / counts.sum()).tolist(),
    }


def validation_references(mixture: MarkovMixture, tokens: torch.Tensor,
                          chain_ids: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Theoretical losses on the very validation sequences (nats per scored token).

    mle_optimum: NLL of the full-context Bayes predictor; mcl_true_chains_wta: per sequence the
    minimum NLL over the true chains; own_chain_loss (with `chain_ids`): under its generating chain. On 2000 sequences these differ from the exact expectations
    by about 0.002, so they are the fairer lines to compare a model's validation loss with.
    """
    x = tokens.numpy()
    trans = np.stack([np.asarray(p, dtype=np.float64) for p in mixture.transitions])  # (C, S, S)
    step_ll = np.log(trans[:, x[:, :-1], x[:, 1:]])  # (C, N, T-1)
    cum = np.cumsum(step_ll, axis=2) - step_ll  # log-lik of transitions before each step
    log_w = np.log(np.asarray(mixture.weights))[:, None, None]
    init = mixture.initial_stack()[:, x[:, 0]][:, :, None]  # (C, N, 1) first-token likelihood
    log_post = log_w + np.log(init) + cum  # unnormalised posterior over chains before each step
    log_pred = np.logaddexp.reduce(log_post + step_ll, axis=0) - np.logaddexp.reduce(log_post, axis=0)
    seq_nll = -step_ll.sum(axis=2) / step_ll.shape[2]  # (C, N)
    out = {"mle_optimum": float(-log_pred.mean()), "mcl_true_chains_wta": float(seq_nll.min(axis=0).mean())}
    if chain_ids is not None:  # each sequence scored by the chain that generated it
        out["own_chain_loss"] = float(seq_nll[np.asarray(chain_ids), np.arange(x.shape[0])].mean())
    return out


def validation_theory(mixture: MarkovMixture, seq_len: int, on_validation: dict[str, float]) -> dict[str, Any]:
    """`task.theory=validation`: the lines of `theory_summary` without its exact forward recursion over
    the transition counts, whose size grows like T^(S^2 - S) (about 10^9 keys for 3 states at T = 32):
    the MLE optimum, the true chains' WTA loss and the own-chain loss are measured on the validation
    sequences (within ~0.005 of the expectations on 2000 of them; all three on the same sequences, so
    that the band's ends stay ordered), the matrices are exact."""
    return {
        "lines": "validation",
        "mle_optimum": on_validation["mle_optimum"],
        "mle_receptive_field_optimum": None,
        "mcl_band": [on_validation["mcl_true_chains_wta"],
                     on_validation.get("own_chain_loss", own_chain_loss(mixture, seq_len))],
        "average": position_averaged_matrix(mixture, seq_len).tolist(),
        "stationary_average": stationary_average_matrix(mixture).tolist(),
        "chains": [p.tolist() for p in mixture.transitions],
    }


def match_chains(matrices: np.ndarray, chains: np.ndarray) -> list[dict[str, Any]]:
    """Assign hypotheses to distinct chains (best permutation when K <= C, else nearest chain)."""
    K, C = len(matrices), len(chains)
    err = np.array([[np.nanmax(np.abs(m - c)) if not np.isnan(m).all() else np.inf for c in chains] for m in matrices])
    if K <= C:
        best = min(itertools.permutations(range(C), K), key=lambda perm: sum(err[k, c] for k, c in enumerate(perm)))
    else:
        best = tuple(int(err[k].argmin()) for k in range(K))
    return [{"chain": int(c), "max_abs_error": float(err[k, c])} for k, c in enumerate(best)]


def run_toy(cfg: Any) -> dict[str, float]:
    """Train MLE and MCL on the toy mixture and write summary.json and the figures. `cfg`: the
    validated settings (train.py gives them) or a composed config."""
    s = train_settings(cfg)
    datamodule = preflight(s)  # every check, once for both models
    apply_extras(s)
    out = s.output_dir or Path.cwd()
    mixture = toy_mixture(s)
    seq_len, K, mode = s.data.seq_len, s.mcl.num_hypotheses, s.mcl.mode
    results: dict[str, Any] = {}
    histories: dict[str, list] = {}
    read_from: dict[str, Any] = {}  # the validation tokens and receptive field (same for both models)

    def after_fit(name: str, fit: FitResult) -> None:
        read_from["window"] = receptive_field(fit.module.model.config)
        read_from["tokens"] = fit.datamodule.val_set.tokens
        read_from["chain_ids"] = fit.datamodule.val_set.chain_ids
        results[name] = model_summary(fit, read_from["tokens"], mixture.num_states, mode)
        histories[name] = fit.module.val_history
        if fit.mlflow_run is not None:
            fit.mlflow_run.log_metrics({"eval_wta_loss": results[name]["eval_wta_loss"]})

    parent = train_mle_and_mcl(s, after_fit, datamodule)
    window, val_tokens = read_from["window"], read_from["tokens"]
    on_validation = validation_references(mixture, val_tokens, read_from["chain_ids"])
    if s.task.theory == "validation":
        theory = validation_theory(mixture, seq_len, on_validation)
        lo = theory["mle_optimum"] - float(np.log(K)) / (seq_len - 1)
    else:
        theory = theory_summary(mixture, seq_len, window)
        lo = wta_entropy_bound(mixture, seq_len, K)
    theory_out = {
        "lines": theory["lines"],
        "mle_optimum": theory["mle_optimum"],
        "mle_receptive_field_optimum": theory["mle_receptive_field_optimum"],
        "receptive_field": window,
        # Reference definition: lo = MLE optimum - ln K / (T - 1), a lower bound on the WTA loss of
        # any K predictors; hi = each sequence scored by its own chain. True chains lie inside.
        "mcl_band": [lo, theory["mcl_band"][1]],
        "mcl_true_chains_wta": theory["mcl_band"][0],
        "validation_set": on_validation,
        "initial_distribution": mixture_init(s),
    }
    chains = np.asarray(theory["chains"])
    average = np.asarray(theory["average"])
    for name, res in results.items():
        mats = np.asarray(res["matrices"])
        if name == "mle" or res["num_hypotheses"] == 1:
            res["average_max_abs_error"] = float(np.nanmax(np.abs(mats[0] - average)))
        else:
            res["assignment"] = match_chains(mats, chains)
    summary = {
        "experiment": s.top.task_name,
        "seed": s.top.seed,
        "models": results,
        "targets": {"chains": theory["chains"], "average": theory["average"],
                    "stationary_average": theory["stationary_average"]},
        "theory": theory_out,
        "matrix_reading": "next-state distribution averaged over all scored positions of the held-out "
                          "sequences a hypothesis wins (lowest sequence NLL), grouped by current state",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    from loramcl.toy.plots import plot_loss, plot_matrices

    figures = {"loss.png": plot_loss(histories, results, theory_out, s.top.task_name),
               "matrices.png": plot_matrices(results, summary["targets"], s.top.task_name)}
    for fname, fig in figures.items():
        fig.savefig(out / fname, dpi=120, bbox_inches="tight")
    _log_summary(s, out, parent, summary, figures)
    log.info(_report(summary))
    return flat_metrics(summary)


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    metrics = {"theory/mle_optimum": summary["theory"]["mle_optimum"],
               "theory/mcl_band_lo": summary["theory"]["mcl_band"][0],
               "theory/mcl_band_hi": summary["theory"]["mcl_band"][1]}
    if summary["theory"]["mle_receptive_field_optimum"] is not None:
        metrics["theory/mle_receptive_field_optimum"] = summary["theory"]["mle_receptive_field_optimum"]
    for name, res in summary["models"].items():
        metrics[f"{name}/eval_wta_loss"] = res["eval_wta_loss"]
        if "average_max_abs_error" in res:
            metrics[f"{name}/average_max_abs_error"] = res["average_max_abs_error"]
        for k, a in enumerate(res.get("assignment", [])):
            metrics[f"{name}/hyp{k}_max_abs_error"] = a["max_abs_error"]
        for k, rate in enumerate(res["win_rates"]):
            metrics[f"{name}/win_rate_hyp{k}"] = rate
    metrics["val/wta_loss"] = summary["models"]["mcl"]["eval_wta_loss"]
    return {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(v)}


def toy_mixture(s: TrainSettings) -> MarkovMixture:
    """The Markov mixture of the toy's `data` group."""
    return MarkovMixture(transitions=s.data.transitions, weights=s.data.weights, init=mixture_init(s))


def mixture_init(s: TrainSettings) -> Any:
    return "uniform" if s.data.init is None else s.data.init


def _log_summary(s: TrainSettings, out: Path, parent: Optional[Any], summary: dict, figures: dict) -> None:
    metrics = flat_metrics(summary)
    if parent is not None:
        from loramcl.utils.mlflow_store import flatten

        parent.log_params(flatten(s.raw))
        parent.log_metrics(metrics)
        for fname in ("summary.json", "loss.png", "matrices.png", "config_tree.log"):
            if (out / fname).exists():
                parent.log_artifact(out / fname)
        parent.finish()
    tensorboard = s.loggers.get("tensorboard")
    if tensorboard is not None and not s.trainer.fast_dev_run:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(Path(tensorboard.save_dir) / "summary")) as writer:
            for key, value in metrics.items():
                writer.add_scalar(key, value, 0)
            for fname, fig in figures.items():
                writer.add_figure(fname.removesuffix(".png"), fig, 0)


def _report(summary: dict) -> str:
    th = summary["theory"]
    lines = [f"toy {summary['experiment']} seed {summary['seed']}: MLE optimum {th['mle_optimum']:.4f} "
             f"(receptive field {th['receptive_field']}: {th['mle_receptive_field_optimum']}), "
             f"MCL band [{th['mcl_band'][0]:.4f}, {th['mcl_band'][1]:.4f}]"]
    for name, res in summary["models"].items():
        err = res.get("average_max_abs_error", None)
        errs = [a["max_abs_error"] for a in res.get("assignment", [])]
        lines.append(f"  {name}: eval WTA loss {res['eval_wta_loss']:.4f}, win rates "
                     f"{[round(r, 3) for r in res['win_rates']]}, matrix error "
                     f"{err if err is not None else [round(e, 4) for e in errs]}")
    return "\n".join(lines)
