"""The evaluation job of one training on SLURM, requeued without decoding a method twice.

    python -m loramcl.reproduce.eval_job <spec.json>
    python -m loramcl.reproduce.eval_job --run <train.py run folder> --decodings a,b,c [eval.py overrides]

`reproduce.py --slurm` writes the spec (the table's MLflow store and experiment, and per evaluation
group its eval.py command and decodings); scripts/slurm/eval_sweep.sh uses the second form, whose
group is the run folder and the overrides (tagged on its MLflow runs as reproduce.py's are). Each start, first or after a requeue, asks MLflow which
(group, decoding) are finished and runs eval.py for the others only, so a preempted sweep continues
with the methods not yet done instead of decoding every method again.

SLURM's warning before a time limit or a preemption (USR1 / USR2 to this process, `B:` in the job
script) stops the running eval.py (SIGTERM: it closes its MLflow run as KILLED) and requeues the job,
at most `max_requeues` times (LORAMCL_MAX_REQUEUES). SIGTERM / SIGINT stop it without a requeue.
Exit status: 0 when every evaluation finished, 1 when one failed, 128 + signal when stopped.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from loramcl.cluster import max_requeues, requeue_job, slurm_job_id, slurm_restart_count
from loramcl.interrupts import Interrupted, run_child
from loramcl.reproduce.state import finished_evaluations

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def pending(entry: dict[str, Any], finished: dict) -> list[str]:
    """`entry`'s decodings without a finished run."""
    return [d for d in entry["decodings"] if (entry["group"], d) not in finished]


def command_for(entry: dict[str, Any], decodings: list[str]) -> list[str]:
    """`entry`'s eval.py command for these decodings only."""
    return [f"decoding={','.join(decodings)}" if part.startswith("decoding=") else part for part in entry["command"]]


def run(spec: dict[str, Any], echo=print) -> int:
    """Every pending evaluation of `spec`, one eval.py after the other; the exit status."""
    warned: list[int] = []
    for signum in REQUEUE_SIGNALS:  # between two eval.py runs: requeue before the next
        signal.signal(signum, lambda received, frame: warned.append(received))
    status = 0
    for entry in spec["groups"]:
        if warned:
            return requeue(warned[0], echo)
        left = pending(entry, finished_evaluations(spec["tracking_uri"], spec["experiment"]))
        if not left:
            echo(f"evaluations of {entry['group']}: all {len(entry['decodings'])} done before")
            continue
        command = command_for(entry, left)
        done = len(entry["decodings"]) - len(left)
        if done:
            echo(f"evaluations of {entry['group']}: {done} method(s) done before, running the rest")
        sys.stdout.flush()
        try:  # the warning stops eval.py as SIGTERM does (its MLflow run closed as KILLED)
            code = run_child(command, also={signum: signal.SIGTERM for signum in REQUEUE_SIGNALS})
        except Interrupted as stop:
            if stop.signum in REQUEUE_SIGNALS:
                return requeue(stop.signum, echo)
            echo(f"error: stopped by {signal.Signals(stop.signum).name}: {stop.detail}")
            return 128 + int(stop.signum)
        status = status or int(code != 0)
    return status


def requeue(signum: int, echo=print) -> int:
    """Requeue this job (up to the cap); the exit status."""
    name = signal.Signals(signum).name
    restarts, cap = slurm_restart_count(), max_requeues()
    if restarts >= cap:
        echo(f"error: {name} received: the running evaluation was stopped; this job was requeued {restarts} "
             f"time(s) already (max_requeues {cap}): not requeued again; run reproduce.py --slurm to submit the rest")
        return 128 + signum
    failed = requeue_job()
    if failed:
        echo(f"error: {name} received: the running evaluation was stopped and the job not requeued ({failed})")
        return 128 + signum
    echo(f"{name} received: the running evaluation was stopped; SLURM job {slurm_job_id()} requeued: it "
         f"continues with the methods not finished yet")
    return 0


def sweep_spec(run: str, decodings: list[str], overrides: list[str], python: str = sys.executable) -> dict[str, Any]:
    """The spec of a decoding sweep over one run folder: eval.py's store and experiment as its config
    gives them, one group (the run folder and the overrides)."""
    import hashlib

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from loramcl.reproduce.runner import hydra_string
    from loramcl.reproduce.state import SWEEP_TAG

    root = Path(__file__).resolve().parents[3]
    folder = Path(run).expanduser().resolve()
    if folder.is_file() and len(folder.parents) > 2:  # a checkpoint: <run>/checkpoints/K3/x.ckpt
        folder = folder.parents[2]
    if not (folder / ".hydra" / "config.yaml").is_file():
        raise ValueError(f"{run} is not a train.py run folder (no .hydra/config.yaml) nor a checkpoint in one")
    with initialize_config_dir(config_dir=str(root / "configs"), version_base="1.3", job_name="eval"):
        cfg = compose("eval", overrides=[f"ckpt_path={folder}", *overrides])
    experiment = cfg.mlflow.experiment
    if not experiment:  # eval.py's default: eval_<the run's data name>
        saved = OmegaConf.load(folder / ".hydra" / "config.yaml")
        experiment = f"eval_{saved.data.get('name', 'data')}"
    group = hashlib.sha256(json.dumps([str(folder), sorted(overrides)]).encode()).hexdigest()[:12]
    command = [python, str(root / "eval.py"), "-m", f"ckpt_path={folder}", f"decoding={','.join(decodings)}",
               *overrides, f"mlflow.experiment={experiment}", f"mlflow.tags={{{SWEEP_TAG}:{hydra_string(group)}}}"]
    return {"tracking_uri": str(cfg.mlflow.tracking_uri), "experiment": str(experiment),
            "groups": [{"group": group, "decodings": decodings, "command": command}]}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--run"] and len(argv) >= 4 and argv[2] == "--decodings":
        try:
            spec = sweep_spec(argv[1], [d for d in argv[3].split(",") if d], argv[4:])
        except Exception as err:  # noqa: BLE001 - one line, before any decoding
            print(f"error: cannot plan the sweep of {argv[1]}: {' '.join(str(err).split())[:300] or type(err).__name__}",
                  file=sys.stderr)
            return 2
        return run(spec)
    if len(argv) != 1:
        print("usage: python -m loramcl.reproduce.eval_job <spec.json> | --run <run folder> --decodings a,b "
              "[eval.py overrides]", file=sys.stderr)
        return 2
    try:
        spec = json.loads(Path(argv[0]).read_text())
    except (OSError, ValueError) as err:
        print(f"error: cannot read the evaluation job's spec {argv[0]}: {err}", file=sys.stderr)
        return 2
    return run(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
