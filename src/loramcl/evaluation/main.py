"""`run_eval(cfg)`: what `python eval.py ...` runs (configs/eval.yaml).

With `decoding=<name>` the test split is decoded and scored (`decoding_run`); without it the
validation losses of the run's checkpoints are recomputed (`validation`). `left_behind(cfg)` says
what an interrupted evaluation left in its run folder (eval.py's one line on Ctrl+C / SIGTERM).
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    from loramcl.schema.evaluation import EvalSettings

RESULT_FILES = ("predictions.jsonl", "metrics.json", "eval_metrics.json", "candidates.html")


def check_eval_values(cfg: DictConfig) -> "EvalSettings":
    """eval.py's own values, before anything is read: the validated settings the evaluation receives."""
    from loramcl.schema import validate_eval

    settings = validate_eval(cfg)  # every value of configs/eval.yaml and the decoding (loramcl.schema.evaluation)
    if settings.top.devices > 1:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
            from loramcl.errors import ConfigError

            raise ConfigError(f"devices={settings.top.devices} decodes one method on several processes: run it "
                              f"without -m (one eval.py per method; a multirun's jobs are already separate runs)")
    return settings


def run_eval(cfg: DictConfig) -> dict[str, float]:
    """Validate once, then hand the typed settings (not the raw config) to the evaluation."""
    settings = check_eval_values(cfg)
    if settings.top.decoding is not None:
        from loramcl.evaluation.decoding_run import run_decoding_eval

        return run_decoding_eval(settings)
    from loramcl.evaluation.validation import run_validation

    return run_validation(settings)


def left_behind(cfg: DictConfig) -> str:
    """What an interrupted evaluation left in its run folder (its results files appear only when
    complete, `report.write_outputs`; `report.evaluation_run` adds what it did to the MLflow run)."""
    try:
        out = Path(cfg.paths.output_dir)
    except Exception:  # composed outside a Hydra run
        return "no results were written"
    sweep = ""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
        sweep = f" (job {HydraConfig.get().job.num} of a multirun: the jobs after it were not run)"
    written = [name for name in RESULT_FILES if (out / name).is_file()]
    if not written:
        return f"no results were written to {out}{sweep}"
    logged = ", logged to MLflow" if (out / "mlflow_run.json").is_file() else ""
    return f"{out} holds {', '.join(written)}{logged}{sweep}"
