"""Training runs from a composed Hydra config: validation, extras, loggers, callbacks, fit.

`run_finetune` is the `task=finetune` runner (one model, K = mcl.num_hypotheses; its checkpoints go
to checkpoints/K{K}/, or checkpoints/moe{K}/ for the LoRA-MoE baseline); `fit_model` is
the building block other runners (the toy experiment) call once per model. Configs are checked
before any backbone is built, so a bad value fails in a second with its own message.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from loramcl.config import ConfigError, LoRAConfig, MCLConfig
from loramcl.lit_module import MCLLitModule
from loramcl.utils.mlflow_store import MLflowRun, flatten

log = logging.getLogger(__name__)


def validated_configs(cfg: DictConfig, num_hypotheses: Optional[int] = None) -> tuple[MCLConfig, LoRAConfig]:
    """MCLConfig / LoRAConfig from `cfg.mcl` / `cfg.lora`; raises ValueError on a bad value."""
    mcl = OmegaConf.to_container(cfg.mcl, resolve=True)
    if num_hypotheses is not None:
        mcl["num_hypotheses"] = num_hypotheses
    return MCLConfig(**mcl), LoRAConfig(**OmegaConf.to_container(cfg.lora, resolve=True))


def preflight(cfg: DictConfig) -> Any:
    """Everything that can fail before a model is loaded, in seconds: config values, data files,
    model weights. All missing pieces are named in one error. Returns the (unset-up) DataModule."""
    validated_configs(cfg)
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
    if cfg.get("ckpt_path"):
        check_checkpoint(cfg.ckpt_path, *validated_configs(cfg))
    return datamodule


def check_checkpoint(path: str, mcl: MCLConfig, lora: LoRAConfig) -> None:
    """A resume checkpoint must exist, come from loramcl and match this run's K, rank and kind (MoE or MCL)."""
    if not Path(path).is_file():
        raise MissingResource(f"ckpt_path {path} does not exist")
    try:
        meta = torch.load(path, map_location="cpu", weights_only=False).get("loramcl")
    except Exception as err:  # truncated or foreign file
        raise MissingResource(f"ckpt_path {path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if meta is None:
        raise MissingResource(f"ckpt_path {path} was not written by loramcl (no adapter metadata)")
    if (meta.get("mode", "wta") == "moe") != mcl.is_moe:
        from loramcl.model import mode_mismatch

        raise ConfigError(mode_mismatch(f"ckpt_path {path} holds", meta.get("mode", "wta"), mcl.mode))
    if (meta["num_hypotheses"], meta["r"]) != (mcl.num_hypotheses, lora.r):
        raise ConfigError(f"ckpt_path {path} holds K={meta['num_hypotheses']} hypotheses of rank r={meta['r']}; "
                          f"this run has mcl.num_hypotheses={mcl.num_hypotheses}, lora.r={lora.r}")


class MissingResource(FileNotFoundError):
    """Data or weights a run needs are missing or unreadable (raised before any model is loaded)."""


def apply_extras(cfg: DictConfig) -> None:
    """Warnings, CPU tweaks and the config tree (printed and saved in the run folder)."""
    extras = cfg.get("extras", {})
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
        for name in ("transformers", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if extras.get("flush_denormal"):
        torch.set_flush_denormal(True)
    if extras.get("num_threads"):
        torch.set_num_threads(int(extras.num_threads))
    if extras.get("print_config") or output_dir(cfg) is not None:
        from loramcl.utils.rich_config import config_tree

        tree_text = config_tree(cfg, print_it=bool(extras.get("print_config")))
        if output_dir(cfg) is not None:
            (output_dir(cfg) / "config_tree.log").write_text(tree_text)


def output_dir(cfg: DictConfig) -> Optional[Path]:
    try:
        path = Path(cfg.paths.output_dir)
    except Exception:  # composed outside a Hydra run: no run folder
        return None
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class FitResult:
    module: MCLLitModule
    trainer: L.Trainer
    datamodule: Any
    mlflow_run: Optional[MLflowRun]
    metrics: dict[str, float]


def make_mlflow_run(cfg: DictConfig, run_name: str, parent_run_id: Optional[str] = None) -> Optional[MLflowRun]:
    mlcfg = cfg.get("logger", {}) and cfg.logger.get("mlflow")
    if not mlcfg or cfg.trainer.get("fast_dev_run"):
        return None
    return MLflowRun(mlcfg.tracking_uri, mlcfg.experiment_name, mlcfg.artifact_location, run_name,
                     parent_run_id=parent_run_id, tags={"task": cfg.task.name})


def build_loggers(cfg: DictConfig, name: str, mlflow_run: Optional[MLflowRun]) -> list:
    loggers = []
    for key, conf in (cfg.get("logger") or {}).items():
        if key == "mlflow":
            if mlflow_run is not None:
                loggers.append(instantiate(conf, run_id=mlflow_run.run_id, run_name=name))
        elif "_target_" in conf:
            extra = {"version": name} if key == "tensorboard" else {}
            loggers.append(instantiate(conf, **extra))
    return loggers


def build_callbacks(cfg: DictConfig, name: Optional[str] = None) -> list:
    callbacks = []
    for key, conf in (cfg.get("callbacks") or {}).items():
        extra = {}
        if key == "model_checkpoint" and name:
            extra["dirpath"] = str(Path(conf.dirpath) / name)
        callbacks.append(instantiate(conf, **extra))
    return callbacks


def fit_model(
    cfg: DictConfig,
    name: str,
    num_hypotheses: Optional[int] = None,
    parent_run_id: Optional[str] = None,
    ckpt_path: Optional[str] = None,
) -> FitResult:
    """Seed, build data, backbone, module, loggers and trainer from `cfg`, then fit."""
    mcl_cfg, lora_cfg = validated_configs(cfg, num_hypotheses)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = preflight(cfg)
    backbone = instantiate(cfg.model)
    module = MCLLitModule(backbone, mcl_cfg, lora_cfg, instantiate(cfg.optim.optimizer),
                          instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None)
    trainable, total = module.model.parameter_counts()
    log.info(f"[{name}] K={mcl_cfg.num_hypotheses} mode={mcl_cfg.mode}: {len(module.model.target_names)} "
             f"adapted layers, {trainable:,} trainable / {total:,} parameters")
    mlflow_run = make_mlflow_run(cfg, name, parent_run_id)
    if mlflow_run is not None:
        params = flatten(cfg)
        params.update({f"mcl.{k}": str(v) for k, v in mcl_cfg.to_dict().items()})
        params["trainable_parameters"] = str(trainable)
        mlflow_run.log_params(params)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=build_loggers(cfg, name, mlflow_run) or False,
                                     callbacks=build_callbacks(cfg, name))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    return FitResult(module, trainer, datamodule, mlflow_run, metrics)


def run_finetune(cfg: DictConfig) -> dict[str, float]:
    """`task=finetune`: train one model and write metrics.json to the run folder."""
    preflight(cfg)
    apply_extras(cfg)
    mcl_cfg, _ = validated_configs(cfg)
    # checkpoints/K{K}/ for LoRA-MCL and MLE, checkpoints/moe{K}/ for the LoRA-MoE baseline
    name = f"moe{mcl_cfg.num_hypotheses}" if mcl_cfg.is_moe else f"K{mcl_cfg.num_hypotheses}"
    result = fit_model(cfg, name=name, ckpt_path=cfg.get("ckpt_path"))
    out = output_dir(cfg)
    if out is not None:
        (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    return result.metrics
