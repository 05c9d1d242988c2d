"""Run identity: when two trainings give the same trained model, and which code trained it.

A training's key (12 hex digits) hashes what changes its adapters and nothing else:

- the backbone (`model`, without `gradient_checkpointing`: memory, not arithmetic);
- the data and its preparation (`data`, without where its files are, loader workers and the
  validation-only keys);
- `lora` (without `implementation`: the same adapters either way), `mcl`, `optim`, `seed` and the
  task (its runner and the runner's options);
- the schedule: `trainer.max_steps` / `max_epochs` / `limit_train_batches`,
  `accumulate_grad_batches`, gradient clipping, `precision`;
- the global batch, data.batch_size x processes (trainer.devices x num_nodes) x
  accumulate_grad_batches, in place of the per-device batch: N devices train exactly what one
  device trains with an N times larger batch (tests/test_distributed.py);
- a warm start: `ckpt_path` naming a checkpoint outside the run's own folder.

Callbacks, loggers, paths, extras, the run's name, the strategy, the validation and checkpoint
cadence are not in it. Values are taken as written (interpolations unresolved), so a key is the
same on any machine and in any folder; only the process count is resolved (`devices: auto`: the
GPUs the job gets).

The code version (`code_version()`: the package version and the git commit) is not in the key: it
is recorded with every run (identity.json in its folder, MLflow tag `loramcl.code_version`) and a
run reused under another version is reported (`reproduce.py` says which, and trains them again
with `retrain_other_code=true`).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

IDENTITY_FILE = "identity.json"
CODE_VERSION_TAG = "loramcl.code_version"

GROUPS = ("model", "data", "lora", "mcl", "optim", "task", "seed")
TRAINER_KEYS = ("max_steps", "max_epochs", "limit_train_batches", "accumulate_grad_batches", "gradient_clip_val",
                "gradient_clip_algorithm", "precision")
# data keys that change no training batch: where files are, how they are loaded, validation only
DATA_IGNORED = re.compile(r"^(root|.*_dir|prepare_hint|num_workers|pin_memory|persistent_workers|prefetch_factor"
                          r"|val_.*|.*_val_.*|num_val_.*|max_val_items|batch_size)$")
MODEL_IGNORED = ("gradient_checkpointing",)
LORA_IGNORED = ("implementation",)  # which forward the K-way layer runs: speed, not arithmetic


def processes(trainer: Any, gpus: int = 1) -> tuple[int, int]:
    """(nodes, processes per node) of a trainer config: `devices` an int, a list, "0,1", or auto /
    -1 (the job's `gpus`, one process without GPUs); `num_nodes` when written as a number (read
    from SLURM's environment, as configs/trainer/ddp.yaml does: 1 here, the job sets it)."""
    from omegaconf import OmegaConf

    devices = trainer.get("devices", 1) if trainer is not None else 1
    text = str(devices).strip()
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        per_node = len(devices)
    elif text in ("auto", "-1", "None"):
        per_node = max(1, int(gpus))
    elif text.isdigit():
        per_node = max(1, int(text))
    else:  # "0,1": these devices
        per_node = max(1, len([d for d in text.split(",") if d.strip()]))
    nodes = 1
    raw = trainer.get("num_nodes") if trainer is not None and not _interpolated(trainer, "num_nodes") else None
    if raw is not None and str(raw).strip().isdigit():
        nodes = max(1, int(raw))
    return nodes, per_node


def _interpolated(node: Any, key: str) -> bool:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return key in node and OmegaConf.is_interpolation(node, key)
    return isinstance(node, dict) and isinstance(node.get(key), str) and "${" in node[key]


def identity(cfg: Any, world_size: Optional[int] = None, gpus: int = 1, run_dir: Optional[Path] = None) -> dict:
    """The values a training's key hashes (see the module text). `world_size`: the processes it
    trains on (None: from the config and `gpus`); `run_dir`: its own folder (a ckpt_path inside
    it resumes, it is no warm start)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    tree = json.loads(json.dumps(tree, default=str))  # a private copy
    out: dict[str, Any] = {group: tree.get(group) for group in GROUPS}
    if isinstance(out["model"], dict):
        out["model"] = {k: v for k, v in out["model"].items() if k not in MODEL_IGNORED}
    if isinstance(out["lora"], dict):
        out["lora"] = {k: v for k, v in out["lora"].items() if k not in LORA_IGNORED}
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    out["data"] = {k: v for k, v in data.items() if not DATA_IGNORED.match(k)}
    trainer = tree.get("trainer") or {}
    out["trainer"] = {k: trainer[k] for k in TRAINER_KEYS if k in trainer}
    if world_size is None:
        nodes, per_node = processes(trainer, gpus)
        world_size = nodes * per_node
    accumulate = trainer.get("accumulate_grad_batches", 1)
    batch = data.get("batch_size")
    try:
        out["global_batch"] = int(batch) * int(world_size) * int(accumulate or 1)
    except (TypeError, ValueError):  # an interpolation: kept as written, with the process count
        out["global_batch"] = [batch, int(world_size), accumulate]
    start = warm_start(tree.get("ckpt_path"), run_dir)
    if start:
        out["warm_start"] = start
    return out


def warm_start(ckpt_path: Any, run_dir: Optional[Path]) -> Optional[str]:
    """The checkpoint a run starts from when it is not its own (None: a fresh start or a resume)."""
    if ckpt_path is None or str(ckpt_path).strip() in ("", "auto", "None"):
        return None
    path = Path(str(ckpt_path)).expanduser()
    if run_dir is not None:
        here = Path(run_dir).expanduser().absolute()
        target = path.absolute()
        if target == here or here in target.parents:
            return None
    return str(ckpt_path)


def training_key(cfg: Any, world_size: Optional[int] = None, gpus: int = 1, run_dir: Optional[Path] = None) -> str:
    """12 hex digits: the sha256 of `identity(...)`."""
    text = json.dumps(identity(cfg, world_size, gpus, run_dir), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def saved_key(run_dir: Path) -> str:
    """The key of the run in `run_dir`: from its identity.json (written when it trained), else from
    its saved .hydra/config.yaml with the process count written there (`devices: auto` read as one
    process: runs from before identity.json)."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    record = read_identity(run_dir)
    world = record.get("world_size") if record else None
    return training_key(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), world, 1, run_dir)


def read_identity(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_identity(run_dir: Path, cfg: Any, world_size: int) -> dict:
    """identity.json of a training run: its key (from the config Hydra saved in `run_dir`, as
    written, else `cfg`), its process count and the code version."""
    from omegaconf import OmegaConf

    from loramcl.utils.atomic import write_text_atomic

    saved = Path(run_dir) / ".hydra" / "config.yaml"
    if saved.is_file():
        cfg = OmegaConf.load(saved)
    record = {"key": training_key(cfg, world_size, run_dir=run_dir), "world_size": int(world_size),
              "code_version": code_version()}
    write_text_atomic(Path(run_dir) / IDENTITY_FILE, json.dumps(record, indent=2))
    return record


@lru_cache(maxsize=None)
def code_version() -> str:
    """`<package version>+g<commit>` (`.dirty` with uncommitted changes to tracked files) in a git
    checkout, else the package version."""
    from importlib import metadata

    try:
        version = metadata.version("loramcl")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return version
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return version
    return f"{version}+g{commit.stdout.strip()[:12]}" + (".dirty" if dirty else "")


# ---------------------------------------------------------------------------------------------- evaluations
# An evaluation is the same result when its training, its eval.py options (reproduce.py's group) and
# these resolved values are the same, under the same metric definitions (METRICS_VERSION). eval.py
# tags its MLflow run with both; reproduce.py reports a finished run whose tags differ as stale.
EVAL_KEY_TAG = "loramcl.eval_key"
METRICS_VERSION_TAG = "loramcl.metrics_version"
EVAL_KEYS = ("decoding", "generation", "seed", "num_candidates")
# Bump when a metric's definition changes, and say what changed: results of an older version are stale.
#   1: the first metrics package; 2: mBLEU-4 as the paper computes it (per candidate index, one corpus
#   BLEU-4 against the other K - 1; the former per-sentence value is mbleu_4_sentence)
METRICS_VERSION = 2


def evaluation_key(values: dict) -> str:
    """12 hex digits over eval.py's resolved decoding, generation, seed and num_candidates."""
    picked = {k: values.get(k) for k in EVAL_KEYS}
    text = json.dumps(picked, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def evaluation_tags(values: dict) -> dict[str, str]:
    return {EVAL_KEY_TAG: evaluation_key(values), METRICS_VERSION_TAG: str(METRICS_VERSION),
            CODE_VERSION_TAG: code_version()}
