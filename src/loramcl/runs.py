"""Trained run folders: their config, their checkpoints, the best one, and the model they hold.

A `train.py` run folder is `<run>/.hydra/config.yaml` (the resolved training config) and
`<run>/checkpoints/<model>/*.ckpt` (adapter-only checkpoints of each model the run trained:
`K3`, `moe3`, or `mle` and `mcl` for the toy and bilingual runners). `RunFolder` answers every
question about one; `load_model` rebuilds the model of a checkpoint (backbone from the config,
adapters from the checkpoint), which evaluation, validation and the peft export all use.

A run's saved config resolves `${paths.root_dir}` from the PROJECT_ROOT environment variable (set by
train.py / eval.py / scripts/*); `RunFolder.config` falls back to this checkout's root, so that
data and tiny-base paths never resolve against the current folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf

from loramcl.checkpoints import Checkpoint, CheckpointFolder, CheckpointMeta
from loramcl.config import validated_configs
from loramcl.errors import ConfigError, MissingResource
from loramcl.model import build_model
from loramcl.run_folders import CONFIG_FILE, is_training_run

CHECKOUT = Path(__file__).resolve().parents[2]  # src/loramcl/runs.py -> the repository (configs/, data/, logs/)

log = logging.getLogger(__name__)


def project_root() -> Path:
    """PROJECT_ROOT when set (train.py sets it to its folder), else this checkout's root."""
    return Path(os.environ.get("PROJECT_ROOT") or CHECKOUT).resolve()


@dataclass(frozen=True)
class RunFolder:
    """A train.py run folder (the one holding `.hydra/config.yaml`)."""

    root: Path

    @classmethod
    def containing(cls, path: Union[str, Path]) -> "RunFolder":
        """The run folder `path` is, or lies in (a checkpoint file or a model's checkpoint folder)."""
        path = Path(path).expanduser()
        if not path.exists():
            raise MissingResource(f"{path} does not exist (give a train.py run folder or a checkpoint in it)")
        for folder in [path, *path.parents]:
            if (folder / CONFIG_FILE).is_file():
                return cls(folder)
        raise MissingResource(f"no {CONFIG_FILE} in {path} or above it: not a train.py run folder")

    def config(self) -> DictConfig:
        """The run's training config; a `paths.root_dir` that would resolve relative to the current
        folder (PROJECT_ROOT unset) is the project root instead."""
        try:
            cfg = OmegaConf.load(self.root / CONFIG_FILE)
        except Exception as err:  # broken YAML, unreadable file
            detail = " ".join(str(err).split())[:200]
            raise ConfigError(f"{self.root / CONFIG_FILE} cannot be read as the run's config ({detail}): restore it "
                              f"(its copy is in the run's MLflow params), or give train_config=<a config.yaml>") from None
        if not isinstance(cfg, DictConfig) or "mcl" not in cfg:
            raise ConfigError(f"{self.root / CONFIG_FILE} is not a train.py config (no mcl group)")
        try:
            root = OmegaConf.select(cfg, "paths.root_dir")
        except Exception:  # an interpolation that cannot resolve outside Hydra: left as it is
            return cfg
        if root is not None and not Path(str(root)).is_absolute():
            cfg.paths.root_dir = str(project_root())
        return cfg

    def model_folders(self) -> dict[str, Path]:
        """{model name: checkpoint folder} of every model that has at least one checkpoint."""
        folder = self.root / "checkpoints"
        if not folder.is_dir():
            raise MissingResource(f"{self.root} has no checkpoints/ folder: nothing was saved by this run")
        found = {sub.name: sub for sub in sorted(folder.iterdir()) if sub.is_dir() and any(sub.glob("*.ckpt"))}
        if not found:
            raise MissingResource(f"no checkpoint under {folder}")
        return found

    def best_checkpoints(self) -> dict[str, Path]:
        """{model name: its best checkpoint} (see `best_checkpoint`)."""
        return {name: best_checkpoint(folder) for name, folder in self.model_folders().items()}


def best_checkpoint(folder: Path) -> Path:
    """The best checkpoint of a model's folder (`CheckpointFolder.best`). An unreadable file (truncated
    by a kill, corrupt) is passed over for the newest readable one, with one warning naming both;
    none readable: MissingResource naming them."""
    scan = CheckpointFolder.scan(folder)
    chosen = scan.best()
    if chosen is None:
        if scan.unreadable:
            raise MissingResource(f"no readable checkpoint in {folder}: {', '.join(p.name for p in scan.unreadable)} "
                                  f"cannot be read (truncated or corrupt)")
        raise MissingResource(f"no checkpoint in {folder}")
    if scan.unreadable:
        log.warning(f"{', '.join(map(str, scan.unreadable))} cannot be read (truncated or corrupt): using {chosen}, "
                    f"the newest readable checkpoint")
    return chosen


def latest_run(path: Path) -> Path:
    """`logs/<task>/runs/latest` -> the newest run folder there with checkpoints (folders are named by
    their start time); any other path as it is."""
    if path.name != "latest" or path.exists() or not path.parent.is_dir():
        return path
    runs = sorted(p for p in path.parent.iterdir() if is_training_run(p))
    if not runs:
        raise MissingResource(f"{path.parent} holds no run with checkpoints (ckpt_path=.../latest takes the newest)")
    return runs[-1]


def find_checkpoints(path: Union[str, Path]) -> dict[str, Path]:
    """{model name: checkpoint} for a run folder (each model's best checkpoint), or one checkpoint file.
    `<folder>/latest` (when no such folder exists): the newest run in `<folder>` that has checkpoints."""
    path = latest_run(Path(path).expanduser())
    if path.is_file():
        return {path.parent.name: path}
    if not path.exists():
        raise MissingResource(f"{path} does not exist (give a train.py run folder or a checkpoint in it)")
    if not (path / "checkpoints").is_dir():
        raise MissingResource(f"{path} is neither a checkpoint file nor a train.py run folder with checkpoints/")
    return RunFolder(path).best_checkpoints()


def model_config(train_cfg: DictConfig, name: str, meta: CheckpointMeta) -> DictConfig:
    """The config of one model of a run. Toy and bilingual runs train an MLE model (K = 1, bilingual:
    rank `task.mle_rank`) beside the MCL one from the same config; the MLE is then compared at the
    MCL's K (`num_candidates`)."""
    K_run = int(train_cfg.mcl.num_hypotheses)
    if name == "mle" and K_run != 1 and meta.num_hypotheses == 1:
        override: dict = {"mcl": {"num_hypotheses": 1}, "num_candidates": train_cfg.get("num_candidates") or K_run}
        mle_rank = train_cfg.get("task", {}).get("mle_rank")
        if mle_rank:
            override["lora"] = {"r": int(mle_rank)}
        return OmegaConf.merge(train_cfg, override)
    return train_cfg


def checkpoint_config(checkpoint: Checkpoint, train_cfg: Optional[DictConfig] = None) -> DictConfig:
    """The training config of the model in `checkpoint` (its run folder's, or `train_cfg`), checked
    against the checkpoint's K, rank and scheme."""
    cfg = train_cfg if train_cfg is not None else RunFolder.containing(checkpoint.path).config()
    cfg = model_config(cfg, checkpoint.path.parent.name, checkpoint.meta)
    mcl, lora = validated_configs(cfg)
    checkpoint.meta.check(mcl, lora, checkpoint.path, own="its config")
    return cfg


def load_model(checkpoint: Checkpoint, cfg: DictConfig, backbone: Any = None) -> Any:
    """The adapter model of `checkpoint`: backbone from `cfg.model` (or `backbone`), adapters loaded."""
    from hydra.utils import instantiate

    mcl, lora = validated_configs(cfg)
    model = build_model(instantiate(cfg.model) if backbone is None else backbone, mcl, lora)
    checkpoint.meta.check_targets(model.target_names, checkpoint.path)
    model.load_adapter_state(checkpoint.adapters, checkpoint.path)
    return model


def require_checkpoint_meta(path: Union[str, Path], mcl: Any, lora: Any) -> Checkpoint:
    """A resume checkpoint: it must exist, come from loramcl and match this run's K, rank and scheme."""
    try:
        checkpoint = Checkpoint.load(path)
    except MissingResource:
        raise MissingResource(f"ckpt_path {path} does not exist") from None
    except ConfigError as err:
        raise MissingResource(f"ckpt_path {err}") from None
    checkpoint.meta.check(mcl, lora, f"ckpt_path {path}")
    return checkpoint
