"""Backbone builders used by the `model/` config group.

`from_config` builds a randomly initialised model from a real transformers config class (tiny test
models, the frozen random GPT-Neo of the toy experiment); `from_pretrained` loads a checkpoint from
a Hub name or a local folder through the real `AutoModelForCausalLM.from_pretrained` path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(dtype: Optional[str]) -> Optional[torch.dtype]:
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def model_class_for(name: Optional[str]):
    """A transformers model class by name (e.g. "Qwen2AudioForConditionalGeneration"), or the
    AutoModelForCausalLM factory when None."""
    if name is None:
        return AutoModelForCausalLM
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"model.model_class={name!r} is not a transformers model class")
    return cls


def _finish(model: torch.nn.Module, gradient_checkpointing: bool) -> torch.nn.Module:
    if gradient_checkpointing:
        # non-reentrant checkpointing works with a frozen backbone (no input needs grad)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def from_config(config_class: str, config: dict[str, Any], seed: int = 0, dtype: Optional[str] = None,
                model_class: Optional[str] = None, gradient_checkpointing: bool = False) -> torch.nn.Module:
    """A randomly initialised causal LM from `transformers.<config_class>(**config)`, seeded.

    The seed is local (the global RNG state is restored), so the frozen base is the same whatever
    was drawn before, e.g. for the MLE and the MCL model of one toy run.
    """
    cls = getattr(transformers, config_class, None)
    if cls is None:
        raise ValueError(f"model.config_class={config_class!r} is not a transformers config class")
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    cfg = cls(**config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cls = model_class_for(model_class)
        model = cls.from_config(cfg) if cls is AutoModelForCausalLM else cls(cfg)
    if dtype is not None:
        model = model.to(resolve_dtype(dtype))
    return _finish(model, gradient_checkpointing)


def from_pretrained(name_or_path: str, dtype: Optional[str] = None, model_class: Optional[str] = None,
                    gradient_checkpointing: bool = False, **kwargs: Any) -> torch.nn.Module:
    """Load a model from a local folder or a Hub name, with a one-line error when it is absent."""
    local = Path(name_or_path).expanduser()
    if not local.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")
    try:
        model = model_class_for(model_class).from_pretrained(str(local) if local.exists() else name_or_path,
                                                             dtype=resolve_dtype(dtype), **kwargs)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load {name_or_path}: not a local folder and not downloadable here "
            f"(download it on a machine with Hub access and pass its folder as model.name_or_path): {err}"
        ) from None
    return _finish(model, gradient_checkpointing)


def receptive_field(config: Any) -> Optional[int]:
    """Tokens a model sees (current included) when every layer uses local attention, else None."""
    types = getattr(config, "attention_layers", None)
    window = getattr(config, "window_size", None)
    if types and window and all(t == "local" for t in types):
        return len(types) * (window - 1) + 1
    return None
