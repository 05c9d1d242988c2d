"""What an evaluation leaves behind: predictions.jsonl and metrics.json in its run folder, and one
MLflow run (params = the evaluation's info, its config and the trained run's config; metrics; the
two files as artifacts) tagged `loramcl.kind = eval`, which `collect` reads. `mlflow_run.json` in the
run folder names that MLflow run (store, experiment, run id), so that later analyses of the folder
(scripts/analyse_hypotheses.py) add their results to the same run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from loramcl.utils.mlflow_store import MLflowRun, flatten

log = logging.getLogger(__name__)


def write_outputs(out: Path, records: list[dict], metrics: dict[str, float], info: dict) -> list[Path]:
    predictions = out / "predictions.jsonl"
    with open(predictions, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary = out / "metrics.json"
    summary.write_text(json.dumps({**info, "metrics": metrics}, indent=2, ensure_ascii=False))
    log.info(f"wrote {predictions} and {summary}")
    return [predictions, summary]


def log_to_mlflow(cfg: DictConfig, train_cfg: DictConfig, metrics: dict[str, float], info: dict,
                  files: list[Path], out: Path | None = None) -> None:
    ml = cfg.get("mlflow")
    if not ml or not ml.get("enabled", True):
        return
    experiment = ml.get("experiment") or f"eval_{train_cfg.data.get('name', 'data')}"
    tags = {str(k): str(v) for k, v in (ml.get("tags") or {}).items()}  # e.g. scripts/reproduce.py's keys
    run = MLflowRun(ml.tracking_uri, experiment, ml.artifact_location, f"{info['scheme']} / {info['decoding']}",
                    tags={**tags, "loramcl.kind": "eval", "task": "eval"})
    try:
        params = {f"eval.{k}": v for k, v in info.items() if k != "notes"}
        params.update(flatten(OmegaConf.to_container(cfg, resolve=True), "cfg."))
        params.update(flatten(resolvable_config(train_cfg), "train."))
        run.log_params(params)
        run.log_metrics(metrics)
        for path in files:
            run.log_artifact(path)
        run.finish()
    except Exception:
        run.finish("FAILED")
        raise
    log.info(f"logged to MLflow experiment {experiment!r} (run {run.run_id})")
    if out is not None:
        (out / "mlflow_run.json").write_text(json.dumps({"tracking_uri": str(ml.tracking_uri), "experiment": experiment,
                                                         "run_id": run.run_id}, indent=2))


def resolvable_config(train_cfg: DictConfig) -> dict:
    """The run's config as a plain dict; entries that only resolve inside a Hydra run are kept raw."""
    container = OmegaConf.to_container(train_cfg, resolve=False)
    try:
        return OmegaConf.to_container(OmegaConf.create({k: v for k, v in container.items() if k != "paths"}),
                                      resolve=True)
    except Exception:
        return container
