"""Several processes and SLURM: who writes, how jobs requeue, how FSDP wraps a K-way LoRA model.

Distribution itself is Lightning's (`configs/trainer/ddp.yaml`, `fsdp.yaml`, `deepspeed_zero3.yaml`);
this module holds what the project adds around it:

- the process rank, known from the environment before any Trainer exists (Lightning's launcher
  sets LOCAL_RANK in its child processes, `srun` sets SLURM_PROCID, torchrun RANK), so that only
  rank 0 creates MLflow runs and writes run files;
- SLURM: Lightning's own requeue handler is switched off (it saves a checkpoint from inside the
  signal handler, in the middle of a step); `callbacks.GracefulStop` saves at the next step boundary
  and `requeue_job` puts the job back in the queue. A requeued job (SLURM_RESTART_COUNT >= 1) runs
  in the same run folder (`run_stamp`) and resumes its newest checkpoint by itself;
- FSDP: `LoRAWrapPolicy` puts every transformer block, every K-way layer's adapters and every
  frozen base linear of a K-way layer in units of their own, so no unit mixes frozen and trainable
  parameters (which would allocate gradients for the frozen weights); the adapter units are not
  sharded, so checkpoints are the plain adapter files of one device (`fsdp_strategy`), and
  `BlockPolicy` picks the blocks for activation checkpointing.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
from datetime import datetime
from typing import Any, Optional

from torch import nn

log = logging.getLogger(__name__)

BLOCK_PATTERN = r".*(Decoder|Encoder)Layer$"  # LlamaDecoderLayer, Qwen2AudioEncoderLayer, CLIPEncoderLayer, ...


# ---------------------------------------------------------------------------------------------- ranks
def process_rank() -> int:
    """This process's global rank as the launcher set it (0 for a plain single process)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_main_process() -> bool:
    return process_rank() == 0


# ---------------------------------------------------------------------------------------------- SLURM
def slurm_job_id() -> Optional[str]:
    """`<array job>_<task>` for an array task, else the job id; None outside SLURM."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or None


def slurm_restart_count() -> int:
    """How many times SLURM requeued this job (0 for a first start or outside SLURM)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


_STAMP: Optional[str] = None


def run_stamp() -> str:
    """The `loramcl.run_stamp` resolver, the last part of a run folder's name.

    Outside SLURM a time stamp (as Hydra's `now`, fixed once per process). In a SLURM job
    `slurm-<job id>`: the same for every task of the job (srun starts each rank as its own process,
    and each would otherwise stamp its own folder) and for every restart of a requeued job, which so
    finds its checkpoints again."""
    global _STAMP
    if _STAMP is None:
        job = slurm_job_id()
        _STAMP = f"slurm-{job}" if job else datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    return _STAMP


def cluster_plugins() -> list[Any]:
    """Lightning plugins for the cluster this process runs on: in a SLURM job, the SLURM
    environment without Lightning's requeue handler (GracefulStop requeues at a step boundary)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def requeue_job() -> Optional[str]:
    """Put this SLURM job back in the queue (`scontrol requeue`); returns None on success, else why not."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return "not a SLURM job"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"scontrol requeue {job} failed: {err}"
    if done.returncode != 0:
        return f"scontrol requeue {job} failed: {(done.stderr or done.stdout).strip()}"
    return None


# ---------------------------------------------------------------------------------------------- FSDP
def _is_kway(module: nn.Module) -> bool:
    from loramcl.layers import MultiLoRALinear

    return isinstance(module, MultiLoRALinear)


class _Policy:
    """Base of the wrap policies: a torch `CustomPolicy` whose predicate is `wraps(module)`."""

    def __init__(self, block_pattern: str = BLOCK_PATTERN):
        self.block_pattern = re.compile(block_pattern)

    def is_block(self, module: nn.Module) -> bool:
        return bool(self.block_pattern.match(type(module).__name__))

    def policy(self) -> Any:
        from torch.distributed.fsdp.wrap import CustomPolicy

        return CustomPolicy(self.wraps)

    def wraps(self, module: nn.Module) -> bool:
        raise NotImplementedError


class BlockPolicy(_Policy):
    """Transformer blocks (class name matching `block_pattern`): activation checkpointing units."""

    def wraps(self, module: nn.Module) -> bool:
        return self.is_block(module)


class LoRAWrapPolicy(_Policy):
    """FSDP units: each transformer block, each frozen base linear of a K-way layer and each K-way
    layer, which then holds only its adapters (and router) and is not sharded (`NO_SHARD`: every
    process keeps the whole adapters, a few MB, and all-reduces their gradients as DDP does). (torch
    visits parents before children, so a K-way layer is seen before its base.)"""

    def __init__(self, block_pattern: str = BLOCK_PATTERN):
        super().__init__(block_pattern)
        self._bases: set[int] = set()

    def wraps(self, module: nn.Module) -> Any:
        from torch.distributed.fsdp import ShardingStrategy

        if _is_kway(module):
            self._bases.add(id(module.base_layer))
            return {"sharding_strategy": ShardingStrategy.NO_SHARD}
        return self.is_block(module) or id(module) in self._bases


def _clean(name: str) -> str:
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


@functools.lru_cache(maxsize=None)
def _adapter_fsdp_class() -> type:
    from lightning.pytorch.strategies import FSDPStrategy
    from lightning.pytorch.strategies.strategy import Strategy

    class AdapterFSDPStrategy(FSDPStrategy):
        """Lightning's FSDPStrategy whose checkpoints are those of one device: the adapters (whole on
        every process, see `LoRAWrapPolicy`) and their optimizer state, in plain files that resume
        under any strategy and process count. FSDP's own state-dict machinery is not used: it would
        gather the frozen backbone at every save."""

        def lightning_module_state_dict(self) -> dict[str, Any]:
            return {_clean(n): p.detach() for n, p in self.lightning_module.named_parameters() if p.requires_grad}

        def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
            return Strategy.optimizer_state(self, optimizer)

        def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
            Strategy.save_checkpoint(self, checkpoint, filepath, storage_options)

        def load_checkpoint(self, checkpoint_path: Any, weights_only: Optional[bool] = None) -> dict[str, Any]:
            return Strategy.load_checkpoint(self, checkpoint_path, weights_only)

        def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
            import torch

            params = {_clean(n): p for n, p in self.lightning_module.named_parameters()}
            unknown = sorted(set(checkpoint["state_dict"]) - set(params))
            if unknown:
                raise KeyError(f"checkpoint tensors without a parameter in this model: {unknown[:5]}")
            with torch.no_grad():
                for name, value in checkpoint["state_dict"].items():
                    params[name].copy_(value)

        def load_optimizer_state_dict(self, checkpoint: Any) -> None:
            Strategy.load_optimizer_state_dict(self, checkpoint)

        @property
        def lightning_restore_optimizer(self) -> bool:  # FSDPStrategy restores them in its load_checkpoint
            return True

    return AdapterFSDPStrategy


def fsdp_strategy(block_pattern: str = BLOCK_PATTERN, activation_checkpointing: bool = False, **kwargs: Any) -> Any:
    """FSDP for a K-way LoRA model (the `_target_` of configs/trainer/fsdp.yaml): `LoRAWrapPolicy`
    units, `use_orig_params`, adapter-only checkpoints as on one device, and, if asked, activation
    checkpointing of the transformer blocks."""
    kwargs.setdefault("use_orig_params", True)
    kwargs.pop("state_dict_type", None)  # always one adapter-only file
    if activation_checkpointing:
        kwargs["activation_checkpointing_policy"] = BlockPolicy(block_pattern).policy()
    return _adapter_fsdp_class()(auto_wrap_policy=LoRAWrapPolicy(block_pattern).policy(), **kwargs)
