"""Output folders are never reused: the checks that run before Hydra creates or writes a run folder.

A folder *holds a run* when it has any of `RUN_MARKERS` (Hydra's `.hydra/`, checkpoints, metrics,
predictions). Before Hydra writes its `.hydra/` files (`loramcl.hydra_checks`, `on_run_start`):

- a train.py run may use such a folder only to resume that very run (`ckpt_path=auto`, `ckpt_path`
  naming the folder or a checkpoint in it, or a requeued SLURM job), and then only with the model
  values it was trained with (`model`, `mcl`, `lora`: the checkpoint must go on meaning what the
  folder's config says); the folder's previous `.hydra/*.yaml` are kept in `.hydra/previous/<n>/`;
- an eval.py run never writes into a folder that holds a training run or an earlier evaluation.

Each refusal is one `ConfigError` line naming the folder and the way to continue.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from loramcl.errors import ConfigError

RUN_MARKERS = (".hydra", "checkpoints", "metrics.json", "summary.json", "eval_metrics.json", "predictions.jsonl",
               "mlflow_run.json")
MODEL_GROUPS = ("model", "mcl", "lora")  # what a checkpoint's adapters mean; a resume must keep them
RESUMING_RUNNER = "loramcl.training.run_finetune"
CONFIG_FILE = Path(".hydra") / "config.yaml"  # a train.py run's config, as Hydra saved it
RETIRED = "retired.json"  # in a run set aside to be trained again (reproduce.py retrain_other_code)


def is_training_run(folder: Path) -> bool:
    """A train.py run folder that saved checkpoints and was not set aside (`RETIRED`)."""
    return (folder / CONFIG_FILE).is_file() and (folder / "checkpoints").is_dir() and not (folder / RETIRED).exists()


def training_runs(log_dir: Path) -> list[Path]:
    """Every training run under a log folder: logs/<task>/runs/<run> and logs/<task>/multiruns/<time>/<job>."""
    log_dir = Path(log_dir)
    found = [*log_dir.glob(f"*/runs/*/{CONFIG_FILE}"), *log_dir.glob(f"*/multiruns/*/*/{CONFIG_FILE}")]
    return sorted(p.parents[1] for p in found if is_training_run(p.parents[1]))


def run_markers(folder: Path) -> list[str]:
    """The markers of a run that `folder` holds (empty: not a run folder, or no folder)."""
    if not folder.is_dir():
        return []
    return [m for m in RUN_MARKERS if (folder / m).exists()]


def _select(cfg: Any, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key)
    except Exception:  # an interpolation only a running job resolves
        return None


def resumes_folder(cfg: DictConfig, folder: Path) -> bool:
    """Whether this train.py config continues the run in `folder` (rather than starting a new one)."""
    from loramcl.cluster import slurm_restart_count

    value = _select(cfg, "ckpt_path")
    if value is None or str(value).strip() == "":
        return slurm_restart_count() > 0  # a requeued job continues itself (loramcl.resume)
    if str(value) == "auto":
        return True
    target = Path(str(value)).expanduser().absolute()
    here = folder.absolute()
    return target == here or here in target.parents


def _differences(old: Any, new: Any, prefix: str) -> Optional[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _differences(old.get(key), new.get(key), f"{prefix}.{key}")
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = _differences(a, b, f"{prefix}[{i}]")
            if found:
                return found
        return None
    same = old == new and type(old) is type(new) or (isinstance(old, (int, float)) and isinstance(new, (int, float))
                                                    and not isinstance(old, bool) and old == new)
    return None if same else (prefix, old, new)


def check_same_model(cfg: DictConfig, folder: Path) -> None:
    """A resumed run keeps the model values its folder's config records."""
    from loramcl.schema import plain

    saved_file = folder / ".hydra" / "config.yaml"
    if not saved_file.is_file():
        return
    try:
        saved = OmegaConf.load(saved_file)
    except Exception as err:
        raise ConfigError(f"{saved_file} cannot be read ({' '.join(str(err).split())[:160]}): the run folder "
                          f"{folder} is damaged; start a new run in another folder") from None
    for group in MODEL_GROUPS:
        try:
            old = OmegaConf.to_container(saved.get(group), resolve=False) if saved.get(group) is not None else None
        except Exception:
            continue
        node = cfg.get(group)
        if node is None:
            continue
        new = OmegaConf.to_container(node, resolve=False)
        found = _differences(old, new, group)
        if found is None:
            continue
        try:  # interpolations (${paths.data_dir}/...) compare by what they resolve to
            found = _differences(plain(OmegaConf.merge(cfg, {group: old})[group]), plain(node), group)
        except Exception:
            pass
        if found:
            key, was, now = found
            raise ConfigError(f"hydra.run.dir={folder} holds a run trained with {key}={was!r}; this command has "
                              f"{key}={now!r}: resume it with the values it was trained with (its checkpoints mean "
                              f"what its .hydra/config.yaml says), or start a new run in another folder")


def check_train_folder(cfg: DictConfig, folder: Path) -> bool:
    """A train.py run may write into `folder`; returns whether it resumes the run there."""
    markers = run_markers(folder)
    if not markers:
        return False
    runner = _select(cfg, "task.runner")
    from loramcl.cluster import same_launch

    if set(markers) <= {".hydra"} and same_launch(folder):  # another rank of this launch started first
        return False
    if not resumes_folder(cfg, folder):
        raise ConfigError(f"hydra.run.dir={folder} already holds a run ({', '.join(markers)}): a new run never writes "
                          f"into it; continue that run with ckpt_path=auto, or leave hydra.run.dir out for a new folder")
    if runner is not None and runner != RESUMING_RUNNER:
        raise ConfigError(f"hydra.run.dir={folder} already holds a run ({', '.join(markers)}) and task="
                          f"{_select(cfg, 'task.name')} trains two models from scratch and does not resume: leave "
                          f"hydra.run.dir and ckpt_path out for a new run")
    if "checkpoints" not in markers and "metrics.json" in markers:
        raise ConfigError(f"hydra.run.dir={folder} holds a finished evaluation or run without checkpoints "
                          f"({', '.join(markers)}): there is nothing to resume; leave hydra.run.dir out for a new run")
    check_same_model(cfg, folder)
    return True


def keep_previous_config(folder: Path) -> Optional[Path]:
    """Copy the folder's `.hydra/*.yaml` to `.hydra/previous/<n>/` before Hydra replaces them."""
    hydra_dir = folder / ".hydra"
    files = sorted(hydra_dir.glob("*.yaml")) if hydra_dir.is_dir() else []
    if not files:
        return None
    n = 1
    while (hydra_dir / "previous" / str(n)).exists():
        n += 1
    target = hydra_dir / "previous" / str(n)
    target.mkdir(parents=True)
    for f in files:
        shutil.copy2(f, target / f.name)
    return target


def check_eval_folder(folder: Path) -> None:
    """eval.py never writes into a training run or an earlier evaluation."""
    markers = run_markers(folder)
    if markers:
        what = "a training run" if "checkpoints" in markers or "summary.json" in markers else "an earlier evaluation"
        raise ConfigError(f"hydra.run.dir={folder} already holds {what} ({', '.join(markers)}): an evaluation never "
                          f"writes into it; leave hydra.run.dir out (each evaluation gets a new folder under "
                          f"logs/eval/runs/) or name a new folder")
