"""What an evaluation leaves behind: predictions.jsonl and metrics.json in its run folder, and one
MLflow run (params = the evaluation's info, its config and the trained run's config; metrics; the
two files as artifacts) tagged `loramcl.kind = eval`, which `collect` reads. `mlflow_run.json` in the
run folder names that MLflow run (store, experiment, run id), so that later analyses of the folder
(scripts/analyse_hypotheses.py) add their results to the same run.

Each file is written beside its final name and renamed into place when complete (metrics.json
last), so an interrupted evaluation leaves no half-written file. The MLflow run is opened before
decoding (`evaluation_run`): an evaluation stopped by Ctrl+C / SIGTERM is closed as KILLED, one
that failed as FAILED (`collect` and scripts/reproduce.py only read FINISHED runs)."""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from loramcl.identity import evaluation_tags
from loramcl.interrupts import note
from loramcl.utils.mlflow_store import MLflowRun, flatten

log = logging.getLogger(__name__)


def write_whole(path: Path, write: Callable[[IO[str]], None]) -> Path:
    """`write(handle)` into `.<name>.tmp-<pid>` beside `path`, then rename it to `path`: the file
    appears only when complete (the temporary one is removed on any error or interruption)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_outputs(out: Path, records: list[dict], metrics: dict[str, float], info: dict) -> list[Path]:
    def jsonl(handle: IO[str]) -> None:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    predictions = write_whole(out / "predictions.jsonl", jsonl)
    summary = write_whole(out / "metrics.json", lambda handle: handle.write(
        json.dumps({**info, "metrics": metrics}, indent=2, ensure_ascii=False)))
    log.info(f"wrote {predictions} and {summary}")
    return [predictions, summary]


@contextmanager
def evaluation_run(ml: Any, train_cfg: DictConfig, scheme: str, decoding: str,
                   enabled: bool = True, values: Optional[dict] = None) -> Iterator[Optional[MLflowRun]]:
    """The evaluation's MLflow run (None without MLflow, or when not `enabled`: ranks > 0), opened
    before decoding: one that does not reach `log_to_mlflow` is closed as KILLED on Ctrl+C /
    SIGTERM (a KeyboardInterrupt), FAILED on an error, never left RUNNING. `ml`: eval.py's validated
    `mlflow` group (`loramcl.schema.evaluation.MLflowSchema`); `values`: eval.py's resolved config,
    whose identity (`loramcl.identity.evaluation_tags`: settings key, metrics and code version) tags the run."""
    if not enabled or ml is None or not ml.enabled:
        yield None
        return
    experiment = ml.experiment or f"eval_{train_cfg.data.get('name', 'data')}"
    tags = {str(k): str(v) for k, v in (ml.tags or {}).items()}  # e.g. scripts/reproduce.py's keys
    tags.update(evaluation_tags(values or {}))
    run = MLflowRun(ml.tracking_uri, experiment, ml.artifact_location, f"{scheme} / {decoding}",
                    tags={**tags, "loramcl.kind": "eval", "task": "eval"})
    run.experiment_name = experiment
    try:
        yield run
    except BaseException as err:
        if run.client.get_run(run.run_id).info.status == "RUNNING":
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            run.finish(status)
            note(f"its MLflow run {run.run_id} was closed as {status}")
        raise


def log_to_mlflow(run: Optional[MLflowRun], config: dict, train_cfg: DictConfig, metrics: dict[str, float],
                  info: dict, files: list[Path], out: Path | None = None) -> None:
    """Params, metrics and files into `run` (from `evaluation_run`), which is then FINISHED; `config`:
    the evaluation's resolved values."""
    if run is None:
        return
    params = {f"eval.{k}": v for k, v in info.items() if k != "notes"}
    params.update(flatten(config, "cfg."))
    params.update(flatten(resolvable_config(train_cfg), "train."))
    run.log_params(params)
    run.log_metrics(metrics)
    for path in files:
        run.log_artifact(path)
    run.finish()
    log.info(f"logged to MLflow experiment {run.experiment_name!r} (run {run.run_id})")
    if out is not None:
        record = {"tracking_uri": str(run.tracking_uri), "experiment": run.experiment_name, "run_id": run.run_id}
        write_whole(out / "mlflow_run.json", lambda handle: handle.write(json.dumps(record, indent=2)))


def resolvable_config(train_cfg: DictConfig) -> dict:
    """The run's config as a plain dict; entries that only resolve inside a Hydra run are kept raw."""
    container = OmegaConf.to_container(train_cfg, resolve=False)
    try:
        return OmegaConf.to_container(OmegaConf.create({k: v for k, v in container.items() if k != "paths"}),
                                      resolve=True)
    except Exception:
        return container
