"""Backbone builders used by the `model/` config group.

`from_config` builds a randomly initialised model from a real transformers config class (tiny test
models, the frozen random GPT-Neo of the toy experiment); `from_pretrained` loads a checkpoint from
a Hub name or a local folder through the real `AutoModelForCausalLM.from_pretrained` path (a tiny
base with `auto_pretrain` is built on first use; a folder left by an interrupted build is refused
with one line, never loaded).
`meta_backbone` builds the module tree a model config describes on the meta device (no weights, no
memory), so that the LoRA targets can be matched before anything is loaded. `block_kind` recognises
the transformer blocks of a backbone (FSDP units, activation checkpointing, the memory probe).
"""

from __future__ import annotations

import re
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


def enable_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    """Activation (gradient) checkpointing of every block, non-reentrant: it works with a frozen backbone
    (no input needs grad). transformers 5 renamed `gradient_checkpointing_enable`; either is used."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def disable_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    disable()
    return model


# LlamaDecoderLayer, Qwen2DecoderLayer (language models); Qwen2AudioEncoderLayer, CLIPEncoderLayer (encoders)
_BLOCK = re.compile(r"(Decoder|Encoder)Layer$")


def block_kind(module: torch.nn.Module) -> Optional[str]:
    """"decoder" for a language model's transformer block, "encoder" for an encoder's (audio or vision
    tower), None for any other module; read from the class name, `...DecoderLayer` / `...EncoderLayer`
    in transformers' backbones."""
    found = _BLOCK.search(type(module).__name__)
    return None if found is None else found.group(1).lower()


def transformer_blocks(model: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """(language-model blocks, encoder blocks) of `model`, in module order (see `block_kind`)."""
    kinds = [(block_kind(m), m) for m in model.modules()]
    return [m for kind, m in kinds if kind == "decoder"], [m for kind, m in kinds if kind == "encoder"]


def _finish(model: torch.nn.Module, gradient_checkpointing: bool) -> torch.nn.Module:
    return enable_checkpointing(model) if gradient_checkpointing else model


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


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers within `timeout` seconds (False offline or when HF_HUB_OFFLINE=1)."""
    import os
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        urllib.request.urlopen(urllib.request.Request("https://huggingface.co", method="HEAD"), timeout=timeout)
        return True
    except Exception:
        return False


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # what from_pretrained loads a local folder's weights from


def _tiny_base_state(local: Path) -> Optional[str]:
    """None when a tiny base (`auto_pretrain`) can be used or built at `local`, else why not (one line)."""
    from loramcl.tiny_base import incomplete_message, incomplete_reason

    if not local.exists() or (local.is_dir() and not any(local.iterdir())):
        return None  # built on first use
    reason = incomplete_reason(local) if local.is_dir() else "not a folder"
    return None if reason is None else incomplete_message(local, reason)


def check_available(name_or_path: str, auto_pretrain: Optional[dict] = None) -> None:
    """Raise FileNotFoundError (one line: what is missing, how to get it) unless the weights can load.

    A local folder must hold a config.json and weights; a Hub name must be in the local Hugging
    Face cache or the Hub must be reachable. A tiny base with `auto_pretrain` is built on first use
    instead; a folder of an interrupted build (no completion marker) is named, never used.
    """
    local = Path(name_or_path).expanduser()
    if auto_pretrain:
        problem = _tiny_base_state(local)
        if problem:
            raise FileNotFoundError(problem)
        return
    if (local / "config.json").is_file():
        if not any((local / name).is_file() for name in WEIGHT_FILES):
            raise FileNotFoundError(
                f"model folder {name_or_path} is incomplete: config.json but no weights ({', '.join(WEIGHT_FILES)}; "
                f"an interrupted save?): save it again with save_pretrained, or delete it if it is a tiny base "
                f"that the run rebuilds")
        return
    looks_local = local.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1
    if looks_local:
        raise FileNotFoundError(f"model folder {name_or_path} does not exist or has no config.json "
                                f"(set model.name_or_path to a folder written by save_pretrained)")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "config.json")
    if isinstance(cached, str) or hub_reachable():
        return
    raise FileNotFoundError(
        f"model {name_or_path} is not in the local Hugging Face cache and the Hub is unreachable: on a machine "
        f"with Hub access run `huggingface-cli download {name_or_path} --local-dir <folder>`, then pass "
        f"model.name_or_path=<folder>"
    )


def from_pretrained(name_or_path: str, dtype: Optional[str] = None, model_class: Optional[str] = None,
                    gradient_checkpointing: bool = False, auto_pretrain: Optional[dict] = None,
                    **kwargs: Any) -> torch.nn.Module:
    """Load a model from a local folder or a Hub name, with a one-line error when it is absent.

    `auto_pretrain` ({"function": dotted path, **its arguments}) builds a missing tiny base first
    (the CPU demos), once; later runs load the saved folder.
    """
    local = Path(name_or_path).expanduser()
    if auto_pretrain:
        problem = _tiny_base_state(local)
        if problem:  # a half-built folder is never loaded
            raise FileNotFoundError(problem)
        if not (local / "config.json").is_file():
            from hydra.utils import get_method

            args = {k: v for k, v in dict(auto_pretrain).items() if k != "function"}
            get_method(auto_pretrain["function"])(out_dir=str(local), **args)
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


def _known_config(name_or_path: str) -> Optional[Any]:
    """The transformers config of a local folder or of a Hub model in the local cache (never downloads)."""
    from transformers import AutoConfig

    local = Path(name_or_path).expanduser()
    try:
        if (local / "config.json").is_file():
            return AutoConfig.from_pretrained(str(local))
        return AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError):  # not cached, or a config transformers cannot read: known after loading
        return None


def meta_backbone(model_cfg: Any) -> Optional[torch.nn.Module]:
    """The backbone a `model/` config describes, built on the meta device from its config alone.

    Module names and types are those of the real model, and nothing is allocated or loaded. None
    when the architecture is not known before loading: a Hub model that is not in the local cache,
    or a tiny base still to be pre-trained whose `model_class` the config does not name.
    """
    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    target = str(model_cfg.get("_target_", ""))
    cls = model_class_for(model_cfg.get("model_class"))
    if target.endswith("from_config"):
        config_cls = getattr(transformers, model_cfg["config_class"], None)
        if config_cls is None:
            raise ValueError(f"model.config_class={model_cfg['config_class']!r} is not a transformers config class")
        config = config_cls(**(model_cfg.get("config") or {}))
    elif target.endswith("from_pretrained"):
        config = _known_config(str(model_cfg["name_or_path"]))
        if config is None and model_cfg.get("auto_pretrain") and cls is not AutoModelForCausalLM:
            config = cls.config_class()  # the default sizes: the same module names, up to the layer count
        if config is None:
            return None
    else:
        return None
    with torch.device("meta"):
        return cls.from_config(config) if cls is AutoModelForCausalLM else cls(config)


def receptive_field(config: Any) -> Optional[int]:
    """Tokens a model sees (current included) when every layer uses local attention, else None."""
    types = getattr(config, "attention_layers", None)
    window = getattr(config, "window_size", None)
    if types and window and all(t == "local" for t in types):
        return len(types) * (window - 1) + 1
    return None
