"""LoRA-MCL: K low-rank adapters on one frozen language model, trained with winner-takes-all losses."""

from loramcl.adapters import AdapterModel, MCLOutput
from loramcl.config import LoRAConfig, MCLConfig
from loramcl.layers import MultiLoRALinear, Route, inject_adapters
from loramcl.losses import mcl_loss, sequence_nll
from loramcl.model import MCLModel, build_model
from loramcl.moe import MoEModel

__all__ = [
    "AdapterModel",
    "LoRAConfig",
    "MCLConfig",
    "MCLModel",
    "MCLOutput",
    "MoEModel",
    "MultiLoRALinear",
    "Route",
    "build_model",
    "inject_adapters",
    "mcl_loss",
    "sequence_nll",
]


def __getattr__(name: str):
    if name == "MCLTrainer":  # imports transformers.Trainer (and accelerate) only when asked for
        from loramcl.hf_trainer import MCLTrainer

        return MCLTrainer
    raise AttributeError(name)
