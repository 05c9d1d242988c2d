"""`MCLLitModule`: Lightning training of any causal-LM backbone with K LoRA hypotheses.

Logs, per training step, the MCL loss, every hypothesis' mean loss and the fraction of samples
each hypothesis wins (plus the annealing temperature); per validation epoch the same under plain
WTA (`val/wta_loss`, `val/hyp{k}_loss`, `val/win_rate_hyp{k}`). A hypothesis that never wins is
the classic MCL collapse: it shows as a win rate of 0. Checkpoints hold the adapter weights and
the optimizer state only, never the frozen backbone.

A LoRA-MoE model (`loramcl.moe.MoEModel`, whose experts do not compete) logs `train/loss` and
`val/wta_loss`, which is then simply the validation mean NLL of the mixture (the name is kept so
that checkpoint monitoring and `optimized_metric` work unchanged), and no per-expert losses or win
rates. Checkpoints record a `CheckpointMeta` (K, rank, adapted layers, mode); a checkpoint of another
K, rank or scheme is refused on load.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn

from loramcl.adapters import AdapterModel
from loramcl.checkpoints import META_KEY, RUN_KEY, CheckpointMeta
from loramcl.config import LoRAConfig, MCLConfig
from loramcl.data.collate import model_inputs
from loramcl.distributed import clean_param_name
from loramcl.losses import win_counts
from loramcl.model import build_model

log = logging.getLogger(__name__)


def _numpy_state() -> tuple:
    """numpy's global RNG state with its key array as a tensor (checkpoints load with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return (str(name), torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(gauss))


class MCLLitModule(L.LightningModule):
    """Trains the adapters of an adapter model (`MCLModel` or `MoEModel`); the backbone stays frozen.

    `backbone` is a plain transformers model (the adapters are injected here as `mcl` and `lora`
    say) or an already built adapter model (e.g. `loramcl.runs.load_model`'s, for validation)."""

    strict_loading = False  # checkpoints carry only the adapters

    def __init__(
        self,
        backbone: nn.Module,
        mcl: MCLConfig,
        lora: LoRAConfig,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Optional[Callable[..., Any]] = None,
    ):
        super().__init__()
        self.model = backbone if isinstance(backbone, AdapterModel) else build_model(backbone, mcl, lora)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_history: list[dict[str, float]] = []
        self._val_sums: Optional[dict[str, torch.Tensor]] = None
        # the last training batch's (K, B) losses and (B,) winners, detached: the non-finite guard names
        # the hypothesis of a NaN loss, the collapse monitor (loramcl.collapse) tracks win shares
        self.last_hypothesis_losses: Optional[torch.Tensor] = None
        self.last_winners: Optional[torch.Tensor] = None

    @property
    def num_hypotheses(self) -> int:
        return self.model.num_hypotheses

    def forward(self, **batch: torch.Tensor):
        return self.model(**model_inputs(batch))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.model.set_progress(self.global_step, self.current_epoch)
        out = self.model(**model_inputs(batch))
        self.last_hypothesis_losses, self.last_winners = out.hypothesis_losses.detach(), out.winners.detach()
        K, B = out.hypothesis_losses.shape
        metrics = {"train/loss": out.loss.detach()}
        if self.model.compares_hypotheses:  # the MoE mixture is one model: no hypotheses to compare
            rates = win_counts(out.winners, K).float() / B
            for k in range(K):
                metrics[f"train/hyp{k}_loss"] = out.hypothesis_losses[k].detach().mean()
                metrics[f"train/win_rate_hyp{k}"] = rates[k]
        metrics = self._mean_over_processes(metrics)
        if self.model.temperature is not None:
            metrics["train/temperature"] = torch.tensor(self.model.temperature)
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=B)
        self.log("train/loss_epoch", out.loss.detach(), on_step=False, on_epoch=True, batch_size=B, prog_bar=True,
                 sync_dist=True)
        return out.loss

    def _mean_over_processes(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-sample means of this process's batch -> means over the global batch (every process has
        the same batch size), in one collective; unchanged on one process."""
        if self._trainer is None or self.trainer.world_size == 1:
            return metrics
        stacked = torch.stack([v.float() for v in metrics.values()])
        reduced = self.trainer.strategy.reduce(stacked, reduce_op="mean")
        return dict(zip(metrics, reduced))

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        K = self.num_hypotheses
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=self.device)  # noqa: E731
        self._val_sums = {"wta": zeros(), "hyp": zeros(K), "wins": zeros(K), "n": zeros()}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(**model_inputs(batch))  # eval mode: plain WTA (MoE: the mixture's NLL)
        losses = out.hypothesis_losses.detach().double()  # (K, B); (1, B) for MoE
        s = self._val_sums
        s["wta"] += losses.min(dim=0).values.sum()
        s["n"] += losses.shape[1]
        if self.model.compares_hypotheses:
            s["hyp"] += losses.sum(dim=1)
            s["wins"] += win_counts(out.winners, self.num_hypotheses).to(s["wins"])

    def on_validation_epoch_end(self) -> None:
        s = self._val_sums
        if s is None:
            return
        if self.trainer.world_size > 1:  # each process validated a shard: sum the shards (one collective)
            flat = self.trainer.strategy.reduce(torch.cat([v.reshape(-1) for v in s.values()]), reduce_op="sum")
            K = self.num_hypotheses
            s = {"wta": flat[0], "hyp": flat[1:1 + K], "wins": flat[1 + K:1 + 2 * K], "n": flat[-1]}
        if s["n"] == 0:
            return
        n = s["n"]
        metrics = {"val/wta_loss": (s["wta"] / n).float()}
        for k in range(self.num_hypotheses if self.model.compares_hypotheses else 0):
            metrics[f"val/hyp{k}_loss"] = (s["hyp"][k] / n).float()
            metrics[f"val/win_rate_hyp{k}"] = (s["wins"][k] / n).float()
        # identical on every process already (summed above); sync_dist only keeps Lightning from warning
        wta = metrics.pop("val/wta_loss")
        self.log("val/wta_loss", wta, prog_bar=True, sync_dist=True)
        self.log_dict(metrics, sync_dist=True)
        metrics["val/wta_loss"] = wta
        if not self.trainer.sanity_checking:
            self.val_history.append({"step": int(self.global_step), **{k: float(v) for k, v in metrics.items()}})

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable tensors (adapters, MoE routers), plus K, r and the mode to refuse a
        mismatched resume or evaluation."""
        trainable = {clean_param_name(n) for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint[META_KEY] = CheckpointMeta.of_model(self.model).to_dict()
        if self._trainer is not None:  # the MLflow run a resume continues
            for logger in self.trainer.loggers:
                if isinstance(logger, MLFlowLogger) and logger.run_id:
                    checkpoint[RUN_KEY] = {"mlflow_run_id": logger.run_id}
        # RNG states (dropout masks), so a resumed run continues exactly where this one was; on several
        # processes each has its own stream, all gathered (a collective: every rank saves)
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                    "numpy": _numpy_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()
        if self._trainer is not None and self.trainer.world_size > 1:
            checkpoint["rng_states"]["torch_per_rank"] = self._gather_state(torch.get_rng_state())
            if self.device.type == "cuda":
                checkpoint["rng_states"]["cuda_per_rank"] = self._gather_state(torch.cuda.get_rng_state(self.device))

    def _gather_state(self, state: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.all_gather(state.to(self.device)).cpu()  # (world size, n)

    def setup(self, stage: str) -> None:
        """On several processes, rank r > 0 draws its dropout masks from its own stream (seeded from
        the run's seed and r), not a copy of rank 0's; a resumed fit then restores each rank's."""
        if stage == "fit" and self.trainer.world_size > 1 and self.trainer.global_rank > 0:
            torch.manual_seed(torch.initial_seed() + 1_000_003 * self.trainer.global_rank)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = CheckpointMeta.from_dict(checkpoint.get(META_KEY), "this checkpoint")
        meta.check(self.model.mcl_config, self.model.lora_config, "this checkpoint")
        states = checkpoint.get("rng_states")
        fitting = self._trainer is not None and getattr(self.trainer.state.fn, "value", None) == "fit"
        if not (states and fitting):  # only a resumed fit (not an evaluation) continues the streams
            return
        world, rank = self.trainer.world_size, self.trainer.global_rank
        random.setstate(states["python"])
        name, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((name, keys.numpy(), pos, has_gauss, gauss))
        per_rank = states.get("torch_per_rank")
        if per_rank is not None and per_rank.shape[0] == world:
            torch.set_rng_state(per_rank[rank].clone())
            if "cuda_per_rank" in states and self.device.type == "cuda":
                torch.cuda.set_rng_state(states["cuda_per_rank"][rank].clone(), self.device)
            return
        if rank == 0:  # rank 0 continues the saved stream; others keep their own (setup)
            torch.set_rng_state(states["torch"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
        saved_world = 1 if per_rank is None else per_rank.shape[0]
        if world != saved_world and rank == 0 and self.model.lora_config.dropout > 0:
            log.warning(f"resuming on {world} process(es) a checkpoint saved by {saved_world}: the dropout "
                        f"masks of the continuation differ from those of an uninterrupted run")
