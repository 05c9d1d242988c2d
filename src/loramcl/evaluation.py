"""Evaluation of trained runs: the decoding sweep with its metrics, or validation losses.

A train.py run folder is enough: its `.hydra/config.yaml` rebuilds data, backbone and adapters, and
its `checkpoints/<model>/` hold the adapter-only checkpoints (best, else last).

With `decoding=<name>` (a file of configs/decoding/), the test split is decoded into exactly K
candidates per item (`loramcl.decoding.methods`), scored (`loramcl.metrics`), and written to the
evaluation's run folder (predictions.jsonl, metrics.json) and to MLflow. Without it, the validation
WTA loss, per-hypothesis losses and win rates are recomputed (eval_metrics.json).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from loramcl.lit_module import MCLLitModule
from loramcl.training import output_dir, validated_configs

log = logging.getLogger(__name__)


def find_checkpoints(path: Path) -> dict[str, Path]:
    """{model name: checkpoint} for a run folder (best checkpoint, else last) or one file."""
    if path.is_file():
        return {path.parent.name: path}
    folder = path / "checkpoints"
    if not folder.is_dir():
        raise FileNotFoundError(f"{path} is neither a checkpoint file nor a train.py run folder with checkpoints/")
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        chosen = best_checkpoint(sub)
        if chosen is not None:
            found[sub.name] = chosen
    if not found:
        raise FileNotFoundError(f"no checkpoint under {folder}")
    return found


def best_checkpoint(folder: Path) -> Optional[Path]:
    """The best checkpoint ModelCheckpoint recorded in last.ckpt, else the newest one, else None."""
    last = folder / "last.ckpt"
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False).get("callbacks", {})
        for key, value in state.items():
            best = Path(value.get("best_model_path") or "") if key.startswith("ModelCheckpoint") else None
            if best and best.name and (folder / best.name).exists():
                return folder / best.name
    others = sorted((c for c in folder.glob("*.ckpt") if c.name != "last.ckpt"), key=lambda c: c.stat().st_mtime)
    return others[-1] if others else (last if last.exists() else None)


def run_config(ckpt: Path) -> DictConfig:
    for folder in [ckpt.parent, *ckpt.parents]:
        if (folder / ".hydra" / "config.yaml").exists():
            return OmegaConf.load(folder / ".hydra" / "config.yaml")
    raise FileNotFoundError(f"no .hydra/config.yaml above {ckpt}: cannot rebuild the run's model")


def run_eval(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("decoding"):
        from loramcl.eval_decoding import run_decoding_eval

        return run_decoding_eval(cfg)
    return run_validation(cfg)


def run_validation(cfg: DictConfig) -> dict[str, float]:
    path = Path(cfg.ckpt_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path {path} does not exist")
    checkpoints = find_checkpoints(path)
    if cfg.get("model_name"):
        checkpoints = {cfg.model_name: checkpoints[cfg.model_name]}
    results: dict[str, float] = {}
    for name, ckpt in checkpoints.items():
        train_cfg = run_config(ckpt)
        meta = torch.load(ckpt, map_location="cpu", weights_only=False).get("loramcl", {})
        mcl_cfg, lora_cfg = validated_configs(train_cfg, meta.get("num_hypotheses"))
        L.seed_everything(train_cfg.seed, verbose=False)
        datamodule = instantiate(train_cfg.data)
        module = MCLLitModule(instantiate(train_cfg.model), mcl_cfg, lora_cfg, optimizer=None)
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="auto",
                            devices=1, enable_model_summary=False)
        metrics = trainer.validate(module, datamodule=datamodule, ckpt_path=str(ckpt), verbose=False)[0]
        results.update({f"{name}/{k}": float(v) for k, v in metrics.items()})
        log.info(f"{name} ({ckpt}): " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    out = output_dir(cfg)
    if out is not None:
        (out / "eval_metrics.json").write_text(json.dumps(results, indent=2))
    return results
