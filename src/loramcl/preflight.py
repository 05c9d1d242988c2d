"""Checks that run before any model is built; shared by training and evaluation.

Each takes the validated settings (`loramcl.schema.TrainSettings`) or a composed config (validated
first). Cheapest first, each failure one `ConfigError` / `MissingResource` line naming the key or file:
- `check_config(cfg)`: what the config alone decides, in milliseconds: every value against the
  schema (`loramcl.schema`: types, ranges, choices, finite floats, relations), the toy's chains
  against the backbone's vocabulary, a writable `paths.log_dir`; returns the settings;
- `check_libraries(s)`: the values Lightning, torch and transformers own, asked of them (a Trainer
  constructed without a model, the optimizer on a dummy parameter, `_target_` signatures);
- `check_targets(s)`: `lora.target_modules` against the backbone's module tree, built on the meta
  device from its config (no weights);
- `preflight(s)`: all of them, then the data files (synthetic ones generated when missing) and
  backbone weights (every missing piece named in one error), the validation interval against the
  training split's size, and a resume checkpoint's K, rank and scheme; it returns the DataModule
  (not set up) so that a run builds it once. A runner calls it once per run.

`check_before_build` (config and targets, no data) is what the Hydra callback of
`loramcl.hydra_checks` runs in every train.py job before the runner and its imports start.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

from loramcl.errors import ConfigError, MissingResource
from loramcl.schema import TrainSettings, check_train_libraries, train_settings

log = logging.getLogger(__name__)

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def _check_chains(s: TrainSettings) -> None:
    """The toy's Markov chains are valid, and the backbone has a token for every state."""
    from loramcl.toy.markov import MarkovMixture

    data = s.data
    try:
        mixture = MarkovMixture(transitions=data.transitions, weights=data.weights,
                                init="uniform" if data.init is None else data.init)
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None
    theory = (s.task.theory if s.task is not None else None) or "exact"
    if theory == "exact" and mixture.num_states > 2 and (data.seq_len or 0) > 16:
        log.warning(f"task.theory=exact for {mixture.num_states} states at T = {data.seq_len}: the exact lines "
                    f"count about T^(S^2 - S) prefixes and can take very long; task.theory=validation measures "
                    f"them on the validation sequences instead")
    vocab = (s.node("model").get("config") or {}).get("vocab_size")
    if _is_int(vocab) and vocab < mixture.num_states:
        raise ConfigError(f"data.transitions have {mixture.num_states} states but model.config.vocab_size={vocab}: "
                          f"every state is a token (leave model.config.vocab_size to follow the chains, or set "
                          f"model.config.vocab_size={mixture.num_states})")


def check_config(cfg: Any, training: bool = True) -> TrainSettings:
    """Every value the config alone decides (no data, no weights, no torch for the common groups);
    returns the validated settings. `training=False` (an evaluation rebuilding a run from its
    config): the model and data values only, not the trainer, optimizer and log folder of the run."""
    s = train_settings(cfg, training)  # every value: type, range, choices, finite, relations
    if s.data is not None and s.data.transitions is not None:
        _check_chains(s)
    if s.training and s.paths is not None and s.paths.log_dir is not None:
        check_writable(s.paths.log_dir, "paths.log_dir")
    return s


def check_libraries(cfg: Any, trainer: bool = True) -> None:
    """The values Lightning, torch and transformers own, judged by them (no model built).
    `trainer=False`: the Trainer is not constructed (its accelerator is judged after the data and
    weights checks, which name what a paper experiment needs before "this machine has no GPU")."""
    check_train_libraries(train_settings(cfg), trainer=trainer)


def train_batches(s: TrainSettings) -> Optional[int]:
    """Training batches per epoch, when known without building anything: the toy stream, or the
    training split file's item count (None while that file does not exist yet)."""
    data = s.data
    if data is None or data.batch_size is None:
        return None
    if data.num_train_batches is not None:
        return data.num_train_batches
    if data.root is None or data.name is None:
        return None
    from loramcl.data.hdf5 import split_items

    items = split_items(data.root, data.name, (data.splits or {}).get("train", "train"))
    if items is None:
        return None
    if data.max_train_items:
        items = min(items, data.max_train_items)
    return math.ceil(items / data.batch_size)


def check_validation_interval(s: TrainSettings) -> None:
    """A validation interval in steps must fit in an epoch (Lightning refuses it at the first epoch
    otherwise), unless validation counts steps across epochs (check_val_every_n_epoch=null)."""
    trainer = s.trainer
    if trainer is None or not _is_int(trainer.val_check_interval) or trainer.check_val_every_n_epoch is None:
        return
    batches = train_batches(s)
    if batches is not None and trainer.val_check_interval > batches:
        raise ConfigError(f"trainer.val_check_interval={trainer.val_check_interval} steps but an epoch has only "
                          f"{batches} training batches (data.batch_size={s.data.batch_size}): lower it, give a "
                          f"fraction of an epoch, or set trainer.check_val_every_n_epoch=null to count steps "
                          f"across epochs")


# --------------------------------------------------------------------------------- the backbone
def check_targets(s: TrainSettings) -> None:
    """Inject the adapters into the backbone's module tree built on the meta device (no weights):
    targets that match nothing, or select a module that is not a linear layer, fail here. Skipped
    when the architecture is not known before loading (then checked when the model is built)."""
    from loramcl.backbones import meta_backbone

    model = s.node("model")
    try:
        backbone = meta_backbone(model)
    except ValueError as err:  # the backbone's own config refuses its values
        message = " ".join(str(err).split())
        where = "" if message.startswith("model.") else ("model.config: " if model.get("config") else "model: ")
        raise ConfigError(f"{where}{message}") from None
    if backbone is None:
        return
    from loramcl.model import build_model

    try:
        build_model(backbone, s.mcl_config(), s.lora_config())
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_before_build(cfg: Any) -> TrainSettings:
    """The checks that need neither data nor weights: config values, the validation interval when
    the training split exists, LoRA targets on the meta device. Returns the validated settings."""
    s = check_config(cfg)
    check_validation_interval(s)
    if s.trainer is not None:
        check_libraries(s, trainer=False)
    if s.model is not None:
        check_targets(s)
    return s


# --------------------------------------------------------------------------------- everything
def instantiate_data(s: TrainSettings) -> Any:
    """The DataModule of `s.data` (not set up); a key it does not take is a ConfigError."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(s.node("data"))
    except InstantiationException as err:  # e.g. a key the DataModule does not take
        cause = err.__cause__ or err
        detail = " ".join(str(cause).split())
        raise ConfigError(f"data: cannot build {s.node('data').get('_target_')}: {detail}") from None


def preflight(cfg: Any, resume: Optional[str] = None, training: bool = True, data_files: bool = True) -> Any:
    """Everything that can fail before a model is loaded, in seconds: config values, data files,
    model weights, the resume checkpoint `resume`. Returns the (unset-up) DataModule.
    `cfg`: validated settings (`loramcl.schema.TrainSettings`) or a composed config.
    `training=False`: a run's config rebuilt for evaluation (see `check_config`); `data_files=False`:
    the backbone only, not the run's data files (predict.py decodes new inputs)."""
    from loramcl.cluster import is_main_process

    s = check_config(cfg, training)
    datamodule = instantiate_data(s)
    main = is_main_process()
    if not main:  # rank 0 generates what is missing; the others wait for it (srun starts all at once)
        if hasattr(datamodule, "auto_prepare"):
            datamodule.auto_prepare = None
        problems, weights_ok = _wait_for_rank_zero(lambda: _check_files(s, datamodule, main, data_files))
    else:
        problems, weights_ok = _check_files(s, datamodule, main, data_files)
    if problems:
        raise MissingResource(" | ".join(problems))
    if s.training:
        check_libraries(s)  # the Trainer constructed without a model: precision, accelerator, devices, strategy
        check_validation_interval(s)
    if weights_ok:
        check_targets(s)
    if resume:
        from loramcl.runs import require_checkpoint_meta

        require_checkpoint_meta(resume, s.mcl_config(), s.lora_config())
    return datamodule


def _check_files(s: TrainSettings, datamodule: Any, main: bool, data_files: bool = True) -> tuple[list[str], bool]:
    """(what is missing or bad among the data files and backbone weights, whether the weights are there)."""
    problems = []
    if data_files and hasattr(datamodule, "check"):
        try:
            datamodule.check()
        except (FileNotFoundError, ValueError) as err:
            problems.append(str(err))
    model = s.node("model")
    processor = s.data.processor if s.data is not None else None
    if processor and str(processor) != str(model.get("name_or_path")) and _looks_like_a_path(str(processor)) \
            and not Path(str(processor)).expanduser().is_dir():
        problems.append(f"data.processor={processor} does not exist: give the folder of the model's processor / "
                        f"tokenizer (by default the model's own, model.name_or_path)")
    weights_ok = True
    if str(model.get("_target_", "")).endswith("from_pretrained"):
        from loramcl.backbones import check_available

        try:
            check_available(model["name_or_path"], model.get("auto_pretrain") if main else None)
        except FileNotFoundError as err:
            problems.append(str(err))
            weights_ok = False
    return problems, weights_ok


def _looks_like_a_path(name: str) -> bool:
    """A local path rather than a Hub name (`org/model`): absolute, relative with ./ or ../, or ~."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep + os.sep in name


def missing_resources(cfg: Any) -> list[str]:
    """What a training config needs that is not on this machine and will not be made on first use
    (data files, backbone weights), one line each with the command that provides it; nothing is
    generated or downloaded. Synthetic data and tiny bases (auto_prepare / auto_pretrain) count as
    present: the run builds them."""
    s = train_settings(cfg)
    datamodule = instantiate_data(s)
    if getattr(datamodule, "auto_prepare", None):
        datamodule = None  # generated on first use
    problems = []
    if datamodule is not None and hasattr(datamodule, "check"):
        try:
            datamodule.check()
        except (FileNotFoundError, ValueError) as err:
            problems.append(str(err))
    model = s.node("model")
    if str(model.get("_target_", "")).endswith("from_pretrained") and not model.get("auto_pretrain"):
        from loramcl.backbones import check_available

        try:
            check_available(model["name_or_path"], None)
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
