"""Faults a long run meets: kills (SIGKILL, also during a checkpoint save), SIGTERM / SIGINT, NaN.

Through the real train.py on the toy task (K = 2, a few seconds a step), checkpoints every 2 steps
and the MLflow store on: a killed run resumed with `ckpt_path=auto` (same run folder) or a run
folder ends with exactly the adapters of an uninterrupted run, in the same MLflow run, with no run
left RUNNING; a signal saves a checkpoint and exits 143 / 130 with one line; a NaN loss exits 1 with
one line, the MLflow run FAILED and no non-finite checkpoint.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers import ROOT, run_train, timeout

TOY = ["task=finetune", "data.batch_size=8", "data.num_val_sequences=32", "extras.print_config=false",
       "trainer.max_steps=16", "trainer.val_check_interval=8", "callbacks.model_checkpoint.every_n_train_steps=2"]


def adapters(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def mlflow_runs(log_dir: Path) -> list:
    client = MlflowClient(f"sqlite:///{log_dir}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def start(log_dir: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", *TOY, *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc: subprocess.Popen, poll: float = 0.05) -> bool:
    deadline = time.time() + timeout(600)
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(poll)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted run: its run folder and final adapters."""
    log_dir = tmp_path_factory.mktemp("reference")
    proc = run_train(*TOY, "task_name=ref", f"hydra.run.dir={log_dir}/run", log_dir=log_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return log_dir, adapters(log_dir / "run/checkpoints/K2/last.ckpt")


def temp_files(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if ".tmp-" in e.name]
    except FileNotFoundError:
        return []


def kill_during_save(log_dir: Path) -> int:
    """Start the run in its fixed folder and SIGKILL it while a checkpoint's temporary file is open;
    returns how many attempts it took (a save lasts milliseconds: the kill may land after it)."""
    folder = log_dir / "run/checkpoints/K2"
    for attempt in range(1, 6):
        proc = start(log_dir, "task_name=killed", f"hydra.run.dir={log_dir}/run", "ckpt_path=auto")
        try:
            hit = wait_for(lambda: bool(temp_files(folder)), proc, poll=0.0005)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if hit and temp_files(folder):
            return attempt
    pytest.fail("no SIGKILL landed during a checkpoint save in 5 attempts")


def kill_at(log_dir: Path, seconds: float) -> None:
    proc = start(log_dir, "task_name=killed", f"hydra.run.dir={log_dir}/run", "ckpt_path=auto")
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def resume_to_end(log_dir: Path) -> subprocess.CompletedProcess:
    proc = run_train(*TOY, "task_name=killed", f"hydra.run.dir={log_dir}/run", "ckpt_path=auto", log_dir=log_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def check_resumed(log_dir: Path, reference: tuple[Path, dict]) -> None:
    ref_dir, ref_adapters = reference
    folder = log_dir / "run/checkpoints/K2"
    assert not temp_files(folder), "a stale temporary checkpoint file was not cleaned up"
    assert_same(ref_adapters, adapters(folder / "last.ckpt"))
    runs, (ref_run,) = mlflow_runs(log_dir), mlflow_runs(ref_dir)
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FINISHED"] + ["KILLED"] * (len(runs) - 1), f"killed runs left open: {statuses}"
    (run,) = [r for r in runs if r.info.status == "FINISHED"]
    assert set(run.data.metrics) == set(ref_run.data.metrics)
    assert run.data.metrics["epoch"] == ref_run.data.metrics["epoch"]
    assert run.data.metrics["val/wta_loss"] == ref_run.data.metrics["val/wta_loss"]


def test_sigkill_during_a_save_then_resume_auto(reference, tmp_path):
    attempts = kill_during_save(tmp_path)
    stale = temp_files(tmp_path / "run/checkpoints/K2")
    assert stale, "the kill did not leave the save unfinished"
    for path in (tmp_path / "run/checkpoints/K2").glob("*.ckpt"):
        torch.load(path, weights_only=False)  # every checkpoint file stays complete
    assert {r.info.status for r in mlflow_runs(tmp_path)} == {"RUNNING"}, attempts
    resume_to_end(tmp_path)
    check_resumed(tmp_path, reference)


@pytest.mark.slow
def test_sigkill_at_five_random_moments(reference, tmp_path):
    """Five kills at random moments of one run (each resumed with ckpt_path=auto), the first during a
    save; the run then ends with the uninterrupted run's adapters and one FINISHED MLflow run."""
    rng = random.Random(0)
    kill_during_save(tmp_path)
    for _ in range(4):
        kill_at(tmp_path, rng.uniform(8.0, 25.0))
    resume_to_end(tmp_path)
    check_resumed(tmp_path, reference)


# suite time: SIGTERM's stop, requeue and exact resume run by default in test_slurm (USR1 and the same
# step-boundary save); here the SIGTERM variant, which also runs the printed resume command, is slow
@pytest.mark.parametrize("signum, code", [pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow),
                                          (signal.SIGINT, 130)])
def test_signal_saves_checkpoint_and_exits_nonzero(reference, tmp_path, signum, code):
    """The first resume point is written before the first validation (step 2 < 8); the signal saves
    one at the next step boundary; (SIGTERM) the printed resume command (a run folder) finishes the
    run in the same MLflow run, with the uninterrupted run's adapters; resuming the finished run
    trains nothing."""
    proc = start(tmp_path, "task_name=sig")
    last = lambda: next(iter(tmp_path.glob("sig/runs/*/checkpoints/K2/last.ckpt")), None)  # noqa: E731
    assert wait_for(lambda: last() is not None, proc), proc.stderr.read() if proc.poll() is not None else ""
    first = torch.load(last(), weights_only=False)["global_step"]
    assert first < 8, f"the first resume point came at step {first}, with the first validation"
    os.kill(proc.pid, signum)
    _, stderr = proc.communicate(timeout=timeout(300))
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name} after step" in lines[0], stderr[-2000:]
    stopped = torch.load(last(), weights_only=False)["global_step"]
    assert f"after step {stopped}:" in lines[0] and 0 < stopped < 16
    assert [r.info.status for r in mlflow_runs(tmp_path)] == ["KILLED"]

    if signum == signal.SIGINT:  # the resume below is the same for both signals
        return
    command = lines[0].split("resume with: ", 1)[1].split()
    run_folder = last().parents[2]
    assert command[0:2] == ["python", "train.py"] and command[-1] == f"ckpt_path={run_folder}"
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), *command[2:]], cwd=ROOT, capture_output=True,
                             text=True, timeout=timeout(900))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    new_folder = next(p for p in tmp_path.glob("sig/runs/*") if p != run_folder)
    assert_same(reference[1], adapters(new_folder / "checkpoints/K2/last.ckpt"))
    runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"] and runs[0].data.tags["loramcl.resumes"] == "1"
    assert set(runs[0].data.metrics) == set(mlflow_runs(reference[0])[0].data.metrics)

    again = run_train(*TOY, "task_name=sig", f"ckpt_path={new_folder}", log_dir=tmp_path)
    assert again.returncode == 0 and "nothing to train" in again.stdout + again.stderr, again.stderr[-2000:]
    assert len(mlflow_runs(tmp_path)) == 1  # no empty run for it


def test_nan_loss_stops_with_one_line(tmp_path):
    proc = run_train(*TOY, "optim.optimizer.lr=1e30", "callbacks.model_checkpoint.every_n_train_steps=1",
                     "task_name=nanloss", log_dir=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "non-finite training loss (nan) in step" in lines[0], proc.stderr[-2000:]
    assert "hypothesis" in lines[0] and "last good checkpoint:" in lines[0]
    assert [r.info.status for r in mlflow_runs(tmp_path)] == ["FAILED"]
    ckpts = list(tmp_path.glob("nanloss/runs/*/checkpoints/K2/*.ckpt"))
    assert ckpts
    for path in ckpts:
        for name, tensor in adapters(path).items():
            assert torch.isfinite(tensor).all(), f"{path}: {name} is not finite"
    named = lines[0].split("last good checkpoint: ", 1)[1].split(" (step")[0]
    assert Path(named).is_file()
    tree = next(tmp_path.glob("nanloss/runs/*/config_tree.log")).read_text()  # was written empty
    assert "num_hypotheses: 2" in tree and "lr: 1.0e+30" in tree


def test_finished_run_without_metrics_gets_them_once(reference, tmp_path):
    """A run killed after its last checkpoint but before metrics.json (or signalled in its last step)
    would count as unfinished for ever (scripts/reproduce.py relaunched it at every call): continued
    with ckpt_path=auto, it trains nothing, validates its checkpoint once and writes metrics.json,
    equal to the uninterrupted run's, in the same MLflow run; after that, nothing at all happens."""
    import json
    import shutil

    log_dir = tmp_path / "logs"
    shutil.copytree(reference[0], log_dir)
    run = log_dir / "run"
    expected = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    proc = run_train(*TOY, "task_name=ref", f"hydra.run.dir={run}", "ckpt_path=auto", log_dir=log_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validating the checkpoint once" in proc.stdout + proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    val = [k for k in expected if k.startswith("val/")]
    assert val and set(val) <= set(metrics)
    for key in val:
        assert abs(metrics[key] - expected[key]) <= 1e-6 * max(1.0, abs(expected[key])), (key, metrics, expected)
    assert_same(reference[1], adapters(run / "checkpoints/K2/last.ckpt"))  # nothing trained
    assert [r.info.status for r in mlflow_runs(log_dir)] == ["FINISHED"]

    again = run_train(*TOY, "task_name=ref", f"hydra.run.dir={run}", "ckpt_path=auto", log_dir=log_dir)
    said = again.stdout + again.stderr
    assert again.returncode == 0 and "nothing to train" in said and "validating" not in said
    assert json.loads((run / "metrics.json").read_text()) == metrics
