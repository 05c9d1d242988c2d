"""What keeps a training run safe to stop: checkpoints, the non-finite guard and signal handling.

- `AdapterCheckpoint` (configs/callbacks/model_checkpoint.yaml): Lightning's ModelCheckpoint for the
  best checkpoint (on `val/wta_loss`), plus a resume point `last.ckpt` that does not wait for
  validation: written every `every_n_train_steps` optimizer steps, at every validation, at the end
  of training and when a stop signal arrives. No checkpoint with non-finite adapter weights is ever
  written.
- `AtomicCheckpointIO`: every checkpoint is written to a temporary file beside its target and
  renamed over it, so a kill during a save leaves the previous checkpoint intact; temporary files of
  dead writers are removed when a run starts.
- `NonFiniteGuard`: a NaN / inf loss (before backward) or gradient (before the optimizer step) stops
  the run with one line naming the step, the hypothesis and the last good checkpoint.
- `GracefulStop`: SIGTERM / SIGINT save a checkpoint at the next step boundary and stop the run with
  `StopRequested` (exit status 128 + signal; MLflow status KILLED). A second SIGINT stops at once.
  SIGUSR1 / SIGUSR2 (SLURM's warning before a time limit or preemption) do the same and requeue the
  SLURM job, which resumes from that checkpoint.

`training.fit_model` adds the guard, the stop handler and the checkpoint IO to every fit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from loramcl.errors import NonFiniteError, StopRequested
from loramcl.utils.atomic import pid_alive

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"  # temporary checkpoint files: .<name>.tmp-<host>-<pid>


# ---------------------------------------------------------------------------------------------- files
def temp_path(target: Path) -> Path:
    return target.parent / f".{target.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}"


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary checkpoint files in `folder` left by dead writers on this host (a kill
    during a save); returns them."""
    removed = []
    if not folder.is_dir():
        return removed
    host = socket.gethostname()
    for path in folder.glob(f".*{TMP_MARK}*"):
        owner = path.name.rsplit(TMP_MARK, 1)[1]
        owner_host, _, pid = owner.rpartition("-")
        if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file beside the target, fsync, then rename over the target: a
    checkpoint file is always complete, and nothing is left in $TMPDIR."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):  # remote stores: Lightning's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(target)
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------- checks
def _trainable(module: L.LightningModule) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def _first_non_finite(named: list[tuple[str, torch.Tensor]]) -> Optional[tuple[str, Optional[int]]]:
    """(name, hypothesis) of the first non-finite tensor (one device sync when all are finite). The
    adapters and routers keep the hypothesis / expert on dim 0; None for other tensors."""
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in named])
    if bool(finite.all()):
        return None
    name, tensor = named[int((~finite).nonzero()[0])]
    hypothesis = None
    if tensor.dim() >= 2 and name.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "weight") and (
            "lora_" in name or "router" in name):
        hypothesis = int((~torch.isfinite(tensor).flatten(1).all(dim=1)).nonzero()[0])
    return name, hypothesis


def _last_checkpoint_phrase(trainer: L.Trainer) -> str:
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, AdapterCheckpoint) and cb.last_model_path and Path(cb.last_model_path).is_file():
            return f"last good checkpoint: {cb.last_model_path} (step {cb.last_step})"
    return "no checkpoint was written before it"


def _advice(trainer: L.Trainer) -> str:
    resumable = "last good checkpoint" in _last_checkpoint_phrase(trainer)
    return ("Lower optim.optimizer.lr or set trainer.gradient_clip_val, then "
            + ("resume from that checkpoint (ckpt_path=...)" if resumable else "start again"))


class NonFiniteGuard(Callback):
    """Stops a fit at the first non-finite loss or gradient, before the optimizer applies it. On
    several processes every one stops in the same step: a value found on one is shared (one small
    all-reduce per check) before any of them raises, so none waits in the next collective."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        local = not bool(torch.isfinite(loss.detach()).all())
        if not _anywhere(trainer, local):
            return
        if not local:
            raise NonFiniteError(_elsewhere(trainer, "training loss"))
        where = ""
        losses = getattr(pl_module, "last_hypothesis_losses", None)
        if losses is not None:
            bad = (~torch.isfinite(losses).all(dim=1)).nonzero().flatten().tolist()
            if bad and losses.shape[0] > 1:
                where = f", hypothesis {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
        raise NonFiniteError(
            f"non-finite training loss ({float(loss.detach().float().mean())}) in step {trainer.global_step + 1}"
            f"{_on_rank(trainer)}{where}; stopped before the optimizer step, {_last_checkpoint_phrase(trainer)}. "
            f"{_advice(trainer)}")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        named = [(n, p.grad) for n, p in _trainable(pl_module) if p.grad is not None]
        found = _first_non_finite(named)
        if not _anywhere(trainer, found is not None):  # sharded gradients (FSDP) differ between processes
            return
        if found is None:
            raise NonFiniteError(_elsewhere(trainer, "gradient"))
        name, hypothesis = found
        where = f", hypothesis {hypothesis}" if hypothesis is not None else ""
        raise NonFiniteError(
            f"non-finite gradient of {name} in step {trainer.global_step + 1}{_on_rank(trainer)}{where}; stopped "
            f"before the optimizer step, {_last_checkpoint_phrase(trainer)}. {_advice(trainer)}")


def _anywhere(trainer: L.Trainer, local: bool) -> bool:
    """Whether `local` holds on any process; every process must call this at the same point."""
    if trainer.world_size > 1:
        return bool(trainer.strategy.reduce_boolean_decision(local, all=False))
    return local


def _on_rank(trainer: L.Trainer) -> str:
    return f" on rank {trainer.global_rank}" if trainer.world_size > 1 else ""


def _elsewhere(trainer: L.Trainer, what: str) -> str:
    return (f"non-finite {what} on another rank in step {trainer.global_step + 1} (rank {trainer.global_rank} "
            f"stopped with it before the optimizer step), {_last_checkpoint_phrase(trainer)}. {_advice(trainer)}")


def require_finite_weights(trainer: L.Trainer, pl_module: L.LightningModule, target: str) -> None:
    """Refuse to save `target` when an adapter weight is NaN / inf."""
    found = _first_non_finite([(n, p.detach()) for n, p in _trainable(pl_module)])
    if found is not None:
        name, hypothesis = found
        where = f" (hypothesis {hypothesis})" if hypothesis is not None else ""
        raise NonFiniteError(f"adapter weight {name}{where} is not finite after step {trainer.global_step}; "
                             f"{target} was not written, {_last_checkpoint_phrase(trainer)}. {_advice(trainer)}")


# ---------------------------------------------------------------------------------------------- checkpoints
class AdapterCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (best / top-k on `monitor` at each validation; without a monitor, step files
    every `every_n_train_steps`) whose `last.ckpt` is a resume point independent of validation.
    `save_last=True` writes it every `every_n_train_steps` steps (also before the first validation),
    after every validation, at the end of training and on a stop signal; `save_last=False` never
    writes it."""

    def __init__(self, *args: Any, save_last: bool = True, every_n_train_steps: Optional[int] = None,
                 monitor: Optional[str] = None, **kwargs: Any):
        # Lightning's own `last` waits for the monitor, and its every_n_train_steps replaces the saves
        # at validation: with a monitor, the best is judged at each validation and the steps only
        # pace last.ckpt; without one, step files are kept every N steps too
        super().__init__(*args, save_last=False, monitor=monitor,
                         every_n_train_steps=every_n_train_steps if monitor is None else None, **kwargs)
        self.keep_last = bool(save_last)
        self.resume_every = int(every_n_train_steps or 0)
        self.last_step: Optional[int] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.dirpath and trainer.is_global_zero:
            for path in remove_stale_temp_files(Path(self.dirpath)):
                log.warning(f"removed {path}: an unfinished checkpoint save of a killed run")

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        require_finite_weights(trainer, trainer.lightning_module, filepath)
        super()._save_checkpoint(trainer, filepath)

    def save_resume_point(self, trainer: L.Trainer) -> Optional[str]:
        """Write `last.ckpt` for the current step (unless already written); returns its path."""
        if not self.keep_last or trainer.fast_dev_run or trainer.sanity_checking or not self.dirpath:
            return None
        path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        if self.last_step == trainer.global_step and os.path.isfile(path):
            return path
        require_finite_weights(trainer, trainer.lightning_module, path)
        self.last_model_path, self.last_step = path, trainer.global_step  # part of the saved state
        trainer.save_checkpoint(path, weights_only=False)  # (None logs a line per save)
        return path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if self.resume_every > 0 and trainer.global_step % self.resume_every == 0:
            self.save_resume_point(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.save_resume_point(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.save_resume_point(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.last_step = state_dict.get("last_step")


# ---------------------------------------------------------------------------------------------- signals
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# SLURM's warning before a time limit or preemption (`sbatch --signal=USR1@90`; submitit asks for USR2)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def say(text: str) -> None:
    """Write `text` to stderr from a signal handler: straight to the file descriptor (a handler that
    runs while Python writes to sys.stderr would get "reentrant call" from its buffer), never raising."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:  # stderr closed: the stop message says it later
        pass


def optimizer_stepped(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the batch `batch_idx` that just ended was the last of its gradient accumulation (the
    optimizer stepped): only then is the state a resume point."""
    accumulate = int(trainer.accumulate_grad_batches or 1)
    if accumulate <= 1 or (batch_idx + 1) % accumulate == 0:
        return True
    batches = trainer.num_training_batches
    return isinstance(batches, int) and batch_idx + 1 >= batches  # an epoch's last batch steps too


class GracefulStop(Callback):
    """SIGTERM / SIGINT: finish the current step, save `last.ckpt`, raise `StopRequested`.
    SIGUSR1 / SIGUSR2 (SLURM's warning before a time limit or a preemption): the same, and the SLURM
    job is requeued (by the handler submitit installed for the signal, if any, else
    `scontrol requeue`), to resume from that checkpoint when it starts again.

    `resume_hint` is appended to the message (how to resume). `requeue=False` for runs that cannot
    resume (the toy and bilingual runners train from scratch): USR1 / USR2 stop them without a
    requeue. A job is requeued at most `loramcl.cluster.max_requeues()` times. Handlers are
    installed for the fit only (replacing Lightning's SIGTERM notifier, whose SystemExit would end
    the process with status 0). On several processes, a signal that reached any of them stops all
    at the same step."""

    def __init__(self, resume_hint: str = "", requeue: bool = True):
        self.resume_hint = resume_hint
        self.requeue = requeue
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:  # second Ctrl+C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if self.received in REQUEUE_SIGNALS and signum == signal.SIGTERM:
            return  # SLURM's SIGTERM after our own requeue request: the step boundary is near
        self.received = signum
        what = "requeue the job" if signum in REQUEUE_SIGNALS and self.requeue else "stop"
        say(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this optimizer step, then {what}"
            + (" (Ctrl+C again stops at once, without it)" if signum == signal.SIGINT else "") + "\n")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # again: Lightning registers its own SIGTERM notifier after on_fit_start (composed with ours),
        # whose SIGTERMException (exit status 0) at the next batch would come before a stop that
        # waits for the end of a gradient accumulation
        self._install()

    def _install(self) -> None:
        for signum in STOP_SIGNALS + REQUEUE_SIGNALS:
            current = signal.getsignal(signum)
            if current is not self._handle and not (hasattr(current, "__self__") and current.__self__ is self):
                self._previous.setdefault(signum, current)
            signal.signal(signum, self._handle)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not optimizer_stepped(trainer, batch_idx):  # inside a gradient accumulation: not a resume point
            return
        received = self.received is not None
        requeue = self.received in REQUEUE_SIGNALS
        if trainer.world_size > 1:  # every process stops at the same step
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
            requeue = trainer.strategy.reduce_boolean_decision(requeue, all=False)
        if not received:
            return
        signum = self.received or (signal.SIGUSR1 if requeue else signal.SIGTERM)
        path = None
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, AdapterCheckpoint):
                path = cb.save_resume_point(trainer) or path
        name = signal.Signals(signum).name
        saved = f"checkpoint {path}" if path else "no checkpoint (no model_checkpoint callback with save_last)"
        message = f"stopped by {name} after step {trainer.global_step}: {saved}"
        if not self.requeue:
            message += ("; this run trains from scratch and cannot resume" + (", so the SLURM job is not requeued"
                        if requeue else "") + ": run the same command again")
        elif requeue and path:
            message += "; " + self._requeue(trainer, signum)
        elif self.resume_hint and path:
            message += f"; resume with: {self.resume_hint}"
        raise StopRequested(message, signum)

    def _requeue(self, trainer: L.Trainer, signum: int) -> str:
        """Requeue the SLURM job (rank 0), through the handler submitit left for `signum` if there is
        one; returns what happened, for the stop message. The other ranks wait for it (srun ends a
        job step when one task exits with an error, which would cut rank 0's requeue short)."""
        from loramcl.cluster import max_requeues, requeue_job, slurm_job_id, slurm_restart_count

        job = slurm_job_id()
        if job is None:
            return f"not a SLURM job, so not requeued; resume with: {self.resume_hint}"
        restarts, cap = slurm_restart_count(), max_requeues()
        if restarts >= cap:  # every rank knows it: no barrier needed
            return (f"SLURM job {job} was requeued {restarts} time(s) already (max_requeues {cap}, "
                    f"LORAMCL_MAX_REQUEUES): not requeued again; resume with: {self.resume_hint}")
        outcome = f"SLURM job {job} requeued by rank 0"
        if trainer.is_global_zero:
            previous = self._previous.get(signum)
            if callable(previous) and getattr(previous, "__module__", "").startswith("submitit"):
                self.teardown(trainer, trainer.lightning_module, "fit")
                previous(signum, None)  # submitit: pickles its job for the restart, requeues, exits
            failed = requeue_job()
            outcome = (f"not requeued ({failed}); resume with: {self.resume_hint}" if failed else
                       f"SLURM job {job} requeued: it resumes from this checkpoint when it starts again")
        if trainer.world_size > 1:
            trainer.strategy.barrier("loramcl-requeue")
        return outcome
