"""Processes and SLURM: who writes, which run folder a job uses, how a job requeues itself.

- The process rank, known from the environment before any Trainer exists (Lightning's launcher
  sets LOCAL_RANK in its child processes, `srun` sets SLURM_PROCID, torchrun RANK), so that only
  rank 0 creates MLflow runs and writes run files.
- SLURM: Lightning's own requeue handler is switched off (`cluster_plugins`: it saves a checkpoint
  from inside the signal handler, in the middle of a step); `callbacks.GracefulStop` saves at the
  next step boundary and `requeue_job` puts the job back in the queue. A requeued job
  (SLURM_RESTART_COUNT >= 1) runs in the same run folder (`run_stamp`) and resumes its newest
  checkpoint by itself (`loramcl.resume`).

No other loramcl module is imported here: `loramcl.config` registers `run_stamp` as a resolver.
"""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from typing import Any, Optional


# ---------------------------------------------------------------------------------------------- ranks
def process_rank() -> int:
    """This process's global rank as the launcher set it (0 for a plain single process)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_main_process() -> bool:
    return process_rank() == 0


# ---------------------------------------------------------------------------------------------- SLURM
def slurm_job_id() -> Optional[str]:
    """`<array job>_<task>` for an array task, else the job id; None outside SLURM."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or None


def slurm_restart_count() -> int:
    """How many times SLURM requeued this job (0 for a first start or outside SLURM)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


_STAMP: Optional[str] = None


def run_stamp() -> str:
    """The `loramcl.run_stamp` resolver, the last part of a run folder's name.

    Outside SLURM a time stamp (as Hydra's `now`, fixed once per process). In a SLURM job
    `slurm-<job id>`: the same for every task of the job (srun starts each rank as its own process,
    and each would otherwise stamp its own folder) and for every restart of a requeued job, which so
    finds its checkpoints again."""
    global _STAMP
    if _STAMP is None:
        job = slurm_job_id()
        _STAMP = f"slurm-{job}" if job else datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    return _STAMP


def cluster_plugins() -> list[Any]:
    """Lightning plugins for the cluster this process runs on: in a SLURM job, the SLURM
    environment without Lightning's requeue handler (GracefulStop requeues at a step boundary)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def requeue_job() -> Optional[str]:
    """Put this SLURM job back in the queue (`scontrol requeue`); returns None on success, else why not."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return "not a SLURM job"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"scontrol requeue {job} failed: {err}"
    if done.returncode != 0:
        return f"scontrol requeue {job} failed: {(done.stderr or done.stdout).strip()}"
    return None
