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
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

SLURM_DEFAULTS = Path(__file__).resolve().parents[2] / "configs" / "cluster" / "slurm.yaml"


# ---------------------------------------------------------------------------------------------- defaults
@lru_cache(maxsize=None)
def slurm_defaults() -> dict[str, Any]:
    """configs/cluster/slurm.yaml: the one home of the SLURM defaults (time limits, memory per
    process, signal, requeue cap)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(SLURM_DEFAULTS))


def minutes(limit: str) -> int:
    """A SLURM time limit as whole minutes, rounded up: minutes, minutes:seconds, hours:minutes:seconds,
    days-hours, days-hours:minutes or days-hours:minutes:seconds."""
    days, _, clock = str(limit).strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # after a day count the clock starts with hours
        h, m, s = (parts + [0, 0])[:3]
    else:
        h, m, s = ([0, 0] + parts)[-3:] if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)


def slurm_default(key: str, tasks: Any = 1) -> Any:
    """One default for configs (`${loramcl.slurm:<key>}`): `<time key>_min` in minutes (submitit's
    timeout_min), `mem_gb` for `tasks` processes on a node, else the value."""
    values = slurm_defaults()
    if key == "mem_gb":
        return int(values["mem_per_task_gb"]) * max(1, int(tasks))
    if key.endswith("_min") and key[:-4] in values:
        return minutes(values[key[:-4]])
    return values[key]


def max_requeues() -> int:
    """The requeue cap of this job: LORAMCL_MAX_REQUEUES (set by reproduce.py's job scripts), else
    the default."""
    value = os.environ.get("LORAMCL_MAX_REQUEUES", "")
    return int(value) if value.strip().isdigit() else int(slurm_defaults()["max_requeues"])


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
_CLAIMED: Optional[str] = None  # the run folder this process claimed (released if the run is refused)
CLAIM_FILE = ".loramcl-claim.json"


def _identity() -> dict:
    """Who runs: the command and the SLURM launch it belongs to (see `_shares`)."""
    import socket
    import sys

    return {"job": slurm_job_id(), "script": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
            "step": os.environ.get("SLURM_STEP_ID", "batch"), "restart": slurm_restart_count(),
            "host": socket.gethostname(), "pid": os.getpid()}


def _shares(claim: dict, me: dict) -> bool:
    """Whether the run folder claimed by `claim` is this process's too: the same command of the same
    job, and either a requeue of it (a higher restart count: it continues its own run) or another
    rank of the same launch (same step and restart, the claimant still running, or on another node)."""
    if any(claim.get(k) != me[k] for k in ("job", "script", "argv")):
        return False
    if int(claim.get("restart", 0)) < me["restart"]:
        return True
    same_launch = claim.get("step") == me["step"] and int(claim.get("restart", 0)) == me["restart"]
    from loramcl.utils.atomic import pid_alive

    return same_launch and (claim.get("host") != me["host"] or pid_alive(claim.get("pid", -1)))


def same_launch(folder: str | os.PathLike) -> bool:
    """Whether `folder` was claimed by this very launch (another rank of this job step, this restart),
    so that what is in it, such as the .hydra/ of a rank that started first, is this run's own."""
    import json

    try:
        with open(os.path.join(folder, CLAIM_FILE)) as f:
            claim = json.load(f)
    except (OSError, ValueError):
        return False
    me = _identity()
    return int(claim.get("restart", 0)) == me["restart"] and _shares(claim, me)


def _claim(parent: str, base: str) -> str:
    """The first of `base`, `base-2`, ... under `parent` that is free (created and claimed here,
    atomically: mkdir) or already this process's (`_shares`)."""
    import json
    import time

    global _CLAIMED
    me = _identity()
    root = os.path.abspath(os.path.expanduser(parent))
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        folder = os.path.join(root, name)
        try:
            os.makedirs(folder)
        except FileExistsError:
            claim = None
            for _ in range(20):  # the claimant writes its claim right after mkdir
                try:
                    with open(os.path.join(folder, CLAIM_FILE)) as f:
                        claim = json.load(f)
                    break
                except (OSError, ValueError):
                    time.sleep(0.05)
            if claim is not None and _shares(claim, me):
                return name
            continue
        except OSError:  # not creatable: the run folder check names the problem
            return name
        with open(os.path.join(folder, CLAIM_FILE), "w") as f:
            json.dump(me, f)
        _CLAIMED = folder
        return name
    raise RuntimeError(f"no free run folder name {base}-<n> under {root}")


def release_claim() -> None:
    """Remove the run folder this process claimed if it holds nothing but the claim (a refused run)."""
    global _CLAIMED
    if _CLAIMED is None:
        return
    try:
        if os.listdir(_CLAIMED) == [CLAIM_FILE]:
            os.remove(os.path.join(_CLAIMED, CLAIM_FILE))
            os.rmdir(_CLAIMED)
    except OSError:
        pass
    _CLAIMED = None


def run_stamp(parent: Optional[str] = None) -> str:
    """The `loramcl.run_stamp` resolver, the last part of a run folder's name (`parent`: the folder it
    goes in, `${paths.log_dir}/${task_name}/runs`).

    Outside SLURM a time stamp (as Hydra's `now`, fixed once per process). In a SLURM job
    `slurm-<job id>`, claimed in its folder (`.loramcl-claim.json`): every rank that srun starts
    and every restart of a requeued job finds the same folder (so a requeued run finds its
    checkpoints), while another command in the same allocation (a batch script that runs several
    evaluations, `salloc`) gets `slurm-<job id>-2`, `-3`, ... and never writes into the first one's."""
    global _STAMP
    if _STAMP is None:
        job = slurm_job_id()
        if not job:
            _STAMP = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        elif parent is None:
            _STAMP = f"slurm-{job}"
        else:
            _STAMP = _claim(str(parent), f"slurm-{job}")
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
