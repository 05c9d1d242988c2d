"""Training runs from a composed Hydra config: extras, loggers, callbacks, fit.

`run_finetune` is the `task=finetune` runner (one model, K = mcl.num_hypotheses; its checkpoints go
to checkpoints/K{K}/, or checkpoints/moe{K}/ for the LoRA-MoE baseline); `fit_model` is the building
block of every runner, and `train_mle_and_mcl` the skeleton of the two-model runners (toy, bilingual):
an MLE baseline and an MCL model trained one after the other under one parent MLflow run. Configs,
data, weights and a resume checkpoint are checked once per fit (`loramcl.preflight`) before any
backbone is built, so a bad value fails in a second with its own message.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from loramcl.config import validated_configs
from loramcl.lit_module import MCLLitModule
from loramcl.preflight import output_dir, preflight
from loramcl.schemes import Scheme
from loramcl.utils.mlflow_store import MLflowRun, flatten

log = logging.getLogger(__name__)


# Warnings every run triggers that say nothing actionable; `extras.ignore_warnings` silences exactly
# these (message regex, category), never a whole category or library.
KNOWN_NOISY_WARNINGS = [
    # Lightning 2.6: backbones loaded by from_pretrained are in eval mode and we leave them so (frozen
    # weights; the adapters' own dropout is what regularises training), which Lightning reports at every fit
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
]
NOISY_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric")  # "GPU available: ..." chatter


def apply_extras(cfg: DictConfig) -> None:
    """Known-noisy warnings, CPU tweaks and the config tree (printed and saved in the run folder)."""
    extras = cfg.get("extras", {})
    if extras.get("ignore_warnings"):
        for message, category in KNOWN_NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for name in NOISY_INFO_LOGGERS:  # their warnings still show
            logging.getLogger(name).setLevel(logging.WARNING)
    if extras.get("flush_denormal"):
        torch.set_flush_denormal(True)
    if extras.get("num_threads"):
        torch.set_num_threads(int(extras.num_threads))
    if extras.get("print_config") or output_dir(cfg) is not None:
        from loramcl.utils.rich_config import config_tree

        tree_text = config_tree(cfg, print_it=bool(extras.get("print_config")))
        if output_dir(cfg) is not None:
            (output_dir(cfg) / "config_tree.log").write_text(tree_text)


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
    datamodule: Any = None,
) -> FitResult:
    """Seed, build data (unless `datamodule`, from a preflight, is given), backbone, module, loggers
    and trainer from `cfg`, then fit."""
    mcl_cfg, lora_cfg = validated_configs(cfg, num_hypotheses)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if datamodule is None:
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
    datamodule = preflight(cfg, resume=cfg.get("ckpt_path"))
    apply_extras(cfg)
    folder = Scheme.of_config(cfg).checkpoint_folder  # checkpoints/K{K}/, or moe{K}/ for LoRA-MoE
    result = fit_model(cfg, name=folder, ckpt_path=cfg.get("ckpt_path"), datamodule=datamodule)
    out = output_dir(cfg)
    if out is not None:
        (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    return result.metrics


def train_mle_and_mcl(cfg: DictConfig, after_fit: Callable[[str, FitResult], None]) -> Optional[MLflowRun]:
    """The two-model runners' skeleton: an MLE baseline (K = 1, rank `task.mle_rank` when set; skipped
    with `task.train_mle=false`) and the MCL model (K = mcl.num_hypotheses), trained one after the
    other as child runs of one parent MLflow run (returned, still open, or None without MLflow).
    `after_fit(name, fit)` runs after each fit ("mle", then "mcl")."""
    parent = make_mlflow_run(cfg, f"{cfg.task_name}_seed{cfg.seed}")
    models = ([("mle", 1)] if cfg.task.get("train_mle", True) else []) + [("mcl", int(cfg.mcl.num_hypotheses))]
    for name, k in models:
        run_cfg = cfg
        if name == "mle" and cfg.task.get("mle_rank"):  # the paper's MLE baselines may use their own rank
            run_cfg = OmegaConf.merge(cfg, {"lora": {"r": int(cfg.task.mle_rank)}})
        after_fit(name, fit_model(run_cfg, name, num_hypotheses=k, parent_run_id=parent.run_id if parent else None))
    return parent
