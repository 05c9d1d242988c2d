"""Run folders are never reused: SLURM folders per command, resumes that keep the previous config.

- `loramcl.cluster.run_stamp` inside a SLURM job (in process, with the job's environment): the ranks
  of one launch and a requeued job share `slurm-<job>`; the same command run again after the first
  ended, or another command of the allocation, gets `slurm-<job>-2`; a refused run gives its claim back.
- Through train.py: two toy trainings of one "allocation" (SLURM_JOB_ID set) land in two folders;
  a demo run resumed in its own folder (`ckpt_path=auto`, more steps) keeps its first
  `.hydra/config.yaml` in `.hydra/previous/1/`, byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, TRANSLATION_ASSETS, timeout
from loramcl import cluster


@pytest.fixture
def slurm_job(monkeypatch):
    """A fresh `run_stamp` in the environment of SLURM job 4242, launched as `train.py a=1`."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py", "a=1"])

    def fresh(parent: Path) -> str:
        cluster._STAMP = None
        cluster._CLAIMED = None
        return cluster.run_stamp(str(parent))

    yield fresh
    cluster._STAMP = None
    cluster._CLAIMED = None


def write_claim(folder: Path, **changes) -> None:
    claim = cluster._identity() | changes
    folder.mkdir(parents=True)
    (folder / cluster.CLAIM_FILE).write_text(json.dumps(claim))


def test_first_command_claims_the_job_folder(slurm_job, tmp_path):
    assert slurm_job(tmp_path) == "slurm-4242"
    claim = json.loads((tmp_path / "slurm-4242" / cluster.CLAIM_FILE).read_text())
    assert (claim["job"], claim["script"], claim["argv"], claim["restart"]) == ("4242", "train.py", ["a=1"], 0)


def test_another_rank_of_the_same_launch_shares_it(slurm_job, tmp_path):
    write_claim(tmp_path / "slurm-4242", pid=os.getpid())  # the claimant still runs: a sibling rank
    assert slurm_job(tmp_path) == "slurm-4242"
    write_claim(tmp_path / "other_host" / "slurm-4242", host="node-7", pid=1)  # rank 0 on another node
    assert slurm_job(tmp_path / "other_host") == "slurm-4242"


def test_the_same_command_run_again_gets_a_new_folder(slurm_job, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_claim(tmp_path / "slurm-4242", pid=int(dead.stdout))  # the first run ended
    assert slurm_job(tmp_path) == "slurm-4242-2"
    assert (tmp_path / "slurm-4242-2" / cluster.CLAIM_FILE).is_file()


def test_another_command_of_the_allocation_gets_a_new_folder(slurm_job, tmp_path):
    write_claim(tmp_path / "slurm-4242", argv=["decoding=mcl_beam1"], pid=os.getpid())
    write_claim(tmp_path / "slurm-4242-2", script="eval.py", pid=os.getpid())
    assert slurm_job(tmp_path) == "slurm-4242-3"


def test_a_requeued_job_finds_its_folder(slurm_job, tmp_path, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_claim(tmp_path / "slurm-4242", pid=int(dead.stdout), restart=0)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert slurm_job(tmp_path) == "slurm-4242"


def test_a_refused_run_gives_its_claim_back(slurm_job, tmp_path):
    name = slurm_job(tmp_path)
    cluster.release_claim()
    assert not (tmp_path / name).exists()


def test_a_legacy_folder_without_claim_is_not_reused(slurm_job, tmp_path):
    (tmp_path / "slurm-4242" / "checkpoints").mkdir(parents=True)
    assert slurm_job(tmp_path) == "slurm-4242-2"


def train(*overrides: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout(600), env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


def test_two_trainings_of_one_allocation_get_two_folders(tmp_path):
    args = [f"paths.log_dir={tmp_path}", "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "extras.print_config=false", "task.train_mle=false"]
    env = {"SLURM_JOB_ID": "777"}
    for _ in range(2):
        done = train(*args, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
    runs = sorted(p.name for p in (tmp_path / "transition1" / "runs").iterdir())
    assert runs == ["slurm-777", "slurm-777-2"]
    for run in runs:
        assert (tmp_path / "transition1" / "runs" / run / "summary.json").is_file()


def test_a_resumed_run_keeps_its_previous_config(translation_assets, tmp_path):
    run = tmp_path / "run"
    base = ["experiment=demo_translation_mcl", *TRANSLATION_ASSETS, f"paths.data_dir={translation_assets}",
            f"paths.log_dir={tmp_path}", "logger=none", "callbacks=model_checkpoint", "extras.print_config=false",
            "data.max_train_items=8", "data.batch_size=2", "trainer.max_epochs=-1", f"hydra.run.dir={run}"]
    first = train(*base, "trainer.max_steps=2", "trainer.val_check_interval=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    config = (run / ".hydra" / "config.yaml").read_bytes()
    again = train(*base, "trainer.max_steps=2", "trainer.val_check_interval=2", cwd=tmp_path)  # no ckpt_path
    assert again.returncode == 1 and "already holds a run" in again.stderr, again.stderr[-2000:]
    assert (run / ".hydra" / "config.yaml").read_bytes() == config
    resumed = train(*base, "trainer.max_steps=4", "trainer.val_check_interval=2", "ckpt_path=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run / ".hydra" / "previous" / "1" / "config.yaml").read_bytes() == config
    assert b"max_steps: 4" in (run / ".hydra" / "config.yaml").read_bytes()
