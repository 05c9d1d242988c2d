"""Turn the evaluation runs of MLflow experiments into CSV, LaTeX tables and quality-versus-diversity plots.

    python scripts/collect_results.py --experiment eval_demo_audio            # -> results/eval_demo_audio.*
    python scripts/collect_results.py --all --out paper/tables                # every experiment with eval runs
    python scripts/collect_results.py --experiment eval_clotho --quality oracle_cider_d --diversity div_2
    python scripts/collect_results.py --tracking-uri sqlite:////abs/logs/mlflow.db --all

The defaults (logs/mlflow.db, results/) are those of the project folder, as train.py and eval.py
use them, from whatever folder the script runs. Per experiment it writes <out>/<experiment>.csv, <experiment>.tex (one booktabs table) and
<experiment>_quality_diversity.png / .pdf, replacing earlier files of the same experiment (kept in
<out>/previous/<time>/), and prints the table. An earlier CSV with more complete lines than the new
results is never replaced (one `error:` line, exit 1, nothing written) unless --force. The logic
lives in src/loramcl/evaluation/collect.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(os.environ.get("PROJECT_ROOT") or Path(__file__).resolve().parents[1])  # as train.py's paths.root_dir

from loramcl.cli import ArgumentParser  # one-line errors
from loramcl.metrics.registry import METRICS  # noqa: E402
from loramcl.evaluation.collect import (CollectError, best_rows, check_outputs, collect,  # noqa: E402
                                        format_value, group_by_experiment, metric_columns, output_paths,
                                        write_outputs)
from loramcl.utils.atomic import FewerResults  # noqa: E402

DEFAULT_TRACKING_URI = f"sqlite:///{ROOT / 'logs' / 'mlflow.db'}"  # train.py / eval.py's default store


def print_table(experiment: str, rows: list[dict], console) -> None:
    from rich.table import Table

    columns = metric_columns(rows)
    best = {key: best_rows(rows, key) for key in columns if key != "forward_passes"}
    table = Table(title=f"{experiment} ({rows[0]['task_type'] or 'task type unknown'}); bold = best of the column",
                  title_justify="left")
    for name in ("Scheme", "Method", "K"):
        table.add_column(name)
    for key in columns:
        arrow = "" if METRICS[key].family == "cost" else (" ↑" if METRICS[key].higher else " ↓")
        table.add_column(METRICS[key].label + arrow, justify="right")
    previous = None
    for i, r in enumerate(rows):
        cells = [r["scheme"] if r["scheme"] != previous else "", r["method"], str(r["K"])]
        for key in columns:
            text = format_value(key, r.get(key)) or "-"
            cells.append(f"[bold]{text}[/bold]" if i in best.get(key, ()) else text)
        table.add_row(*cells, end_section=i + 1 < len(rows) and rows[i + 1]["scheme"] != r["scheme"])
        previous = r["scheme"]
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                        help=f"MLflow store (default {DEFAULT_TRACKING_URI})")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", nargs="+", action="extend", metavar="NAME",
                       help="experiment (evaluation task) name(s), e.g. eval_demo_audio")
    which.add_argument("--all", action="store_true", help="every experiment that holds evaluation runs")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help=f"output folder (default {ROOT / 'results'})")
    parser.add_argument("--quality", help="plot y axis metric key (default: oracle_spider, else oracle_cider_d "
                                          "for captioning; oracle_bleu for translation)")
    parser.add_argument("--diversity", help="plot x axis metric key (default: mbleu_4 for captioning; "
                                            "pairwise_bleu for translation)")
    parser.add_argument("--force", action="store_true", help="replace an earlier CSV even by one with fewer complete "
                                                             "lines (the earlier files are kept in <out>/previous/)")
    args = parser.parse_args(argv)

    from rich.console import Console

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 240)  # a pipe or file gets the whole table
    try:
        rows = collect(args.tracking_uri, None if args.all else args.experiment)
        groups = group_by_experiment(rows)
        check_outputs(rows, args.out, args.force)  # never replace results by fewer (unless --force)
        for experiment in groups:
            existing = [p for p in output_paths(args.out, experiment).values() if p.exists()]
            if existing:
                print(f"{experiment}: replacing {len(existing)} earlier output file(s) in {args.out} "
                      "(derived from MLflow)", file=sys.stderr)
        written = write_outputs(rows, args.out, args.quality, args.diversity, force=args.force)
    except (CollectError, FewerResults) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for experiment, group in groups.items():
        print_table(experiment, group, console)
        for path in written[experiment]:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from loramcl.cli import run_script
    from loramcl.interrupts import stop_on_signals

    with stop_on_signals():  # Ctrl+C / SIGTERM: one `error:` line, exit status 130 / 143
        sys.exit(run_script(main))
