"""Checks that run before any model is built, and the job's output folder; shared by training and evaluation.

Cheapest first, each failure one `ConfigError` / `MissingResource` line naming the key or file:
- `check_config(cfg)`: what the config alone decides, in milliseconds: every value against the
  schema (`loramcl.schema`: types, ranges, choices, finite floats, relations), the toy's chains
  against the backbone's vocabulary, a writable `paths.log_dir`;
- `check_libraries(cfg)`: the values Lightning, torch and transformers own, asked of them (a Trainer
  constructed without a model, the optimizer on a dummy parameter, `_target_` signatures);
- `check_targets(cfg, mcl, lora)`: `lora.target_modules` against the backbone's module tree, built on
  the meta device from its config (no weights);
- `preflight(cfg)`: both, then the data files (synthetic ones generated when missing) and backbone
  weights (every missing piece named in one error), the validation interval against the training
  split's size, and a resume checkpoint's K, rank and scheme; it returns the DataModule (not set up)
  so that a run builds it once.

`check_before_build` (config and targets, no data) is what the Hydra callback of
`loramcl.hydra_checks` runs in every train.py job before the runner and its imports start.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from loramcl.config import LoRAConfig, MCLConfig, validated_configs
from loramcl.errors import ConfigError, MissingResource

log = logging.getLogger(__name__)

REFERENCE_MODES = ("random", "all", "first")  # loramcl.data.collate.REFERENCE_MODES (kept torch-free here)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def _has(cfg: Any, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = _get(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_int(cfg: Any, key: str, low: int, nullable: bool = False, hint: str = "") -> None:
    """`key`, when the config has it, must be an integer >= `low` (or null when `nullable`)."""
    if not _has(cfg, key):
        return
    value = _get(cfg, key)
    if value is None and nullable:
        return
    if not _is_int(value) or value < low:
        allowed = f"an integer >= {low}" + (" or null" if nullable else "")
        raise ConfigError(f"{key} must be {allowed}, got {value!r}{hint}")


# --------------------------------------------------------------------------------- the config alone
def check_writable(path: Any, key: str) -> None:
    """`path` must be a folder that exists or can be created: its nearest existing ancestor is a writable folder."""
    path = Path(str(path)).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (its nearest existing folder {existing})"
        raise ConfigError(f"{key}={path} is not writable{where}: read-only; choose a writable folder with {key}=...")


def _check_chains(cfg: DictConfig) -> None:
    """The toy's Markov chains are valid, and the backbone has a token for every state."""
    from loramcl.toy.markov import MarkovMixture

    data = cfg.data
    try:
        mixture = MarkovMixture(transitions=OmegaConf.to_container(data.transitions),
                                weights=None if data.get("weights") is None else OmegaConf.to_container(data.weights),
                                init=data.get("init", "uniform") if isinstance(data.get("init", "uniform"), str)
                                else OmegaConf.to_container(data.init))
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None
    theory = _get(cfg, "task.theory") if _has(cfg, "task.theory") else "exact"
    if theory not in ("exact", "validation"):
        raise ConfigError(f"task.theory must be exact or validation, got {theory!r}")
    if theory == "exact" and mixture.num_states > 2 and int(data.seq_len) > 16:
        log.warning(f"task.theory=exact for {mixture.num_states} states at T = {data.seq_len}: the exact lines "
                    f"count about T^(S^2 - S) prefixes and can take very long; task.theory=validation measures "
                    f"them on the validation sequences instead")
    try:
        vocab = _get(cfg, "model.config.vocab_size")
    except Exception:  # an interpolation that cannot resolve here: checked when the model is built
        return
    if _is_int(vocab) and vocab < mixture.num_states:
        raise ConfigError(f"data.transitions have {mixture.num_states} states but model.config.vocab_size={vocab}: "
                          f"every state is a token (leave model.config.vocab_size to follow the chains, or set "
                          f"model.config.vocab_size={mixture.num_states})")


def check_config(cfg: DictConfig, training: bool = True) -> tuple[MCLConfig, LoRAConfig]:
    """Every value the config alone decides (no data, no weights, no torch for the common groups).
    `training=False` (an evaluation rebuilding a run from its config): the model and data values
    only, not the trainer, optimizer and log folder of the run."""
    from loramcl.schema import validate_train

    validate_train(cfg, training=training)  # every value: type, range, choices, finite, relations
    if _has(cfg, "data.transitions"):
        _check_chains(cfg)
    if training:
        log_dir = _get(cfg, "paths.log_dir")
        if log_dir is not None:
            check_writable(log_dir, "paths.log_dir")
    return validated_configs(cfg)


def check_libraries(cfg: DictConfig, trainer: bool = True) -> None:
    """The values Lightning, torch and transformers own, judged by them (no model built).
    `trainer=False`: the Trainer is not constructed (its accelerator is judged after the data and
    weights checks, which name what a paper experiment needs before "this machine has no GPU")."""
    from loramcl.schema import check_train_libraries, validate_train

    check_train_libraries(validate_train(cfg), trainer=trainer)


def train_batches(cfg: DictConfig) -> Optional[int]:
    """Training batches per epoch, when known without building anything: the toy stream, or the
    training split file's item count (None while that file does not exist yet)."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig) or not _is_int(data.get("batch_size")):
        return None
    if _is_int(data.get("num_train_batches")):
        return int(data.num_train_batches)
    if data.get("root") is None or data.get("name") is None:
        return None
    from loramcl.data.hdf5 import split_items

    splits = data.get("splits") or {}
    items = split_items(data.root, data.name, splits.get("train", "train"))
    if items is None:
        return None
    if data.get("max_train_items"):
        items = min(items, int(data.max_train_items))
    return math.ceil(items / int(data.batch_size))


def check_validation_interval(cfg: DictConfig) -> None:
    """A validation interval in steps must fit in an epoch (Lightning refuses it at the first epoch
    otherwise), unless validation counts steps across epochs (check_val_every_n_epoch=null)."""
    interval = _get(cfg, "trainer.val_check_interval")
    if not _is_int(interval) or _get(cfg, "trainer.check_val_every_n_epoch") is None:
        return
    batches = train_batches(cfg)
    if batches is not None and interval > batches:
        raise ConfigError(f"trainer.val_check_interval={interval} steps but an epoch has only {batches} training "
                          f"batches (data.batch_size={_get(cfg, 'data.batch_size')}): lower it, give a fraction of an "
                          f"epoch, or set trainer.check_val_every_n_epoch=null to count steps across epochs")


# --------------------------------------------------------------------------------- the backbone
def check_targets(cfg: DictConfig, mcl: MCLConfig, lora: LoRAConfig) -> None:
    """Inject the adapters into the backbone's module tree built on the meta device (no weights):
    targets that match nothing, or select a module that is not a linear layer, fail here. Skipped
    when the architecture is not known before loading (then checked when the model is built)."""
    from loramcl.backbones import meta_backbone

    try:
        backbone = meta_backbone(cfg.model)
    except ValueError as err:  # the backbone's own config refuses its values
        message = " ".join(str(err).split())
        where = "" if message.startswith("model.") else ("model.config: " if cfg.model.get("config") else "model: ")
        raise ConfigError(f"{where}{message}") from None
    if backbone is None:
        return
    from loramcl.model import build_model

    try:
        build_model(backbone, mcl, lora)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_before_build(cfg: DictConfig) -> tuple[MCLConfig, LoRAConfig]:
    """The checks that need neither data nor weights: config values, the validation interval when
    the training split exists, LoRA targets on the meta device."""
    mcl, lora = check_config(cfg)
    check_validation_interval(cfg)
    if cfg.get("trainer") is not None:
        check_libraries(cfg, trainer=False)
    if cfg.get("model") is not None:
        check_targets(cfg, mcl, lora)
    return mcl, lora


# --------------------------------------------------------------------------------- everything
def _instantiate_data(cfg: DictConfig) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg.data)
    except InstantiationException as err:  # e.g. a key the DataModule does not take
        cause = err.__cause__ or err
        detail = " ".join(str(cause).split())
        raise ConfigError(f"data: cannot build {cfg.data.get('_target_')}: {detail}") from None


def preflight(cfg: DictConfig, resume: Optional[str] = None, training: bool = True) -> Any:
    """Everything that can fail before a model is loaded, in seconds: config values, data files,
    model weights, the resume checkpoint `resume`. Returns the (unset-up) DataModule.
    `training=False`: a run's config rebuilt for evaluation (see `check_config`)."""
    from loramcl.cluster import is_main_process

    mcl, lora = check_config(cfg, training)
    datamodule = _instantiate_data(cfg)
    main = is_main_process()
    if not main:  # rank 0 generates what is missing; the others wait for it (srun starts all at once)
        if hasattr(datamodule, "auto_prepare"):
            datamodule.auto_prepare = None
        problems, weights_ok = _wait_for_rank_zero(lambda: _check_files(cfg, datamodule, main))
    else:
        problems, weights_ok = _check_files(cfg, datamodule, main)
    if problems:
        raise MissingResource(" | ".join(problems))
    if training:
        check_libraries(cfg)  # the Trainer constructed without a model: precision, accelerator, devices, strategy
        check_validation_interval(cfg)
    if weights_ok:
        check_targets(cfg, mcl, lora)
    if resume:
        from loramcl.runs import require_checkpoint_meta

        require_checkpoint_meta(resume, mcl, lora)
    return datamodule


def _check_files(cfg: DictConfig, datamodule: Any, main: bool) -> tuple[list[str], bool]:
    """(what is missing or bad among the data files and backbone weights, whether the weights are there)."""
    problems = []
    if hasattr(datamodule, "check"):
        try:
            datamodule.check()
        except (FileNotFoundError, ValueError) as err:
            problems.append(str(err))
    processor = cfg.data.get("processor") if isinstance(cfg.get("data"), DictConfig) else None
    if processor and str(processor) != str(cfg.model.get("name_or_path")) and _looks_like_a_path(str(processor)) \
            and not Path(str(processor)).expanduser().is_dir():
        problems.append(f"data.processor={processor} does not exist: give the folder of the model's processor / "
                        f"tokenizer (by default the model's own, model.name_or_path)")
    weights_ok = True
    if str(cfg.model.get("_target_", "")).endswith("from_pretrained"):
        from loramcl.backbones import check_available

        try:
            check_available(cfg.model.name_or_path, cfg.model.get("auto_pretrain") if main else None)
        except FileNotFoundError as err:
            problems.append(str(err))
            weights_ok = False
    return problems, weights_ok


def _looks_like_a_path(name: str) -> bool:
    """A local path rather than a Hub name (`org/model`): absolute, relative with ./ or ../, or ~."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep + os.sep in name


def missing_resources(cfg: DictConfig) -> list[str]:
    """What a training config needs that is not on this machine and will not be made on first use
    (data files, backbone weights), one line each with the command that provides it; nothing is
    generated or downloaded. Synthetic data and tiny bases (auto_prepare / auto_pretrain) count as
    present: the run builds them."""
    datamodule = _instantiate_data(cfg)
    if getattr(datamodule, "auto_prepare", None):
        datamodule = None  # generated on first use
    problems = []
    if datamodule is not None and hasattr(datamodule, "check"):
        try:
            datamodule.check()
        except (FileNotFoundError, ValueError) as err:
            problems.append(str(err))
    if str(cfg.model.get("_target_", "")).endswith("from_pretrained") and not cfg.model.get("auto_pretrain"):
        from loramcl.backbones import check_available

        try:
            check_available(cfg.model.name_or_path, None)
        except FileNotFoundError as err:
            problems.append(str(err))
    return problems


def _wait_for_rank_zero(check: Any, seconds: float = 600.0) -> tuple[list[str], bool]:
    """Repeat `check` (see `_check_files`) until it finds nothing missing, or `seconds` have passed."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        problems, weights_ok = check()
        if not problems or time.monotonic() > deadline:
            return problems, weights_ok
        time.sleep(2.0)


def output_dir(cfg: DictConfig) -> Optional[Path]:
    """This job's run folder (created), or None when the config was composed outside a Hydra run."""
    try:
        path = Path(cfg.paths.output_dir)
    except Exception:  # composed outside a Hydra run: no run folder
        return None
    path.mkdir(parents=True, exist_ok=True)
    return path
