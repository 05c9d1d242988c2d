"""Several evaluations' candidates for the same items side by side, in one HTML page
(src/loramcl/evaluation/side_by_side.py; each evaluation's own page is its candidates.html).

    python scripts/browse.py logs/eval/multiruns/<time> --out results/side_by_side.html   # a sweep
    python scripts/browse.py <eval folder> <eval folder> ...                              # chosen ones
    python scripts/browse.py --experiment eval_synth_en_de                                # an MLflow experiment

The page opens from any laptop (one file, media embedded within a size budget): per item the input,
the references and every method's K candidates with the oracle-best marked and a link to the item
on the evaluation's own page; filters for the items where the methods disagree most and where
LoRA-MCL's oracle wins or loses.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(os.environ.get("PROJECT_ROOT") or Path(__file__).resolve().parents[1])


def main(argv: list[str] | None = None) -> int:
    from loramcl.cli import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="eval.py run folders, or folders holding them (a sweep)")
    parser.add_argument("--experiment", help="an MLflow experiment's evaluations instead (e.g. eval_synth_en_de)")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'logs' / 'mlflow.db'}")
    parser.add_argument("--out", type=Path, default=None, help="the page (default: results/side_by_side_<name>.html)")
    parser.add_argument("--no-inputs", action="store_true", help="do not read the run's test data for the inputs")
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.experiment):
        parser.error("give evaluation folders or --experiment NAME (one of them)")
    from loramcl.evaluation.side_by_side import experiment_evaluations, find_evaluations, write_side_by_side

    try:
        folders = experiment_evaluations(args.tracking_uri, args.experiment) if args.experiment else \
            find_evaluations(args.paths)
        name = args.experiment or args.paths[0].resolve().name
        out = args.out or ROOT / "results" / f"side_by_side_{name}.html"
        if out.exists():
            print(f"error: {out} already exists: give --out another file (nothing is replaced)", file=sys.stderr)
            return 1
        page = write_side_by_side(folders, out, with_inputs=not args.no_inputs)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {page} ({len(folders)} evaluations, {page.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    from loramcl.cli import run_script

    sys.exit(run_script(main))
