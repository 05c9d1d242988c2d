"""The jobs of a table as command lines, and running what is missing here, one job after the other.

A training runs `train.py <row overrides> hydra.run.dir=logs/<task_name>/runs/reproduce-<key>
ckpt_path=auto`: a fixed folder per config key, so a training that was interrupted continues from
its last checkpoint when the table is run again. The evaluations of one training with the same
eval.py overrides run as one `eval.py -m decoding=a,b,...` (the model is checked once per job, the
interpreter starts once), tagged with their group so that the table finds them in MLflow.

Every job writes its output to a log file under logs/reproduce/<experiment>/; a failed job is
reported with the tail of its log and does not stop the others (its evaluations are skipped).

Ctrl+C / SIGTERM stop the table: the running job is passed the signal (`loramcl.interrupts.run_child`:
train.py saves a checkpoint at the next step and closes its MLflow run as KILLED, eval.py closes
its run as KILLED), waited for, and `Interrupted` is raised naming it, its exit status and its log;
running the same command again continues from there. A second Ctrl+C is passed on too (train.py
then stops at once), a third kills the job.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from loramcl.interrupts import Interrupted, doing, run_child
from loramcl.reproduce.plan import Evaluation, Table, Training
from loramcl.reproduce.state import SWEEP_TAG, TABLE_TAG, RunIndex, evaluation_done, finished_evaluations


def train_command(training: Training, root: Path, paths: dict[str, str], python: str) -> list[str]:
    """train.py into the training's fixed folder; `ckpt_path=auto` (continue what is there) for the
    runners that resume (finetune; the toy and bilingual runners train two models from scratch).
    `paths`: the reproduce config's paths.log_dir / data_dir, passed on to every job."""
    resume = ["ckpt_path=auto"] if training.resumes else []
    return [python, str(root / "train.py"), *training.overrides, *path_overrides(paths),
            f"hydra.run.dir={training.run_dir(Path(paths['log_dir']))}", *resume, "extras.print_config=false"]


def path_overrides(paths: dict[str, str]) -> list[str]:
    return [f"paths.{key}={value}" for key, value in paths.items()]


def set_aside(run_dir: Path) -> Path:
    """Move an interrupted run of a runner that cannot resume out of the way (kept, renamed)."""
    target = run_dir.with_name(run_dir.name + time.strftime(".interrupted-%Y%m%d-%H%M%S"))
    run_dir.rename(target)
    return target


def eval_command(evaluations: list[Evaluation], run_dir: Path, table: Table, root: Path, paths: dict[str, str],
                 tracking_uri: str, python: str) -> list[str]:
    """One eval.py multirun over the decodings of `evaluations` (one group: same training, same overrides)."""
    first = evaluations[0]
    # quoted: Hydra would read an unquoted hash such as 12e345678901 as a number (inf)
    tags = f"{{{SWEEP_TAG}:{hydra_string(first.sweep)},{TABLE_TAG}:{hydra_string(table.name)}}}"
    return [python, str(root / "eval.py"), "-m", f"ckpt_path={run_dir}",
            "decoding=" + ",".join(ev.decoding for ev in evaluations), *first.overrides,
            f"paths.log_dir={paths['log_dir']}",
            f"mlflow.experiment={table.experiment}", f"mlflow.tracking_uri={tracking_uri}", f"mlflow.tags={tags}",
            "skip_unsuited=false"]


def hydra_string(value: str) -> str:
    """`value` as a quoted string of Hydra's override grammar (never read as a number, bool or null)."""
    return "'" + str(value).replace("'", "\\'") + "'"  # (a backslash is literal unless a quote follows)


def sweeps_of(evaluations: list[Evaluation]) -> list[list[Evaluation]]:
    """Evaluations split by group, in order."""
    out: dict[str, list[Evaluation]] = {}
    for ev in evaluations:
        out.setdefault(ev.sweep, []).append(ev)
    return list(out.values())


def quoted(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


def job_ended(stop: Interrupted, log_file: Path) -> str:
    """How an interrupted job ended: `stop`'s detail and the job's own last `error:` line (train.py:
    the step and checkpoint it stopped at)."""
    last = ""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
        last = next((line[len("error: "):] for line in reversed(lines) if line.startswith("error: ")), "")
    except OSError:
        pass
    last = last.split("; resume with:", 1)[0]  # the runner resumes it itself
    return f"{stop.detail}" + (f" ({last})" if last else "")


@dataclass
class Outcome:
    """What one local pass did."""

    trained: list[str] = field(default_factory=list)  # training keys run now
    reused: list[str] = field(default_factory=list)  # training keys found done
    evaluated: list[tuple[str, str]] = field(default_factory=list)  # (group, decoding) run now
    failed: dict = field(default_factory=dict)  # training key or (group, decoding) -> log file


class LocalRunner:
    """Runs a table's missing jobs in this machine's processes, reporting progress as it goes."""

    def __init__(self, table: Table, root: Path, paths: dict[str, str], tracking_uri: str,
                 python: Optional[str] = None, echo=print, index: Optional[RunIndex] = None) -> None:
        self.table, self.root, self.paths, self.tracking_uri = table, Path(root), paths, tracking_uri
        self.log_dir = Path(paths["log_dir"])
        self.python = python or sys.executable
        self.echo = echo
        self.job_logs = self.log_dir / "reproduce" / table.experiment
        self.index = index or RunIndex(self.log_dir)  # the caller's, so logs/ is scanned at most once

    def _run(self, command: list[str], log_file: Path, what: str) -> bool:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        self.echo(f"  {what}: running (log: {log_file})")
        with open(log_file, "a") as handle:
            handle.write(f"\n$ {quoted(command)}\n")
            handle.flush()
            env = dict(os.environ, PROJECT_ROOT=str(self.root))
            doing(f"running the {what} job (log: {log_file})")
            try:
                code = run_child(command, echo=self.echo, stdout=handle, stderr=subprocess.STDOUT, cwd=self.root,
                                 env=env)
            except Interrupted as stop:
                raise Interrupted(stop.signum, job_ended(stop, log_file)) from None
            doing(None)
        seconds = time.monotonic() - start
        if code == 0:
            self.echo(f"  {what}: done in {seconds:.0f} s")
            return True
        tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
        self.echo(f"  {what}: FAILED (exit {code}, {seconds:.0f} s); last lines of {log_file}:")
        for line in tail:
            self.echo(f"      {line}")
        return False

    def run(self) -> Outcome:
        outcome = Outcome()
        trainings = self.table.trainings()
        finished = finished_evaluations(self.tracking_uri, self.table.experiment)
        for number, training in enumerate(trainings, 1):
            rows = ", ".join(r.id for r in self.table.rows if r.training.key == training.key)
            self.echo(f"[{number}/{len(trainings)}] {rows}: train.py {training.describe()} (key {training.key})")
            state = self.index.state(training)
            if state.status == "done":
                self.echo(f"  training: done before ({state.run_dir})")
                outcome.reused.append(training.key)
                run_dir = state.run_dir
            else:
                if state.status == "partial" and training.resumes:
                    self.echo(f"  training: continuing the interrupted run in {state.run_dir}")
                elif state.status == "partial":
                    self.echo(f"  training: {training.runner} runs cannot resume; the interrupted one is kept as "
                              f"{set_aside(state.run_dir)}")
                log_file = self.job_logs / f"train-{training.key}.log"
                if not self._run(train_command(training, self.root, self.paths, self.python), log_file, "training"):
                    outcome.failed[training.key] = log_file
                    continue
                outcome.trained.append(training.key)
                run_dir = training.run_dir(self.log_dir)
            pending = [ev for ev in self.table.evaluations(training) if not evaluation_done(ev, finished)]
            done = len(self.table.evaluations(training)) - len(pending)
            if done:
                self.echo(f"  evaluation: {done} method(s) done before")
            for group in sweeps_of(pending):
                names = ",".join(ev.decoding for ev in group)
                log_file = self.job_logs / f"eval-{group[0].sweep}.log"
                command = eval_command(group, run_dir, self.table, self.root, self.paths, self.tracking_uri, self.python)
                ok = self._run(command, log_file, f"evaluation ({names})")
                finished = finished_evaluations(self.tracking_uri, self.table.experiment)
                for ev in group:
                    if evaluation_done(ev, finished):
                        outcome.evaluated.append((ev.sweep, ev.decoding))
                    elif not ok:
                        outcome.failed[(ev.sweep, ev.decoding)] = log_file
        return outcome
