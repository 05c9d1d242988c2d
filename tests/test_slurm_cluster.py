"""Smoke tests of the real single-node SLURM cluster (scripts/slurm/local_cluster.sh, fixture `slurm`).

They pin what the project's SLURM code relies on: batch output files, arrays, srun tasks inside a
batch job, dependencies, requeue (same job id, SLURM_RESTART_COUNT), a signal reaching the batch
script's trap, and the `sacct` stand-in that submitit polls. About 25 s once the cluster is up (the
requeue test alone waits ~12 s: a requeued job may start again only after cred_expire=10 s).
"""

from __future__ import annotations

import subprocess
import time

import pytest

from slurm_cluster import SCRIPT, cluster_dir, job_info, run, start_cluster, states, stop_cluster, submit, wait_for, wait_until

pytestmark = pytest.mark.slurm

ENV_PROBE = ('for v in SLURM_JOB_ID SLURM_STEP_ID SLURM_STEPID SLURM_RESTART_COUNT SLURM_PROCID SLURM_LOCALID '
             'SLURM_NTASKS; do echo "$v=${!v-unset}"; done')


def running(pid: int) -> bool:
    """Whether `pid` exists and is no zombie (a container's init may not reap orphans)."""
    try:
        return " Z " not in open(f"/proc/{pid}/stat").read().split(")", 1)[1][:4]
    except FileNotFoundError:
        return False


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_sbatch_output_file_and_batch_environment(slurm, tmp_path):
    job = submit(f"#!/bin/bash\necho hello from $(hostname -s)\n{ENV_PROBE}\n", slurm,
                 "-o", tmp_path / "out-%j.txt", cwd=tmp_path)
    assert wait_for(job, slurm, 30) == "COMPLETED"
    text = (tmp_path / f"out-{job}.txt").read_text()
    assert text.startswith("hello from ")
    seen = env_lines(text)
    assert seen["SLURM_JOB_ID"] == job
    # The batch script is no step: SLURM_STEP_ID unset (slurm 22.05); a fresh job has no restart count.
    assert seen["SLURM_STEP_ID"] == "unset" and seen["SLURM_RESTART_COUNT"] == "unset"
    assert seen["SLURM_PROCID"] == "0"
    info = job_info(job, slurm)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "0"
    assert info["StdOut"] == str(tmp_path / f"out-{job}.txt")


@pytest.mark.slow  # suite time: a SLURM feature itself (tests/test_slurm.py runs the project on it)
def test_job_array_runs_every_task(slurm, tmp_path):
    job = submit(["--wrap", "echo task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID"], slurm, "--array=0-1",
                 "-o", tmp_path / "arr-%A_%a.txt", cwd=tmp_path)
    assert wait_for(job, slurm, 30) == "COMPLETED"
    assert set(states(job, slurm)) == {f"{job}_0", f"{job}_1"}
    for task in (0, 1):
        assert (tmp_path / f"arr-{job}_{task}.txt").read_text().strip() == f"task {task} of {job}"


def test_srun_tasks_inside_a_batch_job(slurm, tmp_path):
    script = f"#!/bin/bash\n{ENV_PROBE}\nsrun bash -c '({ENV_PROBE}) > {tmp_path}/task-$SLURM_PROCID.txt'\n"
    job = submit(script, slurm, "--ntasks=2", "-o", tmp_path / "out.txt", cwd=tmp_path)
    assert wait_for(job, slurm, 30) == "COMPLETED"
    batch = env_lines((tmp_path / "out.txt").read_text())
    assert batch["SLURM_NTASKS"] == "2" and batch["SLURM_STEP_ID"] == "unset"
    tasks = [env_lines((tmp_path / f"task-{rank}.txt").read_text()) for rank in (0, 1)]
    assert [t["SLURM_PROCID"] for t in tasks] == ["0", "1"]
    assert sorted(t["SLURM_LOCALID"] for t in tasks) == ["0", "1"]
    for t in tasks:  # the first srun of the job is step 0, in both spellings
        assert t["SLURM_NTASKS"] == "2" and t["SLURM_STEP_ID"] == "0" == t["SLURM_STEPID"]
        assert t["SLURM_JOB_ID"] == job and t["SLURM_RESTART_COUNT"] == "unset"


@pytest.mark.slow  # suite time: a SLURM feature itself (tests/test_slurm.py runs the project on it)
def test_dependency_afterok_runs_after_the_first_job(slurm, tmp_path):
    first = submit(["--wrap", f"sleep 1; date +%s.%N > {tmp_path}/first_end"], slurm, "-o", "/dev/null")
    second = submit(["--wrap", f"date +%s.%N > {tmp_path}/second_start"], slurm, "-o", "/dev/null",
                    f"--dependency=afterok:{first}")
    assert wait_for(second, slurm, 30) == "COMPLETED"
    assert float((tmp_path / "second_start").read_text()) >= float((tmp_path / "first_end").read_text())


def test_dependency_on_a_failed_job_stays_pending_unless_killed_on_invalid_dep(slurm):
    """Stock semantics (no DependencyParameters=kill_invalid_depend): a job whose afterok dependency
    failed stays PENDING for ever, unless submitted with --kill-on-invalid-dep=yes (as the project's
    dependent jobs are)."""
    first = submit(["--wrap", "exit 3"], slurm, "-o", "/dev/null")
    stays = submit(["--wrap", "true"], slurm, "-o", "/dev/null", f"--dependency=afterok:{first}")
    killed = submit(["--wrap", "true"], slurm, "-o", "/dev/null", f"--dependency=afterok:{first}",
                    "--kill-on-invalid-dep=yes")
    try:
        assert wait_for(first, slurm, 30) == "FAILED"
        assert job_info(first, slurm)["ExitCode"] == "3:0"
        assert wait_for(killed, slurm, 30) == "CANCELLED"
        wait_until(lambda: job_info(stays, slurm).get("Reason") == "DependencyNeverSatisfied", 30,
                   what="DependencyNeverSatisfied")
        assert job_info(stays, slurm)["JobState"] == "PENDING"
    finally:
        run(["scancel", stays], slurm)


@pytest.mark.slow  # suite time: a SLURM feature itself (tests/test_slurm.py runs the project on it)
def test_requeue_reruns_the_job_with_the_same_id(slurm, tmp_path):
    starts = tmp_path / "starts.txt"
    script = (f"#!/bin/bash\necho \"$SLURM_JOB_ID ${{SLURM_RESTART_COUNT-unset}}\" >> {starts}\n"
              "[ -n \"$SLURM_RESTART_COUNT\" ] && exit 0\nsleep 120\n")
    job = submit(script, slurm, "-o", tmp_path / "out-%j.txt")
    wait_until(lambda: starts.exists() and starts.read_text(), 30, what="first start")
    t0 = time.monotonic()
    run(["scontrol", "requeue", job], slurm)
    assert wait_for(job, slurm, 60, restarts=1) == "COMPLETED"
    delay = time.monotonic() - t0
    assert starts.read_text().splitlines() == [f"{job} unset", f"{job} 1"]
    assert job_info(job, slurm)["Restarts"] == "1"
    assert 9 <= delay < 40, delay  # begin time = requeue + cred_expire (10 s) + 1


@pytest.mark.slow  # suite time: a SLURM feature itself (tests/test_slurm.py runs the project on it)
def test_signal_reaches_the_batch_script_trap(slurm, tmp_path):
    # Same path as --signal=B:USR1@N before the time limit, without waiting for the limit.
    script = ("#!/bin/bash\ntrap 'echo got USR1; exit 0' USR1\necho ready\n"
              "sleep 120 & wait\necho no signal\n")
    job = submit(script, slurm, "-o", tmp_path / "out.txt")
    wait_until(lambda: "ready" in ((tmp_path / "out.txt").exists() and (tmp_path / "out.txt").read_text() or ""),
               30, what="job start")
    run(["scancel", "--signal=USR1", "--batch", job], slurm)
    assert wait_for(job, slurm, 30) == "COMPLETED"
    assert (tmp_path / "out.txt").read_text().splitlines() == ["ready", "got USR1"]


def test_sacct_stand_in_answers_submitit(slurm, monkeypatch):
    from submitit.slurm.slurm import SlurmInfoWatcher

    single = submit(["--wrap", "true"], slurm, "-o", "/dev/null")
    array = submit(["--wrap", "true"], slurm, "-o", "/dev/null", "--array=0-1")
    for job in (single, array):
        assert wait_for(job, slurm, 30) == "COMPLETED"
    out = run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", single, "-j", array], slurm)
    lines = out.splitlines()
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    assert lines[0] == "JobID|State|NodeList"
    assert sorted(lines[1:]) == sorted([f"{single}|COMPLETED|{node}", f"{array}_0|COMPLETED|{node}",
                                        f"{array}_1|COMPLETED|{node}"])
    # An unknown id: the header alone, exit 0 (what real sacct prints).
    assert run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", "999999"], slurm) == "JobID|State|NodeList\n"

    # submitit's own watcher, calling `sacct` through PATH as it does in a real run.
    for key in ("SLURM_CONF", "PATH"):
        monkeypatch.setenv(key, slurm[key])
    watcher = SlurmInfoWatcher(delay_s=0)
    for job in (single, f"{array}_0", f"{array}_1"):
        watcher.register_job(job)
    assert [watcher.get_state(job, mode="force") for job in (single, f"{array}_0", f"{array}_1")] == ["COMPLETED"] * 3
    assert watcher.get_info(single)["NodeList"] == node
    assert watcher.is_done(single, mode="cache")


@pytest.mark.slow  # suite time: a SLURM feature itself (tests/test_slurm.py runs the project on it)
def test_second_cluster_beside_the_first_and_stop_ends_its_jobs(slurm, tmp_path):
    folder = cluster_dir(tmp_path / "c2")
    env = start_cluster(folder)
    try:
        assert env["SLURM_CONF"] != slurm["SLURM_CONF"]
        ports = [line for line in (folder / "slurm.conf").read_text().splitlines() if line.startswith("SlurmctldPort=")]
        assert ports != [line for line in open(slurm["SLURM_CONF"]).read().splitlines()
                         if line.startswith("SlurmctldPort=")]
        again = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=30)
        assert again.returncode == 0 and "already running" in again.stdout
        job = submit(["--wrap", f"sleep 300 & echo $! > {tmp_path}/pid; wait"], env, "-o", "/dev/null")
        pid = int(wait_until(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(), 30,
                             what="job start"))
        daemons = [int((folder / "run" / f"{d}.pid").read_text()) for d in ("munged", "slurmctld", "slurmd")]
    finally:
        stop_cluster(folder)
    for p in (pid, *daemons):
        assert not running(p), f"pid {p} outlived the cluster"
    status = subprocess.run(["bash", str(SCRIPT), "status", str(folder)], capture_output=True, text=True, timeout=30)
    assert status.returncode == 3 and status.stdout.count("stopped") == 3
    stop_cluster(folder)  # idempotent
    # the session cluster is untouched
    assert run(["sinfo", "-h", "-o", "%T"], slurm).strip() in ("idle", "mixed", "allocated")
