"""A table on SLURM: one job array of the missing trainings, one evaluation job per training (after
its array task succeeded), one collection job after everything (afterany, so that it reports what
failed), and `--status` reading back where each row stands.

The job scripts, their commands and the job ids go to logs/reproduce/<experiment>/slurm-<time>/ and
logs/reproduce/<experiment>/jobs.json (the latest submission, which `--status` reads). Resources,
time limits, the warning signal and the requeue cap default to configs/cluster/slurm.yaml (the
`slurm` node of configs/reproduce.yaml). A training with several processes (trainer=ddp / fsdp /
ddp_cpu) runs as `srun` with one task per device (an array per process layout); one process runs as
the batch script itself (`exec python`, `--signal=B:USR1`). Trainings are requeued on preemption
and resume from their fixed run folder (`ckpt_path=auto`); evaluation jobs are requeued too and
continue with the methods not finished yet (`loramcl.reproduce.eval_job`).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from loramcl.errors import ConfigError
from loramcl.reproduce.plan import Table
from loramcl.reproduce.runner import eval_command, sweeps_of, quoted, set_aside, train_command
from loramcl.reproduce.state import RunIndex, evaluation_done, finished_evaluations


def jobs_file(log_dir: Path, table: Table) -> Path:
    return Path(log_dir) / "reproduce" / table.experiment / "jobs.json"


@dataclass(frozen=True)
class Shape:
    """The processes of one job: one (the batch script runs python) or nodes x tasks_per_node, one
    per device, started by srun."""

    nodes: int = 1
    tasks_per_node: int = 1

    @property
    def parallel(self) -> bool:
        return self.nodes * self.tasks_per_node > 1


def training_shape(train_cfg: DictConfig, gpus: int) -> Shape:
    """The processes a training config asks for (`loramcl.identity.processes`)."""
    from loramcl.identity import processes

    return Shape(*processes(train_cfg.trainer, gpus))


def sbatch_header(slurm: DictConfig, name: str, output: str, time_limit: str, gpus: Optional[int] = None,
                  shape: Shape = Shape(), requeue: bool = False) -> list[str]:
    """#SBATCH lines: resources per task (`slurm.cpus_per_task`, `slurm.mem_per_task_gb` times the
    tasks of a node), GPUs (`slurm.gpus` for one process, one per task for several), and for a job
    that requeues itself the warning signal `slurm.signal_delay_s` before its end."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={output}",
             f"#SBATCH --time={time_limit}", f"#SBATCH --cpus-per-task={int(slurm.cpus_per_task)}"]
    gpus = int(slurm.gpus) if gpus is None else gpus
    if shape.parallel:
        lines += [f"#SBATCH --nodes={shape.nodes}", f"#SBATCH --ntasks-per-node={shape.tasks_per_node}"]
        gpus = shape.tasks_per_node if gpus > 0 else 0
    else:
        lines.append("#SBATCH --ntasks=1")
    if gpus > 0:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    lines.append(f"#SBATCH --mem={int(slurm.mem_per_task_gb) * shape.tasks_per_node}G")
    for key in ("partition", "account", "qos"):
        if slurm.get(key):
            lines.append(f"#SBATCH --{key}={slurm[key]}")
    if requeue:  # USR1 to every srun task, or to the batch script where python is the script itself
        to = "" if shape.parallel else "B:"
        lines += ["#SBATCH --requeue", "#SBATCH --open-mode=append",
                  f"#SBATCH --signal={to}{slurm.signal}@{int(slurm.signal_delay_s)}"]
    lines += [f"#SBATCH {option}" for option in slurm.get("extra") or []]
    return lines


class SubmissionError(ConfigError):
    """sbatch refused a job (a QOS or partition limit): the jobs submitted before it are recorded."""


def sbatch(script: Path, dependency: Optional[str] = None, array: Optional[str] = None) -> str:
    """Submit `script`; its job id. A job with a dependency is cancelled by SLURM when the
    dependency can no longer be satisfied (`--kill-on-invalid-dep=yes`: a stock cluster would
    otherwise keep it PENDING for ever, and the `afterany` collection behind it would never run)."""
    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch is not on PATH: --slurm needs a SLURM login node "
                          "(or a local cluster: bash scripts/slurm/local_cluster.sh start)")
    command = ["sbatch", "--parsable"]
    if dependency:
        command += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    if array:
        command.append(f"--array={array}")
    result = subprocess.run(command + [str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        said = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise SubmissionError(f"sbatch {script.name} failed: {'; '.join(said) or f'exit status {result.returncode}'}")
    return result.stdout.strip().split(";")[0]


class Submission:
    """The record of a table's submissions (jobs.json), written after every sbatch: a submission
    stopped half-way (a QOS limit) still knows the jobs it did submit. Jobs of an earlier
    submission that are still queued or running are carried over (and not submitted again)."""

    def __init__(self, path: Path, table: Table, folder: Path, previous: dict[str, Any], active: set[str]) -> None:
        self.path = path
        self.record: dict[str, Any] = {
            "table": table.name, "scale": table.scale, "folder": str(folder),
            "submitted": time.strftime("%Y-%m-%d %H:%M:%S"), "trainings": {}, "evaluations": {},
            "evaluation_jobs": {}}
        for part in ("trainings", "evaluations", "evaluation_jobs"):  # still in flight: kept
            self.record[part].update({k: j for k, j in (previous.get(part) or {}).items() if j in active})
        if previous.get("collect") in active:
            self.record["collect"] = previous["collect"]

    def add(self, part: str, key: str, job: str) -> None:
        self.record[part][key] = job
        self.save()

    def save(self) -> None:
        from loramcl.utils.atomic import write_text_atomic

        write_text_atomic(self.path, json.dumps(self.record, indent=2))


def in_flight(previous: dict[str, Any]) -> set[str]:
    """The jobs of an earlier submission that are queued or running now."""
    ids = [*(previous.get("trainings") or {}).values(), *(previous.get("evaluations") or {}).values(),
           *(previous.get("evaluation_jobs") or {}).values(), *([previous["collect"]] if previous.get("collect") else [])]
    ids = list(dict.fromkeys(ids))
    return {job for job, state in job_states(ids).items() if state in ACTIVE}


def submit(table: Table, cfg: DictConfig, root: Path, paths: dict[str, str], tracking_uri: str, python: str,
           collect_command: list[str], echo=print) -> dict[str, Any]:
    """Submit the missing work of `table` that is not queued or running already; returns (and
    writes to jobs.json, job by job) the job ids."""
    return TableSubmission(table, cfg.slurm, root, paths, tracking_uri, python, collect_command, echo).run()


class TableSubmission:
    """One `--slurm` call: what is missing and not in flight, submitted as a training array, one
    evaluation job per training and one collection job."""

    def __init__(self, table: Table, slurm: DictConfig, root: Path, paths: dict[str, str], tracking_uri: str,
                 python: str, collect_command: list[str], echo=print) -> None:
        self.table, self.slurm, self.root, self.paths = table, slurm, Path(root), paths
        self.tracking_uri, self.python, self.collect_command, self.echo = tracking_uri, python, collect_command, echo
        self.log_dir = Path(paths["log_dir"])
        self.path = jobs_file(self.log_dir, table)
        self.previous = submitted_jobs(self.log_dir, table)
        self.active = in_flight(self.previous) if self.previous else set()
        self.folder = self.log_dir / "reproduce" / table.experiment / time.strftime("slurm-%Y%m%d-%H%M%S")
        self.setup = [f"cd {shlex.quote(str(root))}", f"export PROJECT_ROOT={shlex.quote(str(root))}",
                      f"export LORAMCL_MAX_REQUEUES={int(slurm.max_requeues)}",  # the jobs' requeue cap
                      *(slurm.get("setup") or [])]  # the cluster's environment: module load, conda activate, ...
        index = RunIndex(self.log_dir)
        finished = finished_evaluations(tracking_uri, table.experiment)
        self.trainings = table.trainings()
        self.states = {t.key: index.state(t) for t in self.trainings}
        previous_trainings = self.previous.get("trainings") or {}
        self.running = {t.key: previous_trainings[t.key] for t in self.trainings
                        if previous_trainings.get(t.key) in self.active}
        self.to_train = [t for t in self.trainings if self.states[t.key].status != "done" and t.key not in self.running]
        queued = {key for key, job in (self.previous.get("evaluations") or {}).items() if job in self.active}
        self.pending = {t.key: [ev for ev in table.evaluations(t) if not evaluation_done(ev, finished)
                                and f"{ev.sweep}/{ev.decoding}" not in queued] for t in self.trainings}

    def run(self) -> dict[str, Any]:
        if not self.to_train and not any(self.pending.values()):
            self.echo(f"nothing to submit: {len(self.active)} job(s) of the last submission are queued or running"
                      if self.active else "nothing to submit: every training and evaluation is done")
            return self.previous
        if self.running:
            self.echo(f"{len(self.running)} training(s) already queued or running, not submitted again: "
                      + ", ".join(f"{k} ({j})" for k, j in self.running.items()))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.record = Submission(self.path, self.table, self.folder, self.previous, self.active)
        try:
            arrays = self._submit_trainings()
            new_evaluations = self._submit_evaluations()
            self._submit_collection([*arrays, *new_evaluations])
        except SubmissionError as err:
            done = {j.split("_")[0] for part in ("trainings", "evaluation_jobs")  # an array counts once
                    for j in self.record.record[part].values() if j not in self.active}
            raise SubmissionError(f"{err}; the {len(done)} job(s) submitted before it are recorded in {self.path}: "
                                  f"run the same command again to submit the rest") from None
        self.echo(f"job scripts and logs: {self.folder}; job ids: {self.path}")
        return self.record.record

    def _header(self, name: str, output: str, time_limit: str, gpus: Optional[int] = None,
                shape: Shape = Shape(), requeue: bool = False) -> list[str]:
        return sbatch_header(self.slurm, f"{self.table.name}-{name}", str(self.folder / output), time_limit, gpus,
                             shape, requeue)

    def _submit_trainings(self) -> list[str]:
        """One array per process layout (a job's header holds it); the array job ids."""
        for training in self.to_train:
            if self.states[training.key].status == "partial" and not training.resumes:
                self.echo(f"{training.runner} runs cannot resume; the interrupted one is kept as "
                          f"{set_aside(self.states[training.key].run_dir)}")
        layouts: dict[Shape, list] = {}
        for training in self.to_train:
            shape = training_shape(self.table.configs[training.key], int(self.slurm.gpus))
            layouts.setdefault(shape, []).append(training)
        return [self._submit_array(shape, trainings, len(layouts) > 1) for shape, trainings in layouts.items()]

    def _submit_array(self, shape: Shape, trainings: list, several: bool) -> str:
        suffix = f"-{shape.nodes}x{shape.tasks_per_node}" if several else ""
        commands = self.folder / f"train_commands{suffix}.txt"
        commands.write_text("".join(quoted(train_command(t, self.root, self.paths, self.python)) + "\n"
                                    for t in trainings))
        script = self.folder / f"train_array{suffix}.sh"
        header = self._header("train", f"train{suffix}-%A_%a.out", self.slurm.time_train, shape=shape, requeue=True)
        # one process: exec, so that the warning signal (B:) reaches python, which requeues the task;
        # several: srun starts one per device and SLURM signals each
        launch = "srun --kill-on-bad-exit=1 $line" if shape.parallel else "exec $line"
        body = self.setup + [f'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(commands))})',
                             f'eval "{launch}"']
        script.write_text("\n".join(header + body) + "\n")
        limit = f"%{int(self.slurm.max_parallel)}" if self.slurm.get("max_parallel") else ""
        array_id = sbatch(script, array=f"0-{len(trainings) - 1}{limit}")
        self.record.record["trainings"].update({t.key: f"{array_id}_{i}" for i, t in enumerate(trainings)})
        self.record.save()
        layout = f" ({shape.nodes} node(s) x {shape.tasks_per_node} task(s) each, srun)" if shape.parallel else ""
        self.echo(f"submitted {len(trainings)} training(s) as array job {array_id}{layout}")
        return array_id

    def _submit_evaluations(self) -> list[str]:
        """One job per training with evaluations to run, after its training job (new or in flight).
        The job runs `loramcl.reproduce.eval_job` on a spec of its eval.py commands: requeued, it
        continues with the methods not finished yet."""
        jobs = []
        for training in self.trainings:
            pending = self.pending[training.key]
            if not pending:
                continue
            state = self.states[training.key]
            run_dir = state.run_dir if state.status == "done" else training.run_dir(self.log_dir)
            spec = self.folder / f"eval-{training.key}.json"
            spec.write_text(json.dumps({
                "tracking_uri": self.tracking_uri, "experiment": self.table.experiment,
                "groups": [{"group": group[0].sweep, "decodings": [ev.decoding for ev in group],
                            "command": eval_command(group, run_dir, self.table, self.root, self.paths,
                                                    self.tracking_uri, self.python)}
                           for group in sweeps_of(pending)]}, indent=2))
            script = self.folder / f"eval-{training.key}.sh"
            header = self._header("eval", f"eval-{training.key}-%j.out", self.slurm.time_eval, requeue=True)
            body = self.setup + ["exec " + quoted([self.python, "-m", "loramcl.reproduce.eval_job", str(spec)])]
            script.write_text("\n".join(header + body) + "\n")
            after = self.record.record["trainings"].get(training.key) if state.status != "done" else None
            job = sbatch(script, dependency=f"afterok:{after}" if after else None)
            jobs.append(job)
            self.record.record["evaluations"].update({f"{ev.sweep}/{ev.decoding}": job for ev in pending})
            self.record.add("evaluation_jobs", training.key, job)
            self.echo(f"submitted the {len(pending)} evaluation(s) of {training.key} as job {job}"
                      + (f" (after {after})" if after else ""))
        return jobs

    def _submit_collection(self, new_jobs: list[str]) -> None:
        """After every job of the table in flight, old and new (afterany: it reports failures); the
        last submission's collection, if still waiting, is cancelled (it would report too early)."""
        old = self.record.record.pop("collect", None)
        after = [*new_jobs, *sorted(self.active - {old})]
        script = self.folder / "collect.sh"
        header = self._header("collect", "collect-%j.out", self.slurm.time_collect, gpus=0)
        script.write_text("\n".join(header + self.setup + ["exec " + quoted(self.collect_command)]) + "\n")
        self.record.record["collect"] = sbatch(script, dependency="afterany:" + ":".join(after) if after else None)
        self.record.save()
        self.echo(f"submitted the collection as job {self.record.record['collect']}"
                  + (f" (after {', '.join(after)})" if after else ""))
        if old:
            subprocess.run(["scancel", old], capture_output=True)


def job_states(ids: list[str]) -> dict[str, str]:
    """{job id: SLURM state} from squeue (recent jobs, every state), then sacct for the rest."""
    states: dict[str, str] = {}
    if not ids:
        return states
    if shutil.which("squeue"):
        out = subprocess.run(["squeue", "-h", "-a", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(ids)],
                             capture_output=True, text=True)
        for line in out.stdout.splitlines():
            job, _, state = line.partition("|")
            states[job.strip()] = state.strip()
    rest = [i for i in ids if i not in states]
    if rest and shutil.which("sacct"):
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(rest)],
                             capture_output=True, text=True)
        if out.returncode == 0:
            for line in out.stdout.splitlines():
                job, _, state = line.partition("|")
                states.setdefault(job.strip(), state.split()[0] if state else "")
    return states


ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def submitted_jobs(log_dir: Path, table: Table) -> dict[str, Any]:
    path = jobs_file(log_dir, table)
    return json.loads(path.read_text()) if path.is_file() else {}


def job_outcomes(log_dir: Path, table: Table) -> tuple[set, set]:
    """(failed, running) keys of the table's last submission, from its jobs' SLURM states: training
    keys, and (group, decoding) of evaluations. A job that ended other than COMPLETED failed (a
    cancelled evaluation: its training failed)."""
    jobs = submitted_jobs(log_dir, table)
    if not jobs or shutil.which("squeue") is None:
        return set(), set()
    keyed = [*((key, job) for key, job in (jobs.get("trainings") or {}).items()),
             *((tuple(key.split("/", 1)), job) for key, job in (jobs.get("evaluations") or {}).items())]
    states = job_states(list(dict.fromkeys(job for _, job in keyed)))
    failed = {key for key, job in keyed if states.get(job) and states[job] not in ACTIVE and states[job] != "COMPLETED"}
    running = {key for key, job in keyed if states.get(job) in ACTIVE}
    return failed, running
