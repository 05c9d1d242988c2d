"""Values that belong to a library, checked by asking that library, cheaply, before any model is built.

- `check_signature`: the keys of a `_target_` node must be arguments of the object it builds
  (Hydra would otherwise fail deep inside the run with a TypeError);
- `probe_trainer`: the Lightning Trainer is constructed from `trainer` (milliseconds: no model, no
  process started), so precision, accelerator, devices and strategy are judged by Lightning itself;
- `probe_optimizer`: the optimizer (and scheduler) are built on one dummy parameter, so torch judges
  weight decay, betas and eps;
- `probe_generation`: transformers' GenerationConfig and repetition-penalty processor judge the
  generation values.

Each library complaint becomes one `ConfigError` line naming the key it is about.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
from typing import Any, Iterable, Optional

from loramcl.errors import ConfigError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _locate(target: str, key: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception as err:  # ImportError, AttributeError: Hydra wraps them
        detail = " ".join(str(err).split())[:200]
        raise ConfigError(f"{key}._target_={target!r} cannot be imported ({detail})") from None


def accepted_arguments(obj: Any) -> tuple[set[str], bool]:
    """(named arguments of `obj`'s constructor or call, whether it takes any keyword); for a class
    whose __init__ passes **kwargs on to its base classes, their arguments count too."""
    names: set[str] = set()
    # the base classes count only for our own classes, whose **kwargs go to their base (a library class's
    # **kwargs may go elsewhere: Lightning's DDPStrategy passes them to torch's DistributedDataParallel)
    ours = inspect.isclass(obj) and obj.__module__.split(".")[0] == "loramcl"
    chain = [c for c in inspect.getmro(obj) if c is not object] if ours else [obj]
    for item in chain:
        try:
            signature = inspect.signature(item.__init__ if inspect.isclass(item) else item)
        except (TypeError, ValueError):
            return names, True
        params = list(signature.parameters.values())
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names, False
        if not ours:
            return names, True
    return names, True


def check_signature(node: dict, key: str, skip: Iterable[str] = ()) -> None:
    """Every key of the `_target_` node `node` (at `key`) is an argument of its target."""
    target = node.get("_target_")
    if not isinstance(target, str):
        return
    names, open_ended = accepted_arguments(_locate(target, key))
    if open_ended:
        return
    unknown = sorted(k for k in node if k not in HYDRA_KEYS and k not in names and k not in set(skip))
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{key} has no key {unknown[0]!r}{hint}: {target} takes "
                          f"{', '.join(sorted(n for n in names if n not in ('self', 'args', 'kwargs')))}")


@contextlib.contextmanager
def quiet() -> Any:
    """Lightning prints tips and device lines when a Trainer is constructed: not for a probe."""
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric",
                                              "lightning.pytorch.utilities.rank_zero")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import warnings

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _blame(message: str, values: dict[str, Any], keys: tuple[str, ...]) -> str:
    """The trainer key a Lightning message is about (the first one it mentions), else `trainer`."""
    lowered = message.lower()
    words = {"precision": ("precision", "amp"), "strategy": ("strategy", "fsdp", "ddp", "deepspeed"),
             "devices": ("devices", "device"), "accelerator": ("accelerator", "gpu", "cuda", "tpu", "mps"),
             "num_nodes": ("num_nodes",)}
    for key in keys:
        if any(w in lowered for w in words.get(key, (key,))) and key in values:
            value = values[key]
            shown = value.get("_target_", value) if isinstance(value, dict) else value
            return f"trainer.{key}={shown}"
    return "trainer"


def probe_trainer(trainer: dict) -> None:
    """Construct the Lightning Trainer that `trainer` describes (no model, no process started)."""
    if not isinstance(trainer, dict) or "_target_" not in trainer:
        return
    from hydra.utils import instantiate

    values = {k: v for k, v in trainer.items() if k not in ("default_root_dir", "plugins")}
    try:
        with quiet():
            trainer = instantiate(values, _partial_=True)(logger=False, enable_checkpointing=False, callbacks=[])
        if "FSDP" in type(trainer.strategy).__name__ and type(trainer.accelerator).__name__ == "CPUAccelerator":
            raise ValueError("FSDP shards over GPUs (torch's FSDP has no CPU backend): on a CPU use trainer=ddp_cpu")
    except Exception as err:  # Lightning raises ValueError, TypeError, MisconfigurationException, ImportError
        cause = err.__cause__ if type(err).__name__ == "InstantiationException" and err.__cause__ else err
        message = " ".join(str(cause).split())
        message = re.sub(r"Error (in call to target|instantiating) '[^']*':\s*\w+\((.*)\)$", r"\2", message)
        where = _blame(message, values, ("strategy", "precision", "accelerator", "devices", "num_nodes"))
        hint = " (this machine has no GPU: add trainer=cpu)" if "gpu" in message.lower() or "cuda" in message.lower() else ""
        raise ConfigError(f"{where}: Lightning refuses it: {message[:300]}{hint}") from None


def probe_optimizer(optim: dict) -> None:
    """Build the optimizer (and scheduler) on one dummy parameter."""
    if not isinstance(optim, dict) or not isinstance(optim.get("optimizer"), dict):
        return
    import torch
    from hydra.utils import instantiate

    parameter = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer = instantiate(optim["optimizer"])
        optimizer = optimizer([parameter]) if callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer) else optimizer
    except Exception as err:
        cause = err.__cause__ or err
        message = " ".join(str(cause).split())
        match = re.search(r"Invalid (\w+?)(?: parameter)?(?: at index \d)?(?: value)?:", message)
        key = f"optim.optimizer.{match.group(1).replace('learning_rate', 'lr')}" if match else "optim.optimizer"
        raise ConfigError(f"{key}: {optim['optimizer'].get('_target_')} refuses it: {message[:240]}") from None
    scheduler = optim.get("scheduler")
    if isinstance(scheduler, dict) and scheduler.get("_target_"):
        try:
            instantiate(scheduler)(optimizer, total_steps=100)
        except Exception as err:
            cause = err.__cause__ or err
            raise ConfigError(f"optim.scheduler: {scheduler.get('_target_')} refuses it: "
                              f"{' '.join(str(cause).split())[:240]}") from None


def probe_generation(generation: Optional[dict], key: str = "generation") -> None:
    """transformers' own checks of the generation values."""
    if not generation:
        return
    from transformers import GenerationConfig
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    values = {k: v for k, v in generation.items() if v is not None}
    try:
        with quiet():
            GenerationConfig(**values)
            if "repetition_penalty" in values:
                RepetitionPenaltyLogitsProcessor(float(values["repetition_penalty"]))
    except (ValueError, TypeError) as err:
        message = " ".join(str(err).split())
        named = next((k for k in values if k in message), None)
        where = f"{key}.{named}={values[named]!r}" if named else key
        raise ConfigError(f"{where}: transformers refuses it: {message[:240]}") from None


def check_model_config(model: Optional[dict]) -> None:
    """`model.config` of a model built from a transformers config class (the toy): every key must be
    one the class knows (transformers keeps unknown keys silently, so a typo would change nothing)."""
    if not isinstance(model, dict) or not isinstance(model.get("config"), dict) or not model.get("config_class"):
        return
    import transformers

    cls = getattr(transformers, str(model["config_class"]), None)
    if cls is None:
        raise ConfigError(f"model.config_class={model['config_class']!r} is not a transformers config class")
    with quiet():
        defaults = cls()
    known = set(inspect.signature(cls.__init__).parameters) | set(vars(defaults)) | set(getattr(cls, "attribute_map", {}))
    for key in model["config"]:
        if key not in known:
            import difflib

            near = difflib.get_close_matches(key, sorted(k for k in known if not k.startswith("_")), n=1)
            raise ConfigError(f"model.config has no key {key!r}{f' (did you mean {near[0]}?)' if near else ''}: "
                              f"{cls.__name__} does not know it, and transformers would ignore it")
    try:
        with quiet():
            cls(**model["config"])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model.config: {cls.__name__} refuses it: {' '.join(str(err).split())[:240]}") from None
