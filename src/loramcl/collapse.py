"""Collapse alarms: a Lightning callback that watches the K hypotheses compete during training.

The classic MCL failure is a hypothesis that stops winning (it gets no gradient under `wta` and never
comes back), or two hypotheses that settle on the same mode while a third covers two modes at once.
`CollapseMonitor` (configs/callbacks/collapse.yaml, in the default callbacks) keeps, over the last
`window` optimizer steps of the training batches:

- each hypothesis' win share s_k = (sequences k wins) / (sequences), winners as in `loramcl.losses`
  (argmin of the per-sequence loss, whatever the mode);
- the win-share entropy H = -sum_k s_k log s_k / log K, normalised by log K so that 1 is an even
  split and 0 is one hypothesis winning everything, whatever K;
- for every pair (j, k) the relative loss distance
  d_jk = sum_i |L[j, i] - L[k, i]| / sum_i (L[j, i] + L[k, i]) / 2, over the window's sequences i
  that j or k wins: the mean absolute difference of the two hypotheses' per-sequence losses relative
  to their mean loss, where it matters. Two hypotheses on different modes differ by a lot on the
  sequences either of them wins (the loser is on another mode); two that share one mode win its
  sequences by noise and score them alike up to their training noise; two copies of one adapter give
  exactly 0. The sequences of modes neither of them wins are left out: there both are wrong, by
  amounts that say nothing about whether they model the same mode.

It logs `collapse/win_share_hyp{k}`, `collapse/win_share_entropy` and `collapse/duplicate_distance`
(min_jk d_jk) per step through the Trainer's loggers (TensorBoard and MLflow), and once the window
is full it raises two kinds of alarm, each warned once (`log.warning`, with the step and the
hypothesis or pair): a hypothesis whose share is below `min_share` (default 1 / (4K)), and a pair
with d_jk below `duplicate_tolerance` that has not grown by more than `duplicate_growth` (25 %) over
the last half window (every run starts from K identical adapters; a pair still moving apart is
separating, not a duplicate: on the audio demo the hypotheses part slowly, 0.09 apart at step 66
and 0.25 at the end). `action=stop` also stops the run there (`trainer.should_stop`).
Under annealed-wta a hot temperature trains every hypothesis on every sequence on purpose, so they are
near-duplicates by design: alarms wait until the window holds only steps at a temperature at or below
`max_temperature` (default 0.01; on the toy, annealed runs at tau 0.13 were 0.06 apart at step 100 and
1.0 apart once cold).
At the end of the fit it writes `collapse.png` (shares against steps, the threshold, the alarms)
into `dirpath`. It does nothing for K = 1 and for LoRA-MoE, whose experts do not compete.

Several processes (DDP): the window's sums are all-reduced every step (one collective of
K + 1 + 2 K^2 numbers), so every process sees the global batch and takes the same decision (a stop
is taken by all processes at the same step); rank 0 logs, warns and plots.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from loramcl.errors import ConfigError

log = logging.getLogger(__name__)

ACTIONS = ("warn", "stop")
LOW_SHARE, DUPLICATE = "low_share", "duplicate"
PLOT_NAME = "collapse.png"


# ---------------------------------------------------------------------------------------------- statistics
def batch_sums(winners: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """One batch's contribution to the window, as one flat float64 vector (one transfer, one
    collective): [wins (K), sequences (1), sum_i m_jki |L_j - L_k| (K * K), sum_i m_jki (L_j + L_k) / 2 (K * K)]
    where m_jki = 1 when sequence i is won by j or by k (the diagonal: by j).

    Args:
        winners: (B,) index of each sequence's best hypothesis.
        losses: (K, B) per-sequence losses.
    """
    K = losses.shape[0]
    L_ = losses.detach().double()
    won = torch.nn.functional.one_hot(winners.to(L_.device).long(), K).T.double()  # (K, B)
    wins = won.sum(dim=1)
    pair = (won[:, None, :] + won[None, :, :]).clamp(max=1.0)  # (K, K, B): won by j or by k
    absdiff = (pair * (L_[:, None, :] - L_[None, :, :]).abs()).sum(dim=-1)  # (K, K)
    meansum = (pair * (L_[:, None, :] + L_[None, :, :])).sum(dim=-1) / 2  # (K, K)
    n = torch.tensor([float(winners.numel())], dtype=torch.float64, device=L_.device)
    return torch.cat([wins, n, absdiff.flatten(), meansum.flatten()])


def split_sums(sums: torch.Tensor, K: int) -> tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]:
    """The inverse of `batch_sums` layout: (wins (K,), sequences, absdiff (K, K), meansum (K, K))."""
    return sums[:K], float(sums[K]), sums[K + 1:K + 1 + K * K].view(K, K), sums[K + 1 + K * K:].view(K, K)


def win_share_entropy(shares: torch.Tensor) -> float:
    """-sum_k s_k log s_k / log K in [0, 1] (0 log 0 = 0); 1 for K = 1."""
    K = shares.numel()
    if K < 2:
        return 1.0
    p = shares.double()
    terms = torch.where(p > 0, -p * torch.log(p.clamp(min=1e-300)), torch.zeros_like(p))
    return float(terms.sum() / math.log(K))


def relative_distances(absdiff: torch.Tensor, meansum: torch.Tensor, wins: torch.Tensor) -> torch.Tensor:
    """(K, K) d_jk = sum |L_j - L_k| / sum (L_j + L_k) / 2 over the sequences j or k won; the diagonal is
    inf (a hypothesis is not its own duplicate), and so is a pair that won nothing (no evidence); a
    pair of zero loss on its sequences is 0 apart only if the losses are equal."""
    d = torch.where(meansum > 0, absdiff / meansum.clamp(min=1e-300),
                    torch.where(absdiff > 0, torch.full_like(absdiff, math.inf), torch.zeros_like(absdiff)))
    pair_won = (wins[:, None] + wins[None, :]) > 0
    d = torch.where(pair_won, d, torch.full_like(d, math.inf))
    return d.fill_diagonal_(math.inf)


class WinWindow:
    """Sums of `batch_sums` over the batches of the last `window` optimizer steps."""

    def __init__(self, num_hypotheses: int, window: int):
        self.K, self.window = int(num_hypotheses), int(window)
        self.entries: deque[tuple[int, torch.Tensor]] = deque()  # (step, sums)
        self.total = torch.zeros(num_hypotheses + 1 + 2 * num_hypotheses ** 2, dtype=torch.float64)
        self.first_step: Optional[int] = None

    def add(self, step: int, sums: torch.Tensor) -> None:
        """Add a batch of optimizer step `step` (>= 1) and drop batches of steps <= step - window."""
        sums = sums.detach().double().cpu()
        if self.first_step is None:
            self.first_step = step
        self.entries.append((step, sums))
        self.total += sums
        while self.entries and self.entries[0][0] <= step - self.window:
            self.total -= self.entries.popleft()[1]

    def full(self, step: int) -> bool:
        """Whether `window` whole steps have been seen (steps first_step .. step)."""
        return self.first_step is not None and step - self.first_step + 1 >= self.window

    @property
    def sequences(self) -> float:
        return split_sums(self.total, self.K)[1]

    def shares(self) -> torch.Tensor:
        """(K,) fraction of the window's sequences each hypothesis won."""
        wins, n, _, _ = split_sums(self.total, self.K)
        return wins / max(n, 1.0)

    def distances(self) -> torch.Tensor:
        """(K, K) relative loss distances d_jk over the window (inf on the diagonal)."""
        wins, _, absdiff, meansum = split_sums(self.total, self.K)
        return relative_distances(absdiff, meansum, wins)


@dataclass
class Alarm:
    kind: str  # low_share | duplicate
    step: int  # optimizer step at which it fired
    hypotheses: list[int]  # the hypotheses below the share, or the duplicate pair
    values: list[float]  # their shares, or the pair's distance
    message: str


def check_alarms(shares: torch.Tensor, distances: torch.Tensor, min_share: float,
                 duplicate_tolerance: Optional[float], step: int, window: int, sequences: float,
                 earlier: Optional[torch.Tensor] = None, growth: float = 0.25) -> list[Alarm]:
    """The alarms a full window raises (at most one per kind): the hypotheses below `min_share`, and
    the closest pair whose distance is below `duplicate_tolerance` (None: not checked) and has not
    grown by more than `growth` (relative) since `earlier` (the distances half a window before; None:
    no trend check). A pair still moving apart is separating, not a duplicate: every run starts from
    K identical adapters, and on real data hypotheses can take a while to part."""
    K = shares.numel()
    alarms = []
    low = [k for k in range(K) if float(shares[k]) < min_share]
    if low:
        what = ", ".join(f"hypothesis {k} won {float(shares[k]):.1%}" for k in low)
        alarms.append(Alarm(LOW_SHARE, step, low, [float(shares[k]) for k in low],
                            f"collapse alarm at step {step}: {what} of the {sequences:,.0f} training sequences of "
                            f"the last {window} steps (threshold {min_share:.1%}, callbacks.collapse.min_share)"))
    if duplicate_tolerance is not None and K > 1:
        candidates = distances.clone()
        if earlier is not None:
            candidates[distances > (1.0 + growth) * earlier] = math.inf  # still separating
        flat = int(torch.argmin(candidates))
        j, k = divmod(flat, K)
        d = float(candidates[j, k])
        if d < duplicate_tolerance:
            alarms.append(Alarm(DUPLICATE, step, [min(j, k), max(j, k)], [d],
                                f"collapse alarm at step {step}: hypotheses {min(j, k)} and {max(j, k)} are near-duplicates, "
                                f"their per-sequence losses differ by {d:.2%} of their mean over the last {window} steps "
                                f"(tolerance {duplicate_tolerance:.1%}, callbacks.collapse.duplicate_tolerance)"))
    return alarms


AUTO_WINDOW, MIN_AUTO_WINDOW = 100, 10


def automatic_window(total_steps: float) -> int:
    """`callbacks.collapse.window=null`: 100 optimizer steps (12,800 sequences on the toy, where a share
    is known to +-0.004), shortened to a third of the fit (at least 10 steps) when the fit is shorter
    than 300 steps, so that short runs such as the CPU demos are watched over their last two thirds."""
    if not math.isfinite(total_steps) or total_steps <= 0:
        return AUTO_WINDOW
    return int(min(AUTO_WINDOW, max(MIN_AUTO_WINDOW, total_steps // 3)))


# ---------------------------------------------------------------------------------------------- callback
class CollapseMonitor(Callback):
    """Win shares, their entropy and near-duplicate pairs over a window of steps; warns (or stops) on
    collapse. See the module docstring for the definitions."""

    def __init__(self, window: Optional[int] = None, min_share: Optional[float] = None,
                 duplicate_tolerance: Optional[float] = 0.15, action: str = "warn", plot: bool = True,
                 dirpath: Optional[str] = None, max_temperature: float = 0.01, duplicate_growth: float = 0.25):
        from loramcl.schema.errors import validate
        from loramcl.schema.groups import CollapseSchema

        validate(CollapseSchema, dict(window=window, min_share=min_share, duplicate_tolerance=duplicate_tolerance,
                                      action=action, plot=plot, dirpath=dirpath, max_temperature=max_temperature,
                                      duplicate_growth=duplicate_growth), "callbacks.collapse")  # the rules
        self.window_option = None if window is None else int(window)
        self.window = self.window_option or AUTO_WINDOW  # the automatic one is fixed when the fit starts
        self.min_share_option = None if min_share is None else float(min_share)
        self.duplicate_tolerance = None if duplicate_tolerance is None else float(duplicate_tolerance)
        self.action = action
        self.plot = bool(plot)
        self.dirpath = dirpath
        self.max_temperature = float(max_temperature)
        self.duplicate_growth = float(duplicate_growth)
        self._past: deque[tuple[int, torch.Tensor]] = deque()  # (step, distances) of the last half window
        self._cold_since: Optional[int] = None  # first step of the current run of steps at or below it
        self.first_checked_step: Optional[int] = None  # the first step whose window was checked for alarms
        self.active = False
        self.num_hypotheses = 0
        self._window: Optional[WinWindow] = None
        self.history: list[list[float]] = []  # per step: [step, entropy, min distance, share_0 .. share_K-1]
        self.alarms: list[Alarm] = []  # the first of each kind
        self.stop_reason: Optional[str] = None
        self._last_step: Optional[int] = None

    @property
    def min_share(self) -> float:
        """The share threshold: the option, or 1 / (4K): a quarter of an even split, far below what a
        hypothesis holding one of K equally likely modes wins, and above the sampling noise of a
        100-step window on the toy (128 sequences a step)."""
        if self.min_share_option is not None:
            return self.min_share_option
        return 1.0 / (4 * max(self.num_hypotheses, 1))

    def fired(self, kind: str) -> Optional[Alarm]:
        return next((a for a in self.alarms if a.kind == kind), None)

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model = getattr(pl_module, "model", None)
        K = int(getattr(pl_module, "num_hypotheses", 1))
        self.active = K > 1 and bool(getattr(model, "compares_hypotheses", False)) and hasattr(pl_module, "last_winners")
        self.num_hypotheses = K
        self._window = None  # created when training starts, once the number of steps is known
        self.history, self.alarms, self.stop_reason, self._last_step = [], [], None, None
        self._cold_since = self.first_checked_step = None
        self._past = deque()
        if self.active and self.min_share_option is not None and self.min_share_option >= 1.0 / K:
            raise ConfigError(f"callbacks.collapse.min_share must be below an even split 1/K = {1.0 / K:.3f}, "
                              f"got {self.min_share_option}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        if self.window_option is None:
            self.window = automatic_window(trainer.estimated_stepping_batches)
        self._window = WinWindow(self.num_hypotheses, self.window)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._window is None or pl_module.last_winners is None or pl_module.last_hypothesis_losses is None:
            return
        sums = batch_sums(pl_module.last_winners, pl_module.last_hypothesis_losses)
        if trainer.world_size > 1:  # the global batch, on every process
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        step = max(int(trainer.global_step), 1)  # after the optimizer step of this batch: 1, 2, ...
        self._window.add(step, sums)
        temperature = getattr(pl_module.model, "temperature", None)  # annealed-wta only
        if temperature is not None and float(temperature) > self.max_temperature:
            self._cold_since = None
        elif self._cold_since is None:
            self._cold_since = step
        shares, distances = self._window.shares(), self._window.distances()
        if self._past and self._past[-1][0] == step:
            self._past.pop()
        self._past.append((step, distances))
        while self._past and self._past[0][0] < step - max(1, self.window // 2):
            self._past.popleft()
        entropy = win_share_entropy(shares)
        closest = float(distances.min())
        row = [float(step), entropy, closest, *shares.tolist()]
        if self._last_step == step:  # gradient accumulation: one row per optimizer step
            self.history[-1] = row
        else:
            self.history.append(row)
        self._last_step = step
        metrics = {f"collapse/win_share_hyp{k}": float(s) for k, s in enumerate(shares)}
        metrics["collapse/win_share_entropy"] = entropy
        if math.isfinite(closest):
            metrics["collapse/duplicate_distance"] = closest
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        if self._window.full(step) and self._cold_since is not None and step - self._cold_since + 1 >= self.window:
            if self.first_checked_step is None:
                self.first_checked_step = step
            self._raise(trainer, step, shares, distances)

    def _raise(self, trainer: L.Trainer, step: int, shares: torch.Tensor, distances: torch.Tensor) -> None:
        half = step - max(1, self.window // 2)
        earlier = next((d for s, d in self._past if s >= half), None)  # the distances half a window ago
        found = check_alarms(shares, distances, self.min_share, self.duplicate_tolerance, step, self.window,
                             self._window.sequences, earlier, self.duplicate_growth)
        for alarm in found:
            if self.fired(alarm.kind):
                continue
            self.alarms.append(alarm)
            if trainer.is_global_zero:
                log.warning(alarm.message)
            if self.action == "stop" and self.stop_reason is None:
                self.stop_reason = alarm.message
                trainer.should_stop = True
                if trainer.is_global_zero:
                    log.warning(f"stopping the run after step {step} (callbacks.collapse.action=stop); "
                                f"callbacks.collapse.action=warn only warns")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.active and self.plot and self.history and trainer.is_global_zero):
            return
        folder = Path(self.dirpath or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / PLOT_NAME
        plot_collapse(self.history, self.num_hypotheses, self.min_share, self.duplicate_tolerance,
                      self.alarms, self.window).savefig(path, dpi=110, bbox_inches="tight")
        for logger in trainer.loggers:  # MLflow: beside the run's metrics
            if hasattr(logger, "run_id") and getattr(logger, "run_id", None) and hasattr(logger.experiment, "log_artifact"):
                logger.experiment.log_artifact(logger.run_id, str(path))
        log.info(f"win shares and collapse alarms: {path}")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The alarms already raised (a resumed run does not warn again) and the curve so far."""
        return {"alarms": [asdict(a) for a in self.alarms],
                "history": torch.tensor(self.history, dtype=torch.float64) if self.history else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.alarms = [Alarm(**a) for a in state_dict.get("alarms", [])]
        history = state_dict.get("history")
        self.history = [] if history is None else history.tolist()


# ---------------------------------------------------------------------------------------------- figure
def plot_collapse(history: list[list[float]], num_hypotheses: int, min_share: float,
                  duplicate_tolerance: Optional[float], alarms: list[Alarm], window: int):
    """Top: each hypothesis' win share over the last `window` steps against the step, the share
    threshold (dashed) and the alarms (vertical lines). Bottom: the normalised win-share entropy and
    the closest pair's relative loss distance (log scale) with the duplicate tolerance."""
    from matplotlib.figure import Figure

    rows = torch.tensor(history, dtype=torch.float64)
    steps, entropy, closest, shares = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3:]
    fig = Figure(figsize=(7, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for k in range(num_hypotheses):
        top.plot(steps, shares[:, k], lw=1.2, label=f"hypothesis {k}")
    top.axhline(1.0 / num_hypotheses, color="grey", lw=0.8, ls=":", label=f"even split 1/K = {1 / num_hypotheses:.3f}")
    top.axhline(min_share, color="tab:red", lw=1, ls="--", label=f"alarm threshold {min_share:.3f}")
    for alarm in alarms:
        what = (f"hyp {', '.join(map(str, alarm.hypotheses))} low share" if alarm.kind == LOW_SHARE
                else f"hyp {alarm.hypotheses[0]} ~ {alarm.hypotheses[1]} duplicates")
        for ax in (top, bottom):
            ax.axvline(alarm.step, color="tab:red" if alarm.kind == LOW_SHARE else "tab:purple", lw=1.5, alpha=0.7)
        top.annotate(f"step {alarm.step}: {what}", (alarm.step, 0.98), xycoords=("data", "axes fraction"),
                     rotation=90, va="top", ha="right", fontsize=7)
    top.set_ylim(0, 1)
    top.set_ylabel(f"win share (last {window} steps)")
    top.legend(fontsize=7, loc="upper right")
    top.grid(alpha=0.3)
    bottom.plot(steps, entropy, color="black", lw=1.2, label="win-share entropy / log K")
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("entropy")
    bottom.set_xlabel("training step")
    bottom.grid(alpha=0.3)
    right = bottom.twinx()
    finite = torch.isfinite(closest) & (closest > 0)
    if bool(finite.any()):
        right.semilogy(steps[finite], closest[finite], color="tab:purple", lw=1, label="closest pair: loss distance")
    if duplicate_tolerance:
        right.axhline(duplicate_tolerance, color="tab:purple", lw=1, ls="--", label=f"duplicate tolerance {duplicate_tolerance:g}")
    right.set_ylabel("relative loss distance", color="tab:purple")
    handles = bottom.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    bottom.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower right")
    fig.suptitle(f"collapse monitor: K = {num_hypotheses}" + (f", {len(alarms)} alarm(s)" if alarms else ", no alarm"))
    fig.tight_layout()
    return fig
