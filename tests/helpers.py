"""Helpers shared by the test files: paths, subprocess runners with scalable timeouts, config composition.

Subprocess timeouts are generous (a tiny training run takes well under a minute on CI's 2 cores) and
all scale with one environment variable, for slower or busier machines:

    LORAMCL_TEST_TIMEOUT_SCALE=3 .venv/bin/python -m pytest
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def timeout(seconds: float) -> float:
    """`seconds` times LORAMCL_TEST_TIMEOUT_SCALE (default 1)."""
    return seconds * float(os.environ.get("LORAMCL_TEST_TIMEOUT_SCALE", "1"))


def run_script(args: Sequence[str], seconds: float = 1200, **kwargs) -> subprocess.CompletedProcess:
    """Run `python <args>` from the repository root and capture its output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **kwargs.pop("env", {}))
    return subprocess.run([sys.executable, *map(str, args)], cwd=kwargs.pop("cwd", ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout(seconds), **kwargs)


def run_train(*overrides: str, log_dir: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    """`train.py` with Hydra flags (`-m`) first, `paths.log_dir=log_dir`, then the overrides."""
    flags = [o for o in overrides if o.startswith("-")]
    rest = [o for o in overrides if not o.startswith("-")]
    return run_script([ROOT / "train.py", *flags, f"paths.log_dir={log_dir}", *rest], seconds=timeout)


def run_eval(*overrides: str, log_dir: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    """`eval.py` with short generations (12 new tokens) logging below `log_dir`."""
    flags = [o for o in overrides if o.startswith("-")]
    rest = [o for o in overrides if not o.startswith("-")]
    return run_script([ROOT / "eval.py", *flags, *rest, f"paths.log_dir={log_dir}", "generation.max_new_tokens=12"],
                      seconds=timeout)


def compose_train(*overrides: str, hydra_cfg: bool = False):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_cfg)


def eval_predictions(log_dir: Path) -> list[list[dict]]:
    """The rows of every predictions.jsonl below `log_dir`/eval, in path order."""
    files = sorted(log_dir.glob("eval/**/predictions.jsonl"))
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in files]


# The demos build their synthetic data set and tiny base on first use below paths.data_dir and reuse
# them afterwards; that cache is keyed by path only (the first run's steps and sizes win). Every run
# that shares a data folder (conftest's `demo_data`) therefore passes the same asset overrides: these.
TRANSLATION_ASSETS = ["model.auto_pretrain.steps=10", "data.auto_prepare.sizes=[64,8,8]"]
AUDIO_ASSETS = ["model.auto_pretrain.steps=10", "data.auto_prepare.sizes=[24,4,4]"]
BILINGUAL_ASSETS: list[str] = []  # the full demo: its configured sizes and 600 pre-training steps

# Short demo trainings used by the evaluation tests (tiny bases pre-trained for 10 steps).
TRANSLATION_DEMO = ["model.auto_pretrain.steps=10", "trainer.max_epochs=1", "data.auto_prepare.sizes=[64,8,8]",
                    "callbacks=model_checkpoint", "extras.print_config=false", "logger=none"]
AUDIO_DEMO = ["model.auto_pretrain.steps=10", "trainer.max_epochs=1", "data.max_train_items=16",
              "data.max_val_items=4", "data.auto_prepare.sizes=[24,4,4]", "callbacks=model_checkpoint",
              "extras.print_config=false", "logger=none"]
assert set(TRANSLATION_ASSETS) <= set(TRANSLATION_DEMO) and set(AUDIO_ASSETS) <= set(AUDIO_DEMO)


def build_demo_assets(experiment: str, assets: Sequence[str], data_dir: Path, log_dir: Path,
                      seconds: float = 1800) -> Path:
    """Build `experiment`'s synthetic data set and tiny base below `data_dir`; return `data_dir`.

    It is train.py's own first-use path (a fast dev run of one batch, `task=finetune` for every demo),
    so the files are byte for byte those a first real run would write; later runs only load them.
    """
    proc = run_train(f"experiment={experiment}", *assets, "task=finetune", "debug=fdr", "logger=none",
                     f"paths.data_dir={data_dir}", log_dir=log_dir, timeout=seconds)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data_dir


def train_demo(experiment: str, overrides: Sequence[str], data_dir: Path, log_dir: Path,
               seconds: float = 1200) -> Path:
    """Train `experiment` with `overrides`; return its run folder (fails the test on an error)."""
    proc = run_train(f"experiment={experiment}", *overrides, f"paths.data_dir={data_dir}", log_dir=log_dir,
                     timeout=seconds)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sorted(log_dir.glob(f"{experiment}/runs/*"))
    return run
