"""A table on SLURM: one job array of the missing trainings, one evaluation job per training (after
its array task succeeded), one collection job after everything (afterany, so that it reports what
failed), and `--status` reading back where each row stands.

The job scripts, their commands and the job ids go to logs/reproduce/<experiment>/slurm-<time>/ and
logs/reproduce/<experiment>/jobs.json (the latest submission, which `--status` reads). Trainings are
requeued on preemption as train.sh is (`--signal=B:USR1@300 --requeue`, `exec python`), and resume
from their fixed run folder (`ckpt_path=auto`).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from loramcl.errors import ConfigError
from loramcl.reproduce.plan import Table
from loramcl.reproduce.runner import eval_command, groups_of, quoted, set_aside, train_command
from loramcl.reproduce.state import RunIndex, evaluation_done, finished_evaluations


def jobs_file(log_dir: Path, table: Table) -> Path:
    return Path(log_dir) / "reproduce" / table.experiment / "jobs.json"


def sbatch_header(slurm: DictConfig, name: str, output: str, time_limit: str, gpus: Optional[int] = None) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={output}",
             f"#SBATCH --time={time_limit}", f"#SBATCH --cpus-per-task={int(slurm.cpus_per_task)}",
             "#SBATCH --ntasks=1"]
    gpus = int(slurm.gpus) if gpus is None else gpus
    if gpus > 0:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    for key in ("partition", "account", "qos", "mem"):
        if slurm.get(key):
            lines.append(f"#SBATCH --{key}={slurm[key]}")
    lines += [f"#SBATCH {option}" for option in slurm.get("extra") or []]
    return lines


def sbatch(script: Path, dependency: Optional[str] = None, array: Optional[str] = None) -> str:
    """Submit `script`; its job id."""
    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch is not on PATH: --slurm needs a SLURM login node "
                          "(or a local cluster: bash scripts/slurm/local_cluster.sh start)")
    command = ["sbatch", "--parsable"]
    if dependency:
        command.append(f"--dependency={dependency}")
    if array:
        command.append(f"--array={array}")
    result = subprocess.run(command + [str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigError(f"sbatch {script.name} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]


def submit(table: Table, cfg: DictConfig, root: Path, paths: dict[str, str], tracking_uri: str, python: str,
           collect_command: list[str], echo=print) -> dict[str, Any]:
    """Submit the missing work of `table`; returns (and writes to jobs.json) the job ids."""
    slurm = cfg.slurm
    log_dir = Path(paths["log_dir"])
    folder = Path(log_dir) / "reproduce" / table.experiment / time.strftime("slurm-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    index = RunIndex(log_dir)
    finished = finished_evaluations(tracking_uri, table.experiment)
    setup = [f"cd {shlex.quote(str(root))}", f"export PROJECT_ROOT={shlex.quote(str(root))}"]

    trainings = table.trainings()
    states = {t.key: index.state(t) for t in trainings}
    to_train = [t for t in trainings if states[t.key].status != "done"]
    for training in to_train:
        if states[training.key].status == "partial" and not training.resumes:
            echo(f"{training.runner} runs cannot resume; the interrupted one is kept as "
                 f"{set_aside(states[training.key].run_dir)}")
    record: dict[str, Any] = {"table": table.name, "scale": table.scale, "folder": str(folder),
                              "submitted": time.strftime("%Y-%m-%d %H:%M:%S"), "trainings": {}, "evaluations": {}, "evaluation_jobs": {}}
    array_id = None
    if to_train:
        commands = folder / "train_commands.txt"
        commands.write_text("".join(quoted(train_command(t, root, paths, python)) + "\n" for t in to_train))
        script = folder / "train_array.sh"
        header = sbatch_header(slurm, f"{table.name}-train", str(folder / "train-%A_%a.out"), slurm.time_train)
        header += ["#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --signal=B:USR1@300"]
        body = setup + [f'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(commands))})',
                        'eval "exec $line"  # exec: the preemption signal reaches python, which requeues the task']
        script.write_text("\n".join(header + body) + "\n")
        limit = f"%{int(slurm.max_parallel)}" if slurm.get("max_parallel") else ""
        array_id = sbatch(script, array=f"0-{len(to_train) - 1}{limit}")
        for i, training in enumerate(to_train):
            record["trainings"][training.key] = f"{array_id}_{i}"
        echo(f"submitted {len(to_train)} training(s) as array job {array_id}")

    eval_ids = []
    for training in trainings:
        pending = [ev for ev in table.evaluations(training) if not evaluation_done(ev, finished)]
        if not pending:
            continue
        run_dir = states[training.key].run_dir if states[training.key].status == "done" \
            else training.run_dir(log_dir)
        script = folder / f"eval-{training.key}.sh"
        header = sbatch_header(slurm, f"{table.name}-eval", str(folder / f"eval-{training.key}-%j.out"),
                               slurm.time_eval)
        body = setup + ["status=0"]
        for group in groups_of(pending):
            body.append(quoted(eval_command(group, run_dir, table, root, paths, tracking_uri, python)) + " || status=1")
        body.append("exit $status")
        script.write_text("\n".join(header + body) + "\n")
        dependency = f"afterok:{record['trainings'][training.key]}" if training.key in record["trainings"] else None
        job = sbatch(script, dependency=dependency)
        eval_ids.append(job)
        record["evaluation_jobs"][training.key] = job
        for ev in pending:
            record["evaluations"][f"{ev.group}/{ev.decoding}"] = job
        echo(f"submitted the {len(pending)} evaluation(s) of {training.key} as job {job}"
             + (f" (after {dependency.split(':', 1)[1]})" if dependency else ""))

    after = eval_ids or ([array_id] if array_id else [])
    script = folder / "collect.sh"
    header = sbatch_header(slurm, f"{table.name}-collect", str(folder / "collect-%j.out"), slurm.time_collect, gpus=0)
    script.write_text("\n".join(header + setup + ["exec " + quoted(collect_command)]) + "\n")
    record["collect"] = sbatch(script, dependency="afterany:" + ":".join(after) if after else None)
    echo(f"submitted the collection as job {record['collect']}" + (f" (after {', '.join(after)})" if after else ""))
    path = jobs_file(log_dir, table)
    path.write_text(json.dumps(record, indent=2))
    echo(f"job scripts and logs: {folder}; job ids: {path}")
    return record


def job_states(ids: list[str]) -> dict[str, str]:
    """{job id: SLURM state} from squeue (recent jobs, every state), then sacct for the rest."""
    states: dict[str, str] = {}
    if not ids:
        return states
    if shutil.which("squeue"):
        out = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i|%T", "-j", ",".join(ids)],
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
