"""LoRA-MCL: K low-rank adapters on one frozen language model, trained with winner-takes-all losses."""

from loramcl.config import LoRAConfig, MCLConfig
from loramcl.layers import MultiLoRALinear, inject_adapters
from loramcl.losses import mcl_loss, sequence_nll, win_rates
from loramcl.model import MCLModel, MCLOutput

__all__ = [
    "LoRAConfig",
    "MCLConfig",
    "MCLModel",
    "MCLOutput",
    "MultiLoRALinear",
    "inject_adapters",
    "mcl_loss",
    "sequence_nll",
    "win_rates",
]


def __getattr__(name: str):
    if name == "MCLTrainer":  # imports transformers.Trainer (and accelerate) only when asked for
        from loramcl.hf_trainer import MCLTrainer

        return MCLTrainer
    raise AttributeError(name)
