"""One command per paper table: train every row, evaluate every method, collect results/<table>/.

    python scripts/reproduce.py table=audio_loss_vs_k                  # here, one job after the other
    python scripts/reproduce.py table=mt_ende scale=demo               # CPU rehearsal (synthetic data, tiny models)
    python scripts/reproduce.py table=textcaps --slurm                 # array + afterok evaluations + collection
    python scripts/reproduce.py table=textcaps --status                # per row: done / running / failed / missing
    python scripts/reproduce.py table=toy --dry-run                    # what would run, what is done
    python scripts/reproduce.py table=mt_ende --collect                # only rewrite results/mt_ende/

Tables are configs/table/*.yaml, scales configs/scale/*.yaml, the rest configs/reproduce.yaml. What is
done is found, not redone: trainings by a hash of their config, evaluations in MLflow. Running it
again after a crash or a failure finishes only what is missing. docs/reproduce.md has every table's
data, models, GPU hours and expected figures. The logic lives in src/loramcl/reproduce/.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

from loramcl.reproduce.main import main  # noqa: E402

if __name__ == "__main__":
    from loramcl.cli import run_script
    from loramcl.interrupts import stop_on_signals

    # Ctrl+C / SIGTERM: one `error:` line, exit status 130 / 143
    with stop_on_signals(outcome="what is done is kept: the same command continues with the rest"):
        sys.exit(run_script(main, root=ROOT))
