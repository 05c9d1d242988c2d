"""Print the acceptance table of toy runs from their summary.json files.

    python scripts/toy_report.py logs/transition1 logs/transition2      # every summary.json below
"""

import argparse
import json
import sys
from pathlib import Path

from loramcl.cli import ArgumentParser  # one-line errors
from loramcl.toy.acceptance import check_summary


def read_summary(path: Path) -> dict:
    """A toy run's summary.json, or MissingResource naming the file and what is wrong with it."""
    from loramcl.errors import MissingResource

    try:
        summary = json.loads(path.read_text())
        summary["theory"]["mcl_band"], summary["models"]["mle"], summary["models"]["mcl"]["assignment"]
        summary["experiment"], summary["seed"]
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MissingResource(f"{path} cannot be read as a toy run's summary.json ({' '.join(str(err).split())[:120]})") from None
    except (KeyError, TypeError) as err:
        raise MissingResource(f"{path} is not a toy run's summary.json (no {err}): is it from train.py "
                              f"task=toy_markov?") from None
    return summary


def main() -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="summary.json files or folders to search")
    args = parser.parse_args()
    files = [p for path in args.paths for p in ([path] if path.is_file() else sorted(path.rglob("summary.json")))]
    if not files:
        print("error: no summary.json found under " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 1
    summaries = [(f, read_summary(f)) for f in files]  # every file is read (and judged) before the table starts
    failed = 0
    print("| run | mode | seed | MCL loss | band | true chains on val set | MLE loss | MLE opt (RF opt) | "
          "Bayes on val set | MCL matrix err | MLE matrix err | pass |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f, s in summaries:
        checks = check_summary(s)
        ok = all(passed for passed, _ in checks.values())
        failed += not ok
        th, mle, mcl = s["theory"], s["models"]["mle"], s["models"]["mcl"]
        errs = ", ".join(f"{a['max_abs_error']:.3f}" for a in mcl["assignment"])
        print(f"| {s['experiment']} | {mcl['mode']} | {s['seed']} | {mcl['eval_wta_loss']:.4f} | "
              f"[{th['mcl_band'][0]:.4f}, {th['mcl_band'][1]:.4f}] | {th['validation_set']['mcl_true_chains_wta']:.4f} | "
              f"{mle['eval_wta_loss']:.4f} | {th['mle_optimum']:.4f} ({th['mle_receptive_field_optimum']:.4f}) | "
              f"{th['validation_set']['mle_optimum']:.4f} | {errs} | "
              f"{mle['average_max_abs_error']:.3f} | {'yes' if ok else 'NO: ' + '; '.join(k for k, (p, _) in checks.items() if not p)} |")
    return 1 if failed else 0


if __name__ == "__main__":
    from loramcl.cli import run_script
    from loramcl.interrupts import stop_on_signals

    with stop_on_signals():  # Ctrl+C / SIGTERM: one `error:` line, exit status 130 / 143
        sys.exit(run_script(main))
