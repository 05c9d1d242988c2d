"""Checks that run before any model is built, and the job's output folder; shared by training and evaluation.

`preflight(cfg)` validates the config values, checks that the data files and backbone weights exist
(every missing piece named in one error) and, when resuming, that the checkpoint matches K, rank and
scheme; it returns the DataModule (not set up) so that a run builds it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hydra.utils import instantiate
from omegaconf import DictConfig

from loramcl.config import validated_configs
from loramcl.errors import MissingResource
from loramcl.runs import require_checkpoint_meta


def preflight(cfg: DictConfig, resume: Optional[str] = None) -> Any:
    """Everything that can fail before a model is loaded, in seconds: config values, data files,
    model weights, the resume checkpoint `resume`. Returns the (unset-up) DataModule."""
    mcl, lora = validated_configs(cfg)
    problems = []
    datamodule = instantiate(cfg.data)
    if hasattr(datamodule, "check"):
        try:
            datamodule.check()
        except (FileNotFoundError, ValueError) as err:
            problems.append(str(err))
    if str(cfg.model.get("_target_", "")).endswith("from_pretrained"):
        from loramcl.backbones import check_available

        try:
            check_available(cfg.model.name_or_path, cfg.model.get("auto_pretrain"))
        except FileNotFoundError as err:
            problems.append(str(err))
    if problems:
        raise MissingResource(" | ".join(problems))
    if resume:
        require_checkpoint_meta(resume, mcl, lora)
    return datamodule


def output_dir(cfg: DictConfig) -> Optional[Path]:
    """This job's run folder (created), or None when the config was composed outside a Hydra run."""
    try:
        path = Path(cfg.paths.output_dir)
    except Exception:  # composed outside a Hydra run: no run folder
        return None
    path.mkdir(parents=True, exist_ok=True)
    return path
