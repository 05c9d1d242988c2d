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

from loramcl.callbacks import AtomicCheckpointIO, GracefulStop, NonFiniteGuard
from loramcl.checkpoints import Checkpoint
from loramcl.cluster import cluster_plugins, is_main_process, slurm_restart_count
from loramcl.errors import ConfigError, RunStopped
from loramcl.identity import CODE_VERSION_TAG, code_version, write_identity
from loramcl.lit_module import MCLLitModule
from loramcl.preflight import instantiate_data, preflight
from loramcl.resume import finished, resolve_ckpt_path
from loramcl.schema import TrainSettings, train_settings
from loramcl.schemes import Scheme
from loramcl.utils.atomic import write_text_atomic
from loramcl.utils.mlflow_store import RUN_DIR_TAG, MLflowRun, close_abandoned_runs, flatten, get_experiment_id

log = logging.getLogger(__name__)


# Warnings every run triggers that say nothing actionable; `extras.ignore_warnings` silences exactly
# these (message regex, category), never a whole category or library.
KNOWN_NOISY_WARNINGS = [
    # Lightning 2.6: backbones loaded by from_pretrained are in eval mode and we leave them so (frozen
    # weights; the adapters' own dropout is what regularises training), which Lightning reports at every fit
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
    # our samplers skip what a mid-epoch checkpoint already consumed (loramcl.data.sampling)
    (r"You're resuming from a checkpoint that ended before the epoch ended", UserWarning),
]
NOISY_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric")  # "GPU available: ..." chatter


def apply_extras(s: TrainSettings) -> None:
    """Known-noisy warnings, CPU tweaks and the config tree (printed and saved in the run folder)."""
    extras = s.extras
    if extras.ignore_warnings:
        for message, category in KNOWN_NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for name in NOISY_INFO_LOGGERS:  # their warnings still show
            logging.getLogger(name).setLevel(logging.WARNING)
    if extras.flush_denormal:
        torch.set_flush_denormal(True)
    if extras.num_threads:
        torch.set_num_threads(extras.num_threads)
    out = s.output_dir
    if is_main_process() and (extras.print_config or out is not None):
        from loramcl.utils.rich_config import config_tree

        tree_text = config_tree(s.raw, print_it=extras.print_config)
        if out is not None:
            (out / "config_tree.log").write_text(tree_text)


@dataclass
class FitResult:
    module: MCLLitModule
    trainer: L.Trainer
    datamodule: Any
    mlflow_run: Optional[MLflowRun]
    metrics: dict[str, float]


def make_mlflow_run(s: TrainSettings, run_name: str, parent_run_id: Optional[str] = None,
                    resume: Optional[Checkpoint] = None) -> Optional[MLflowRun]:
    """A new MLflow run, or, when resuming a checkpoint whose run is in this store, that run again
    (RUNNING, tagged with the resume). When resuming (any `ckpt_path`), runs of this run folder or
    of the checkpoint's that are still RUNNING (jobs killed with SIGKILL) are closed as KILLED."""
    mlcfg = s.loggers.get("mlflow")
    if mlcfg is None or (s.trainer is not None and s.trainer.fast_dev_run):
        return None
    previous = resume.mlflow_run_id if resume is not None else None
    run = None
    if previous:
        get_experiment_id(mlcfg.tracking_uri, mlcfg.experiment_name, mlcfg.artifact_location)  # the store exists
        run = MLflowRun.reopen(mlcfg.tracking_uri, previous)
        if run is not None:
            count = int(run.client.get_run(run.run_id).data.tags.get("loramcl.resumes", 0)) + 1
            run.set_tag("loramcl.resumes", count)
            run.set_tag(f"loramcl.resume{count}", f"{resume.path} (step {resume.raw.get('global_step')})")
            log.info(f"continuing MLflow run {run.run_id} of {resume.path}")
    out = s.output_dir
    if run is not None and out is not None:
        run.set_tag(RUN_DIR_TAG, str(out.resolve()))
    if run is not None:
        run.set_tag(CODE_VERSION_TAG, code_version())  # (a resume by other code: the newest one)
    if run is None:
        tags = {"task": s.task.name, CODE_VERSION_TAG: code_version()}
        if out is not None:
            tags[RUN_DIR_TAG] = str(out.resolve())
        if previous:
            tags["loramcl.resumed_from_run"] = previous  # the checkpoint's run is in another store
        run = MLflowRun(mlcfg.tracking_uri, mlcfg.experiment_name, mlcfg.artifact_location, run_name,
                        parent_run_id=parent_run_id, tags=tags)
    if s.top.ckpt_path:
        folders = ([str(out.resolve())] if out is not None else []) + (
            [str(resume.path.resolve().parents[2])] if resume is not None else [])  # <run>/checkpoints/K3/x.ckpt
        for run_id in close_abandoned_runs(run.tracking_uri, run.experiment_id, folders, keep=run.run_id):
            log.info(f"MLflow run {run_id} of a killed job in {', '.join(folders)} closed as KILLED")
    return run


def resume_command(s: TrainSettings) -> str:
    """The command line that resumes this run (for stop messages): its own overrides, with
    `ckpt_path=auto` kept as is (a fixed run folder continues itself), else `ckpt_path=<run folder>`."""
    import shlex

    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides
        given = [o for o in overrides.hydra if not o.startswith("hydra.mode=")] + list(overrides.task)
    except ValueError:  # not under Hydra
        given = []
    out = s.output_dir
    auto = str(s.top.ckpt_path) == "auto"
    given = [o for o in given if not o.startswith("ckpt_path=")]
    target = "ckpt_path=auto" if auto else (f"ckpt_path={out}" if out else "ckpt_path=<checkpoint>")
    return " ".join(["python train.py", *map(shlex.quote, given), target])


def build_loggers(s: TrainSettings, name: str, mlflow_run: Optional[MLflowRun]) -> list:
    """The configured loggers; MLflow's logs to `mlflow_run`. On ranks > 0 of a multi-process run,
    which never touch the MLflow store (rank 0 logs the reduced values), Lightning's DummyLogger
    holds its place."""
    from lightning.pytorch.loggers.logger import DummyLogger

    loggers = []
    for key, conf in (s.node("logger")).items():
        if not isinstance(conf, dict):
            continue
        if key == "mlflow":
            if mlflow_run is not None:
                loggers.append(instantiate(conf, run_id=mlflow_run.run_id, run_name=name))
            elif not is_main_process() and not s.trainer.fast_dev_run:
                loggers.append(DummyLogger())
        elif "_target_" in conf:
            extra = {"version": name} if key == "tensorboard" else {}
            loggers.append(instantiate(conf, **extra))
    return loggers


def build_callbacks(s: TrainSettings, name: Optional[str] = None, has_logger: bool = True) -> list:
    callbacks = []
    for key, conf in (s.node("callbacks")).items():
        if not isinstance(conf, dict):
            continue
        if not has_logger and str(conf.get("_target_", "")).endswith("LearningRateMonitor"):
            log.info(f"callbacks.{key} skipped: no logger to log the learning rate to (logger=none)")
            continue
        extra = {}
        if key == "model_checkpoint" and name and conf.get("dirpath"):
            extra["dirpath"] = str(Path(conf["dirpath"]) / name)
        callbacks.append(instantiate(conf, **extra))
    return callbacks


def trainer_plugins(s: TrainSettings) -> list:
    """The configured Trainer plugins, plus atomic checkpoint writes and, under SLURM, a cluster
    SLURM environment without Lightning's requeue handler (`loramcl.cluster.cluster_plugins`)."""
    from lightning.fabric.plugins import CheckpointIO
    from lightning.fabric.plugins.environments import ClusterEnvironment

    plugins = [instantiate(p) if isinstance(p, dict) else p for p in s.node("trainer").get("plugins") or []]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    if not any(isinstance(p, ClusterEnvironment) for p in plugins):
        plugins.extend(cluster_plugins())
    return plugins


def fit_model(
    s: TrainSettings,
    name: str,
    num_hypotheses: Optional[int] = None,
    parent_run_id: Optional[str] = None,
    ckpt_path: Optional[Path] = None,
    datamodule: Any = None,
    validate_only: bool = False,
    resumable: bool = True,
) -> FitResult:
    """Seed, build backbone, module, loggers and trainer from the validated settings `s`, then fit
    `datamodule` (resuming `ckpt_path` if given). Without `datamodule`, the preflight checks run
    first and give it (a runner runs them once per run and passes its DataModule).
    `validate_only`: validate the checkpoint `ckpt_path` instead (a finished run's metrics).
    `resumable=False`: a runner that trains from scratch (a stop signal does not requeue it).

    Every fit has the non-finite guard, SIGTERM / SIGINT handling and atomic checkpoint writes
    (`loramcl.callbacks`); a stopped fit raises `RunStopped` after closing its MLflow run (FAILED
    for a non-finite value, KILLED for a signal)."""
    mcl_cfg, lora_cfg = s.mcl_config(num_hypotheses), s.lora_config()
    L.seed_everything(s.top.seed, workers=True, verbose=False)
    if datamodule is None:
        datamodule = preflight(s)
    backbone = instantiate(s.node("model"))
    optim = s.node("optim")
    module = MCLLitModule(backbone, mcl_cfg, lora_cfg, instantiate(optim["optimizer"]),
                          instantiate(optim["scheduler"]) if optim.get("scheduler") else None)
    trainable, total = module.model.parameter_counts()
    log.info(f"[{name}] K={mcl_cfg.num_hypotheses} mode={mcl_cfg.mode}: {len(module.model.target_names)} "
             f"adapted layers, {trainable:,} trainable / {total:,} parameters")
    resume = Checkpoint.load(ckpt_path) if ckpt_path else None
    # MLflow and run files: rank 0 only (other ranks are started by Lightning, srun or torchrun)
    mlflow_run = make_mlflow_run(s, name, parent_run_id, resume=resume) if is_main_process() else None
    if mlflow_run is not None:
        params = flatten(s.raw)
        params.update({f"mcl.{k}": str(v) for k, v in mcl_cfg.to_dict().items()})
        params["trainable_parameters"] = str(trainable)
        mlflow_run.log_params(params)
    loggers = build_loggers(s, name, mlflow_run)
    callbacks = [NonFiniteGuard(), GracefulStop(resume_command(s) if resumable else "", requeue=resumable),
                 *build_callbacks(s, name, bool(loggers))]
    # (a partial: Hydra would try to merge the logger and plugin objects into the config)
    trainer_node = {k: v for k, v in s.node("trainer").items() if k != "plugins"}
    trainer: L.Trainer = instantiate(trainer_node, _partial_=True)(logger=loggers or False, callbacks=callbacks,
                                                                   plugins=trainer_plugins(s))
    if s.output_dir is not None and is_main_process() and not validate_only:
        write_identity(s.output_dir, s.raw, trainer.world_size)  # its key, process count, code version
    try:
        if validate_only:
            trainer.validate(module, datamodule=datamodule, ckpt_path=str(ckpt_path), verbose=False)
        else:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except RunStopped as err:
        if mlflow_run is not None:
            mlflow_run.finish(err.mlflow_status)
        raise
    except (KeyboardInterrupt, SystemExit):  # a second Ctrl+C: Lightning exits at once, without checkpoint
        if mlflow_run is not None:
            mlflow_run.finish("KILLED")
        raise
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    return FitResult(module, trainer, datamodule, mlflow_run, metrics)


def run_finetune(cfg: Any) -> dict[str, float]:
    """`task=finetune`: train one model and write metrics.json to the run folder. `ckpt_path` (a
    checkpoint, a run folder or `auto`, see `loramcl.resume`) resumes; a checkpoint that already
    reached the end of training is reported and nothing is trained. `cfg`: the validated settings
    (train.py gives them) or a composed config."""
    s = train_settings(cfg)
    folder = Scheme.of_config(s).checkpoint_folder  # checkpoints/K{K}/, or moe{K}/ for LoRA-MoE
    ckpt_path = resolve_ckpt_path(s.top.ckpt_path, folder, s.output_dir)
    datamodule = preflight(s, resume=ckpt_path)
    out = s.output_dir
    validate_only = False
    if ckpt_path is not None:
        done = finished(Checkpoint.load(ckpt_path), s.trainer.max_steps, s.trainer.max_epochs)
        if done and out is not None and out.resolve() in Path(ckpt_path).resolve().parents \
                and not (out / "metrics.json").is_file():
            # this run folder's own training ended (killed after its last save, or signalled in its last
            # step) before its metrics were written: without them it would count as unfinished for ever
            log.warning(f"nothing to train: {ckpt_path} is finished ({done}); this run has no metrics.json yet: "
                        f"validating the checkpoint once to write it")
            validate_only = True
        elif done:
            log.warning(f"nothing to train: {ckpt_path} is finished ({done}); raise trainer.max_steps / "
                        f"trainer.max_epochs to train further")
            return {}
    apply_extras(s)
    result = fit_model(s, name=folder, ckpt_path=ckpt_path, datamodule=datamodule, validate_only=validate_only)
    if out is not None and is_main_process():
        write_text_atomic(out / "metrics.json", json.dumps(result.metrics, indent=2))
    return result.metrics


def train_mle_and_mcl(s: TrainSettings, after_fit: Callable[[str, FitResult], None],
                      datamodule: Any = None) -> Optional[MLflowRun]:
    """The two-model runners' skeleton: an MLE baseline (K = 1, rank `task.mle_rank` when set; skipped
    with `task.train_mle=false`) and the MCL model (K = mcl.num_hypotheses), trained one after the
    other as child runs of one parent MLflow run (returned, still open, or None without MLflow).
    `datamodule` (from the runner's preflight) feeds the first fit, a new one built from the same
    settings the second. `after_fit(name, fit)` runs after each fit ("mle", then "mcl")."""
    if s.top.ckpt_path:
        raise ConfigError(f"task={s.task.name} trains two models from scratch and does not resume: drop ckpt_path "
                          f"(resuming is for task=finetune runs)")
    if datamodule is None:
        datamodule = preflight(s)
    if slurm_restart_count() > 0:
        log.warning(f"SLURM restarted this job (restart {slurm_restart_count()}); task={s.task.name} does not resume: "
                    f"both models are trained again from scratch")
    parent = make_mlflow_run(s, f"{s.top.task_name}_seed{s.top.seed}")
    models = ([("mle", 1)] if s.task.train_mle is not False else []) + [("mcl", s.mcl.num_hypotheses)]
    try:
        for name, k in models:
            run_settings = s
            if name == "mle" and s.task.mle_rank:  # the paper's MLE baselines may use their own rank
                run_settings = s.replace(lora={"r": s.task.mle_rank})
            data = datamodule if datamodule is not None else instantiate_data(s)
            datamodule = None  # each fit gets a DataModule of its own
            after_fit(name, fit_model(run_settings, name, num_hypotheses=k, datamodule=data,
                                      parent_run_id=parent.run_id if parent else None, resumable=False))
    except RunStopped as err:
        if parent is not None:
            parent.finish(err.mlflow_status)
        raise
    return parent
