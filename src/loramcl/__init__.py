"""LoRA-MCL: K low-rank adapters on one frozen language model, trained with winner-takes-all losses.

The names below are imported on first use (`from loramcl import MCLModel` imports torch then), so
that `import loramcl.<module>` of a light module (the error types, the signal handling of every
entry point, the config schema) starts in a fraction of a second. Importing the package registers
the project's config resolvers (`loramcl.config`).
"""

import importlib
from typing import Any

from loramcl import config as _config  # noqa: F401  (registers loramcl.num_states / loramcl.run_stamp)

_EXPORTS = {
    "AdapterModel": "loramcl.adapters",
    "MCLOutput": "loramcl.adapters",
    "LoRAConfig": "loramcl.config",
    "MCLConfig": "loramcl.config",
    "MultiLoRALinear": "loramcl.layers",
    "Route": "loramcl.layers",
    "inject_adapters": "loramcl.layers",
    "mcl_loss": "loramcl.losses",
    "sequence_nll": "loramcl.losses",
    "MCLModel": "loramcl.model",
    "build_model": "loramcl.model",
    "MoEModel": "loramcl.moe",
    "MCLTrainer": "loramcl.hf_trainer",  # transformers.Trainer (and accelerate)
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'loramcl' has no attribute {name!r}")
