"""Many SLURM jobs logging to one MLflow store at once: what arrives.

    python bench/tracking_concurrency.py --uri http://host:5000 --uri sqlite:////shared/logs/mlflow.db \
        [--tasks 16] [--params 100] [--metrics 10] [--steps 50] [--sbatch-arg=--partition=debug]

For each store, one job array of `--tasks` tasks starts together (sbatch --array); each task opens a
run the way train.py does (`loramcl.utils.mlflow_store.MLflowRun`: experiment, run, params, metric
steps, FINISHED) and reports its own errors. Then the store is read back: runs FINISHED, params and
metric values found, against what was sent. Prints one table (markdown); `--json FILE` writes it too.
A task's error (e.g. "database is locked") is counted as lost, with its first line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(uri: str, experiment: str, task: int, params: int, metrics: int, steps: int, artifacts: str) -> int:
    """One array task: a run with `params` params and `metrics` metrics over `steps` steps."""
    from loramcl.utils.mlflow_store import MLflowRun

    try:
        run = MLflowRun(uri, experiment, artifacts, f"task{task}", tags={"bench.task": str(task)})
        run.log_params({f"p{i}": f"{task}-{i}" for i in range(params)})
        for step in range(steps):
            run.log_metrics({f"m{j}": float(task * 1000 + step) for j in range(metrics)}, step=step)
        run.finish()
    except Exception as err:  # noqa: BLE001 - the count of what was lost is the point
        print(f"task {task} failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}", file=sys.stderr)
        return 1
    return 0


def submit_array(uri: str, experiment: str, args: argparse.Namespace, folder: Path) -> str:
    script = folder / f"{experiment}.sh"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--uri", uri, "--experiment", experiment,
               "--params", str(args.params), "--metrics", str(args.metrics), "--steps", str(args.steps),
               "--artifacts", str(folder / "mlartifacts")]
    script.write_text("#!/bin/bash\n" + f"#SBATCH --output={folder}/{experiment}-%a.out\n"
                      + " ".join(f"'{c}'" for c in command) + ' --task "$SLURM_ARRAY_TASK_ID"\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(["sbatch", "--parsable", f"--array=0-{args.tasks - 1}", "--ntasks=1", "--cpus-per-task=1",
                           *args.sbatch_arg, str(script)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"error: sbatch failed: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def wait(job: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        if not any(s in out for s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")):
            return
        time.sleep(0.5)
    raise SystemExit(f"error: array job {job} still running after {timeout:.0f} s")


def read_back(uri: str, experiment: str, args: argparse.Namespace, folder: Path, seconds: float) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=10000) if exp else []
    finished = [r for r in runs if r.info.status == "FINISHED"]
    params = sum(len(r.data.params) for r in runs)
    values = sum(len(client.get_metric_history(r.info.run_id, f"m{j}")) for r in runs for j in range(args.metrics))
    errors = [line for f in sorted(folder.glob(f"{experiment}-*.out"))
              for line in f.read_text(errors="replace").splitlines() if " failed: " in line]
    sent_values = args.tasks * args.metrics * args.steps
    return {"store": uri.split(":", 1)[0] if not uri.startswith("http") else "server (SQLite behind it)",
            "uri": uri, "tasks": args.tasks, "runs finished": len(finished),
            "params arrived": f"{params}/{args.tasks * args.params}",
            "metric values arrived": f"{values}/{sent_values}", "failed tasks": len(errors),
            "first error": errors[0].split(" failed: ", 1)[1][:120] if errors else "", "wall s": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", action="append", required=True, help="a tracking URI (repeat for several stores)")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--params", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--sbatch-arg", action="append", default=[])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--experiment", help=argparse.SUPPRESS)
    parser.add_argument("--task", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.uri[0], args.experiment, args.task, args.params, args.metrics, args.steps, args.artifacts)
    folder = Path(tempfile.mkdtemp(prefix="tracking-bench-"))
    rows = []
    for number, uri in enumerate(args.uri):
        experiment = f"concurrency{number}_{int(time.time())}"
        start = time.monotonic()
        job = submit_array(uri, experiment, args, folder)
        wait(job, args.timeout)
        rows.append(read_back(uri, experiment, args, folder, time.monotonic() - start))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
