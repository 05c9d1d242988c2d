"""`run_eval(cfg)`: what `python eval.py ...` runs (configs/eval.yaml).

With `decoding=<name>` the test split is decoded and scored (`decoding_run`); without it the
validation losses of the run's checkpoints are recomputed (`validation`).
"""

from __future__ import annotations

from omegaconf import DictConfig


def run_eval(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("decoding"):
        from loramcl.evaluation.decoding_run import run_decoding_eval

        return run_decoding_eval(cfg)
    from loramcl.evaluation.validation import run_validation

    return run_validation(cfg)
