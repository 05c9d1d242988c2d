"""Helpers for tests that run on a real single-node SLURM cluster (scripts/slurm/local_cluster.sh).

The session fixture `slurm` (conftest.py) starts one cluster per test session and yields the
environment to run SLURM clients with (SLURM_CONF, and PATH with the cluster's `sacct` stand-in):

    def test_x(slurm, tmp_path):
        job = submit("#!/bin/bash\\necho hi\\n", slurm, "-o", f"{tmp_path}/out-%j.txt")
        assert wait_for(job, slurm) == "COMPLETED"

Jobs are polled with squeue every 0.5 s (`sbatch --wait` polls at 2, 10, 42 s). Finished jobs stay
visible to squeue for an hour (MinJobAge=3600). Timeouts scale with LORAMCL_TEST_TIMEOUT_SCALE.
Standard library only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm" / "local_cluster.sh"

# States after which a job does not run again (unless requeued: PREEMPTED / NODE_FAIL can be).
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                          "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})


class ClusterError(RuntimeError):
    """The cluster script failed (its output is the message)."""


def _scale(seconds: float) -> float:
    return seconds * float(os.environ.get("LORAMCL_TEST_TIMEOUT_SCALE", "1"))


def _script(command: str, folder: Path | str, timeout: float) -> subprocess.CompletedProcess:
    """Run local_cluster.sh in its own process group; on timeout the whole group is killed (not
    the daemons: they run in sessions of their own and are ended by `stop` through their pids)."""
    args = ["bash", str(SCRIPT), command, str(folder)]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


MAX_DIR_CHARS = 70  # unix socket paths under the folder (munge, slurmd's spool) stay below 108 bytes


def cluster_dir(preferred: Path | str) -> Path:
    """`preferred` (created), or a fresh /tmp/loramcl-slurm-* folder when `preferred` is too long
    for the cluster's unix sockets (e.g. under a long --basetemp)."""
    preferred = Path(preferred).resolve()
    if len(str(preferred)) <= MAX_DIR_CHARS:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred
    return Path(tempfile.mkdtemp(prefix="loramcl-slurm-", dir="/tmp"))


def cluster_env(folder: Path | str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with SLURM_CONF and PATH pointing at the cluster in `folder`.

    SLURM_* variables inherited from an outer job (a test session run inside a SLURM job) are
    dropped, so that srun / scontrol talk to this cluster and not to the outer job."""
    folder = Path(folder).resolve()
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(folder / "slurm.conf")
    env["PATH"] = f"{folder / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


def start_cluster(folder: Path | str, seconds: float = 300) -> dict[str, str]:
    """Start (installing SLURM first if needed and allowed) the cluster in `folder`; its env."""
    try:
        done = _script("start", folder, _scale(seconds))
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"local_cluster.sh start {folder} took over {e.timeout:.1f} s") from None
    if done.returncode != 0:
        message = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}")
        raise ClusterError(message)
    return cluster_env(folder)


def stop_cluster(folder: Path | str, seconds: float = 60) -> None:
    """Stop the cluster in `folder` (cancels its unfinished jobs, ends its daemons); idempotent."""
    try:
        done = _script("stop", folder, max(seconds, _scale(seconds)))  # never cut a stop short
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"local_cluster.sh stop {folder} took over {e.timeout:.1f} s") from None
    if done.returncode != 0:
        raise ClusterError(done.stderr.strip() or done.stdout.strip())


@contextmanager
def own_cluster(folder: Path | str, **settings: str):
    """A cluster of its own in `folder`, started with local_cluster.sh's `settings` (e.g.
    LOCAL_CLUSTER_NODES="2", LOCAL_CLUSTER_CPUS="16"); yields its env; stopped on exit."""
    folder = cluster_dir(folder)
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        env = start_cluster(folder)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield env
    finally:
        stop_cluster(folder)


def run(args: Sequence[str], env: Mapping[str, str], seconds: float = 30, **kwargs) -> str:
    """Run a SLURM client command, return its stdout; a failure raises with its stderr."""
    done = subprocess.run([str(a) for a in args], env=dict(env), capture_output=True, text=True,
                          timeout=_scale(seconds), **kwargs)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, list(args), done.stdout, done.stderr)
    return done.stdout


def submit(script_or_args: str | Path | Sequence[str], env: Mapping[str, str], *sbatch_args: str,
           cwd: Path | str | None = None) -> str:
    """`sbatch --parsable <sbatch_args> ...`; returns the job id (an array's main id).

    `script_or_args`: the text of a batch script (a str holding a newline; given on stdin), a
    script file (a Path), or more sbatch arguments (a list, e.g. ["--wrap", "echo hi"])."""
    args = ["sbatch", "--parsable", *map(str, sbatch_args)]
    text = None
    if isinstance(script_or_args, str) and "\n" in script_or_args:
        text = script_or_args
    elif isinstance(script_or_args, (str, Path)):
        args.append(str(script_or_args))
    else:
        args.extend(map(str, script_or_args))
    try:
        out = run(args, env, input=text, cwd=cwd)
    except subprocess.CalledProcessError as e:
        raise ClusterError(f"{' '.join(args)} failed: {e.stderr.strip()}") from None
    return out.strip().split(";")[0]


def states(job_id: str, env: Mapping[str, str]) -> dict[str, str]:
    """{job or array task id: state} from `squeue -h -a -t all -j ID` ({} for an unknown id)."""
    done = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-j", str(job_id), "-o", "%i|%T"], env=dict(env),
                          capture_output=True, text=True, timeout=_scale(30))
    if done.returncode != 0:
        if "invalid job id" in done.stderr.lower():
            return {}
        raise ClusterError(f"squeue -j {job_id} failed: {done.stderr.strip()}")
    return dict(line.split("|", 1) for line in done.stdout.splitlines() if "|" in line)


def job_info(job_id: str, env: Mapping[str, str]) -> dict[str, str]:
    """`scontrol show job -o ID` as a dict (JobState, ExitCode, Restarts, StdOut, ...).

    For a job array this is its first task's record; pass a task id ("12_1") for another."""
    line = run(["scontrol", "show", "job", "-o", str(job_id)], env).splitlines()[0]
    # Keys hold letters, digits, ':' and '/' (AllocNode:Sid, CPUs/Task); values may be empty.
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][\w:/]*)=", line))
    return {m.group(1): line[m.end():keys[i + 1].start() if i + 1 < len(keys) else len(line)].strip()
            for i, m in enumerate(keys)}


def wait_for(job_id: str, env: Mapping[str, str], timeout: float = 60, *, restarts: int = 0,
             poll: float = 0.5) -> str:
    """Poll squeue every `poll` s until the job (every task of an array) reaches a final state.

    Returns that state ("COMPLETED", ...); for an array whose tasks ended differently, the task
    states joined by ',' in task order. A requeued job goes back to PENDING with the same id: it
    is simply waited for; `restarts=N` also refuses a final state (e.g. PREEMPTED) until the job
    has been restarted at least N times (scontrol's Restarts). Raises TimeoutError after `timeout`
    (scaled by LORAMCL_TEST_TIMEOUT_SCALE) with the last states seen."""
    deadline = time.monotonic() + _scale(timeout)
    seen: dict[str, str] = {}
    while True:
        seen = states(job_id, env)
        if seen and all(s in FINAL_STATES for s in seen.values()):
            if restarts <= 0 or int(job_info(job_id, env).get("Restarts", "0")) >= restarts:
                ordered = [seen[k] for k in sorted(seen, key=_task_key)]
                return ordered[0] if len(set(ordered)) == 1 else ",".join(ordered)
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not finished after {_scale(timeout):.0f} s (states: {seen or 'none'})")
        time.sleep(poll)


def wait_until(predicate, timeout: float = 30, poll: float = 0.2, what: str = "condition"):
    """Poll `predicate()` until it returns something truthy (returned); TimeoutError after `timeout`."""
    deadline = time.monotonic() + _scale(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {_scale(timeout):.0f} s")
        time.sleep(poll)


def _task_key(task_id: str):
    head, _, tail = task_id.partition("_")
    return (int(head) if head.isdigit() else 0, int(tail) if tail.isdigit() else -1, task_id)
