"""Ctrl+C (SIGINT) and SIGTERM end every entry point with one `error:` line and 130 / 143.

Through the real command lines, started from a folder outside the repository and signalled while
they work: eval.py while it decodes (a single run and a multirun: nothing under a final name, the
MLflow run KILLED, the sweep's next job not started), scripts/prepare_data.py while it writes an
HDF5 split (no file, no partial left), and a local scripts/reproduce.py while its child train.py
trains (the child is passed the signal once, saves its checkpoint at the next step and closes its
MLflow run as KILLED before the runner ends). `loramcl.interrupts.run_child` with real child
processes: it waits for the child, and a third signal kills the child's whole process group.

"One line" is what a terminal shows: a progress bar erased with carriage returns is not a line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers import ROOT, TRANSLATION_ASSETS, timeout


def visible_lines(text: str) -> list[str]:
    """The non-blank lines a terminal shows: of each line, what follows its last carriage return."""
    return [shown for line in text.split("\n") if (shown := line.rsplit("\r", 1)[-1].strip())]


class Running:
    """A command started like a job in a shell (its own session, SIGINT at its default), its stdout
    and stderr collected as they come."""

    def __init__(self, args: list, cwd: Path):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # a shell starts background jobs with SIGINT ignored, which a child would inherit
        self.proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.chunks: dict[str, list[bytes]] = {"out": [], "err": []}
        self.readers = [threading.Thread(target=self._pump, args=(stream, self.chunks[name]), daemon=True)
                        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _pump(stream, chunks: list[bytes]) -> None:
        while chunk := os.read(stream.fileno(), 65536):
            chunks.append(chunk)

    def text(self, name: str) -> str:
        return b"".join(self.chunks[name]).decode("utf-8", "replace")

    def wait_for(self, predicate: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + timeout(seconds)
        while not predicate():
            assert self.proc.poll() is None, f"ended ({self.proc.returncode}) first:\n{self.text('err')[-3000:]}"
            assert time.monotonic() < deadline, f"not seen in {seconds} s:\n{self.text('err')[-3000:]}"
            time.sleep(0.05)

    def interrupt(self, signum: int, seconds: float = 120) -> tuple[int, float]:
        """`signum` to the whole process group (as a terminal's Ctrl+C); (exit status, seconds to exit)."""
        start = time.monotonic()
        os.killpg(self.proc.pid, signum)
        try:
            code = self.proc.wait(timeout=timeout(seconds))
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        for reader in self.readers:
            reader.join(timeout=10)
        return code, time.monotonic() - start


def statuses(log_dir: Path) -> dict[str, list[str]]:
    """{experiment: [run status, ...]} of the MLflow store of `log_dir`."""
    client = MlflowClient(f"sqlite:///{log_dir / 'mlflow.db'}")
    return {e.name: sorted(r.info.status for r in client.search_runs([e.experiment_id]))
            for e in client.search_experiments()}


def one_error_line(stderr: str, start_at: str = "") -> str:
    """The `error:` line, checked to be the only one and, from the line holding `start_at` on (from
    the start without it), the only line on the screen; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in visible_lines(stderr) if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    tail = stderr[stderr.rfind("\n", 0, stderr.index(start_at)) + 1:] if start_at else stderr
    assert visible_lines(tail) == errors, tail[-3000:]
    return errors[0]


# ---------------------------------------------------------------------------------------------- eval.py
# MLE sampling at temperature 10 (the 10-step tiny base rarely ends a text): 16 candidates of up to
# 300 tokens per item, one item per batch, ~1 s an item on a CPU core (the first one: seconds)
SLOW_DECODING = ["decoding=mle_sampling_ancestral", "decoding.temperature=10.0", "num_candidates=16",
                 "generation.max_new_tokens=300", "batch_size=1", "metrics.semantic=false"]


def test_sigint_while_decoding_leaves_no_results_and_a_killed_mlflow_run(translation_runs, tmp_path):
    run = Running([ROOT / "eval.py", f"ckpt_path={translation_runs['mle']}", *SLOW_DECODING,
                   f"paths.log_dir={tmp_path / 'logs'}"], cwd=tmp_path)
    run.wait_for(lambda: "decoding (mle_sampling_ancestral)" in run.text("err"), 300)
    code, seconds = run.interrupt(signal.SIGINT)
    stderr = run.text("err")
    assert code == 130, stderr[-3000:]
    line = one_error_line(stderr, start_at="decoding (mle_sampling_ancestral)")
    (folder,) = (tmp_path / "logs" / "eval" / "runs").iterdir()
    match = re.fullmatch(r"error: interrupted \(SIGINT\) while decoding \(mle_sampling_ancestral, (\d) of 8 items "
                         rf"done\); no results were written to {re.escape(str(folder))}; its MLflow run (\w+) was "
                         r"closed as KILLED", line)
    assert match, line
    assert int(match.group(1)) < 8
    assert not [p.name for p in folder.iterdir() if "predictions" in p.name or "metrics" in p.name]
    client = MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")
    assert client.get_run(match.group(2)).info.status == "KILLED"
    assert statuses(tmp_path / "logs") == {"Default": [], "eval_synth_en_de": ["KILLED"]}
    print(f"eval.py SIGINT while decoding: exit {code} {seconds:.1f} s after the signal: {line}")


def test_sigterm_stops_a_multirun_with_one_line(translation_runs, tmp_path):
    """The first of two jobs is stopped while it decodes: exit 143, the second job is not started."""
    run = Running([ROOT / "eval.py", "-m", f"ckpt_path={translation_runs['mle']}", *SLOW_DECODING, "seed=0,1",
                   f"paths.log_dir={tmp_path / 'logs'}"], cwd=tmp_path)
    run.wait_for(lambda: "decoding (mle_sampling_ancestral)" in run.text("err"), 300)
    code, seconds = run.interrupt(signal.SIGTERM)
    stderr = run.text("err")
    assert code == 143, stderr[-3000:]
    line = one_error_line(stderr, start_at="decoding (mle_sampling_ancestral)")
    assert line.startswith("error: interrupted (SIGTERM) while decoding (mle_sampling_ancestral, "), line
    assert "(job 0 of a multirun: the jobs after it were not run)" in line and "closed as KILLED" in line, line
    (sweep,) = (tmp_path / "logs" / "eval" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]
    assert not list(sweep.glob("*/predictions*")) and not list(sweep.glob("*/metrics*"))
    assert statuses(tmp_path / "logs")["eval_synth_en_de"] == ["KILLED"]
    print(f"eval.py -m SIGTERM while decoding: exit {code} {seconds:.1f} s after the signal: {line}")


# ---------------------------------------------------------------------------------------------- a script
def test_sigint_while_a_script_writes_a_split(tmp_path):
    """scripts/prepare_data.py generating 100000 synthetic images: stopped in the first split."""
    out = tmp_path / "shapes"
    run = Running([ROOT / "scripts" / "prepare_data.py", "synthetic-shapes", "--out", out, "--train", "100000",
                   "--val", "2", "--test", "2"], cwd=tmp_path)
    run.wait_for(lambda: re.search(r"shapes train: +\d+%.*\| [1-9]\d*/100000", run.text("err")) is not None, 120)
    code, seconds = run.interrupt(signal.SIGINT)
    stderr = run.text("err")
    assert code == 130, stderr[-3000:]
    line = one_error_line(stderr)
    assert line == "error: interrupted (SIGINT) while running `synthetic-shapes`; no partial file is left under a " \
                   "final name", line
    assert not out.exists() or not list(out.iterdir())  # no split, no .partial- file
    print(f"prepare_data.py SIGINT while writing: exit {code} {seconds:.1f} s after the signal")


# ---------------------------------------------------------------------------------------------- reproduce
def test_reproduce_passes_sigint_to_its_training_and_waits_for_its_checkpoint(translation_assets, tmp_path):
    """A local rehearsal of the MCL row alone (long enough: 400 steps of 100 epochs), Ctrl+C on its
    process group once the training wrote its first checkpoint: train.py gets exactly one SIGINT,
    saves last.ckpt at the step it names, closes its MLflow run as KILLED and exits 130; then the
    runner prints one line naming it and exits 130."""
    logs = tmp_path / "logs"
    trains = [*TRANSLATION_ASSETS, "trainer.max_epochs=100", "callbacks.model_checkpoint.every_n_train_steps=2"]
    run = Running([ROOT / "scripts" / "reproduce.py", "table=mt_ende", "scale=demo", "scale.steps=400",
                   "~table.rows.mle_r16", "~table.rows.mle_r48", "table.rows.mcl.methods=[mcl_beam1]",
                   "train_overrides=[" + ",".join(f'"{o}"' for o in trains) + "]",
                   f"paths.data_dir={translation_assets}", f"paths.log_dir={logs}", f"results_dir={tmp_path / 'results'}"],
                  cwd=tmp_path)
    checkpoints = lambda: list(logs.glob("rehearsal_alma_ende_mcl3/runs/reproduce-*/checkpoints/K3/last.ckpt"))  # noqa: E731
    run.wait_for(lambda: bool(checkpoints()), 600)
    first = torch.load(checkpoints()[0], weights_only=False)["global_step"]
    code, seconds = run.interrupt(signal.SIGINT, seconds=300)
    stderr, stdout = run.text("err"), run.text("out")
    assert code == 130, stderr[-3000:] + stdout[-3000:]
    line = one_error_line(stderr)
    (log_file,) = logs.glob("reproduce/rehearsal_mt_ende/train-*.log")
    (ckpt,) = checkpoints()
    match = re.fullmatch(rf"error: interrupted \(SIGINT\) while running the training job \(log: {re.escape(str(log_file))}\): "
                         r"train\.py \(pid (\d+)\) was passed SIGINT and exited with status 130 \(stopped by SIGINT "
                         rf"after step (\d+): checkpoint {re.escape(str(ckpt))}\); what is done is kept: the same "
                         r"command continues with the rest", line)
    assert match, line
    pid, step = int(match.group(1)), int(match.group(2))
    with pytest.raises(ProcessLookupError):  # the child ended before the runner
        os.kill(pid, 0)
    log = log_file.read_text()
    assert log.count("SIGINT received") == 1, log[-3000:]  # one Ctrl+C reached it, not two
    assert torch.load(ckpt, weights_only=False)["global_step"] == step > first
    assert statuses(logs)["rehearsal_alma_ende_mcl3"] == ["KILLED"]
    assert all("RUNNING" not in s for s in statuses(logs).values())
    assert "SIGINT passed on to train.py" in stdout
    print(f"reproduce.py SIGINT while training: exit {code} {seconds:.1f} s after the signal (checkpoint at "
          f"step {step}, the first one was at step {first}): {line}")


# ---------------------------------------------------------------------------------------------- run_child
CHILD_STOPS_SLOWLY = """
import signal, sys, time
def stop(signum, frame):
    time.sleep(1.0)  # saving something
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1], "w").close()
time.sleep(120)
"""

CHILD_IGNORES_WITH_GRANDCHILD = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(grandchild.pid))
time.sleep(120)
"""


def signal_me_when(path: Path, times: int, pause: float = 0.3) -> threading.Thread:
    """SIGTERM to this process `times` times once `path` exists."""
    def send() -> None:
        deadline = time.monotonic() + timeout(60)
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(times):
            time.sleep(pause)
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_run_child_passes_the_signal_on_and_waits(tmp_path):
    from loramcl.interrupts import Interrupted, run_child

    ready, before, echoed = tmp_path / "ready", signal.getsignal(signal.SIGTERM), []
    signal_me_when(ready, times=1)
    start = time.monotonic()
    with pytest.raises(Interrupted) as stop:
        run_child([sys.executable, "-c", CHILD_STOPS_SLOWLY, ready], echo=echoed.append)
    assert stop.value.signum == signal.SIGTERM and stop.value.child_code == 143 and stop.value.exit_code == 143
    assert time.monotonic() - start >= 1.0  # it waited for the child's own stop
    assert "was passed SIGTERM and exited with status 143" in stop.value.detail
    assert len(echoed) == 1 and "SIGTERM passed on to" in echoed[0]
    assert signal.getsignal(signal.SIGTERM) is before  # its handler is gone again


def test_run_child_third_signal_kills_the_whole_process_group(tmp_path):
    from loramcl.interrupts import Interrupted, run_child

    ready = tmp_path / "ready"
    signal_me_when(ready, times=3)
    with pytest.raises(Interrupted) as stop:
        run_child([sys.executable, "-c", CHILD_IGNORES_WITH_GRANDCHILD, ready])
    assert stop.value.child_code == -signal.SIGKILL
    grandchild = int(ready.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # killed too (it is reaped by init, a moment later)
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        try:
            with open(f"/proc/{grandchild}/stat") as handle:
                if handle.read().split(") ", 1)[1].startswith("Z"):  # a zombie: dead, not yet reaped
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the grandchild {grandchild} outlived its killed parent")


GC_PROGRAM = """
import os, signal, sys, time, weakref
from loramcl.interrupts import stop_on_signals

class Node:
    pass

def finalizer(ref):  # the signal arrives while Python runs a weakref callback (garbage collection)
    os.kill(os.getpid(), signal.SIG{name})
    time.sleep(0.01)

with stop_on_signals(outcome="nothing was written"):
    node = Node()
    ref = weakref.ref(node, finalizer)
    del node
    for _ in range(300):
        time.sleep(0.01)
    print("went on after the signal")
"""


@pytest.mark.parametrize("name, code", [("TERM", 143), ("INT", 130)])
def test_a_signal_during_garbage_collection_still_stops(tmp_path, name, code):
    """Python drops an exception raised in a finalizer ("Exception ignored in ..."): the stop is
    delivered again in the code that was running (seen as eval.py decoding on after SIGTERM when
    SQLAlchemy's weakref callbacks ran at that moment)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-c", GC_PROGRAM.format(name=name)], capture_output=True, text=True,
                          env=env, timeout=timeout(60), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == code, proc.stderr
    assert "went on" not in proc.stdout
    assert visible_lines(proc.stderr) == [f"error: interrupted (SIG{name}); nothing was written"]
