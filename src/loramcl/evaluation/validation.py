"""`python eval.py ckpt_path=<run folder or checkpoint>` without `decoding`: recompute the validation
WTA loss, per-hypothesis losses and win rates of every model of a run (eval_metrics.json)."""

from __future__ import annotations

import json
import logging

from loramcl.checkpoints import Checkpoint
from loramcl.errors import ConfigError
from loramcl.interrupts import doing
from loramcl.preflight import preflight
from loramcl.runs import checkpoint_config, find_checkpoints, load_model
from loramcl.schema.evaluation import EvalSettings

log = logging.getLogger(__name__)


def run_validation(settings: EvalSettings) -> dict[str, float]:
    top = settings.top
    checkpoints = find_checkpoints(top.ckpt_path)
    if top.model_name:
        if top.model_name not in checkpoints:
            raise ConfigError(f"model_name={top.model_name} is not in {top.ckpt_path}: it holds {', '.join(checkpoints)}")
        checkpoints = {top.model_name: checkpoints[top.model_name]}
    # every checkpoint, config, data file and backbone is checked before Lightning is even imported
    plans = []
    for name, path in checkpoints.items():
        checkpoint = Checkpoint.load(path)
        train_cfg = checkpoint_config(checkpoint)
        plans.append((name, path, checkpoint, train_cfg, preflight(train_cfg, training=False)))
    import lightning as L

    from loramcl.lit_module import MCLLitModule

    results: dict[str, float] = {}
    for name, path, checkpoint, train_cfg, datamodule in plans:
        doing(f"recomputing the validation losses of {name} ({path})")
        L.seed_everything(train_cfg.seed, verbose=False)
        module = MCLLitModule(load_model(checkpoint, train_cfg), None, None, optimizer=None)
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="auto",
                            devices=1, enable_model_summary=False)
        metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        results.update({f"{name}/{k}": float(v) for k, v in metrics.items()})
        log.info(f"{name} ({path}): " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    out = settings.output_dir
    if out is not None:
        from loramcl.evaluation.report import write_whole

        write_whole(out / "eval_metrics.json", lambda handle: handle.write(json.dumps(results, indent=2)))
    return results
