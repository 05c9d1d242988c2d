"""The evaluation job of one training on SLURM: `python -m loramcl.reproduce.eval_job <spec.json>`.

`reproduce.py --slurm` writes the spec (the table's MLflow store and experiment, and per evaluation
group its eval.py command and decodings). Each start, first or after a requeue, asks MLflow which
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


def pending_command(entry: dict[str, Any], finished: dict) -> list[str]:
    """`entry`'s eval.py command for its decodings not finished yet ([] when none is left)."""
    left = [d for d in entry["decodings"] if (entry["group"], d) not in finished]
    if not left:
        return []
    return [f"decoding={','.join(left)}" if part.startswith("decoding=") else part for part in entry["command"]]


def run(spec: dict[str, Any], echo=print) -> int:
    """Every pending evaluation of `spec`, one eval.py after the other; the exit status."""
    warned: list[int] = []
    for signum in REQUEUE_SIGNALS:  # between two eval.py runs: requeue before the next
        signal.signal(signum, lambda received, frame: warned.append(received))
    status = 0
    for entry in spec["groups"]:
        if warned:
            return requeue(warned[0], echo)
        command = pending_command(entry, finished_evaluations(spec["tracking_uri"], spec["experiment"]))
        if not command:
            echo(f"evaluations of {entry['group']}: all {len(entry['decodings'])} done before")
            continue
        done = len(entry["decodings"]) - _count(command)
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


def _count(command: list[str]) -> int:
    part = next(p for p in command if p.startswith("decoding="))
    return len(part[len("decoding="):].split(","))


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


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m loramcl.reproduce.eval_job <spec.json>", file=sys.stderr)
        return 2
    try:
        spec = json.loads(Path(argv[0]).read_text())
    except (OSError, ValueError) as err:
        print(f"error: cannot read the evaluation job's spec {argv[0]}: {err}", file=sys.stderr)
        return 2
    return run(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
