"""FSDP for a K-way LoRA model; distribution itself is Lightning's (configs/trainer/ddp.yaml, fsdp.yaml).

`LoRAWrapPolicy` puts every transformer block (`loramcl.backbones.block_kind`), every K-way layer's
adapters and every frozen base linear of a K-way layer in units of their own, so no unit mixes
frozen and trainable parameters (which would allocate gradients for the frozen weights); the
adapter units are not sharded, so checkpoints are the plain adapter files of one device
(`fsdp_strategy`), and `BlockPolicy` picks the blocks for activation checkpointing. Ranks and
SLURM: `loramcl.cluster`.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Optional

from torch import nn

from loramcl.backbones import block_kind


# ---------------------------------------------------------------------------------------------- FSDP
def _is_kway(module: nn.Module) -> bool:
    from loramcl.layers import MultiLoRALinear

    return isinstance(module, MultiLoRALinear)


class _Policy:
    """Base of the wrap policies: a torch `CustomPolicy` whose predicate is `wraps(module)`.

    The transformer blocks are those `loramcl.backbones.block_kind` recognises, or, for a backbone
    whose blocks are named otherwise, the classes whose name matches `block_pattern` (a regex).
    """

    def __init__(self, block_pattern: Optional[str] = None):
        self.block_pattern = None if block_pattern is None else re.compile(block_pattern)

    def is_block(self, module: nn.Module) -> bool:
        if self.block_pattern is not None:
            return bool(self.block_pattern.match(type(module).__name__))
        return block_kind(module) is not None

    def policy(self) -> Any:
        from torch.distributed.fsdp.wrap import CustomPolicy

        return CustomPolicy(self.wraps)

    def wraps(self, module: nn.Module) -> bool:
        raise NotImplementedError


class BlockPolicy(_Policy):
    """Transformer blocks: activation checkpointing units."""

    def wraps(self, module: nn.Module) -> bool:
        return self.is_block(module)


class LoRAWrapPolicy(_Policy):
    """FSDP units: each transformer block, each frozen base linear of a K-way layer and each K-way
    layer, which then holds only its adapters (and router) and is not sharded (`NO_SHARD`: every
    process keeps the whole adapters, a few MB, and all-reduces their gradients as DDP does). (torch
    visits parents before children, so a K-way layer is seen before its base.)"""

    def __init__(self, block_pattern: Optional[str] = None):
        super().__init__(block_pattern)
        self._bases: set[int] = set()

    def wraps(self, module: nn.Module) -> Any:
        from torch.distributed.fsdp import ShardingStrategy

        if _is_kway(module):
            self._bases.add(id(module.base_layer))
            return {"sharding_strategy": ShardingStrategy.NO_SHARD}
        return self.is_block(module) or id(module) in self._bases


def clean_param_name(name: str) -> str:
    """A parameter's name as in the unwrapped model (FSDP and activation checkpointing insert their
    wrappers' names; the state dicts that Lightning's strategies save use the clean ones)."""
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
            module = self.lightning_module
            return {clean_param_name(n): p.detach() for n, p in module.named_parameters() if p.requires_grad}

        def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
            return Strategy.optimizer_state(self, optimizer)

        def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
            Strategy.save_checkpoint(self, checkpoint, filepath, storage_options)

        def load_checkpoint(self, checkpoint_path: Any, weights_only: Optional[bool] = None) -> dict[str, Any]:
            return Strategy.load_checkpoint(self, checkpoint_path, weights_only)

        def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
            import torch

            params = {clean_param_name(n): p for n, p in self.lightning_module.named_parameters()}
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


def fsdp_strategy(block_pattern: Optional[str] = None, activation_checkpointing: bool = False, **kwargs: Any) -> Any:
    """FSDP for a K-way LoRA model (the `_target_` of configs/trainer/fsdp.yaml): `LoRAWrapPolicy`
    units, `use_orig_params`, adapter-only checkpoints as on one device, and, if asked, activation
    checkpointing of the transformer blocks."""
    kwargs.setdefault("use_orig_params", True)
    kwargs.pop("state_dict_type", None)  # always one adapter-only file
    if activation_checkpointing:
        kwargs["activation_checkpointing_policy"] = BlockPolicy(block_pattern).policy()
    return _adapter_fsdp_class()(auto_wrap_policy=LoRAWrapPolicy(block_pattern).policy(), **kwargs)
