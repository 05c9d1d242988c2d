"""How often each winner-takes-all variant recovers every chain of a toy mixture (seeds x loss configs).

    python scripts/toy_recovery.py                                      # collapse3, seeds 0-4, 7 loss configs
    python scripts/toy_recovery.py --seeds 0 1 2 --configs wta relaxed-0.1
    python scripts/toy_recovery.py --experiment transition1 --out results/toy_recovery_t1
    python scripts/toy_recovery.py -- trainer.max_steps=300             # extra Hydra overrides after --

Each run trains the MCL model alone (the toy's MLE baseline is not needed here) in this process,
one after the other (one torch thread: the runs are tiny), and writes `runs/<config>/seed<s>.json`
below `--out`; a run whose file exists is skipped, so an interrupted sweep continues where it stopped.
At the end `recovery.csv` (one row per run) and `recovery.md` (recovered runs / seeds per config) are
written there and the table is printed.

A run is *healthy* when its K hypotheses sit on K distinct chains (each chain is the nearest chain,
in max absolute matrix error, of exactly one hypothesis), and *recovers every chain* when moreover
each chain's hypothesis (the best permutation, `loramcl.toy.runner.match_chains`) is within
`--tolerance` (default 0.05, the toy's acceptance threshold) of it: relaxed-wta's eps pulls every
hypothesis towards the other chains, so a healthy relaxed run can miss the tolerance without any
collapse. Each run also records the collapse monitor's alarms (`loramcl.collapse`, the options of
configs/callbacks/collapse.yaml), the closest pair's loss distance, and its final WTA loss on the
validation sequences against the ideal split (each sequence scored by its best true chain).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

# name -> mcl overrides. eps: the losers' total weight; tau_0 with the toy's decay (collapse3.yaml)
CONFIGS = {
    "wta": ["mcl.mode=wta"],
    "relaxed-0.05": ["mcl.mode=relaxed-wta", "mcl.epsilon=0.05"],
    "relaxed-0.1": ["mcl.mode=relaxed-wta", "mcl.epsilon=0.1"],
    "relaxed-0.2": ["mcl.mode=relaxed-wta", "mcl.epsilon=0.2"],
    "annealed-0.1": ["mcl.mode=annealed-wta", "mcl.temperature_init=0.1"],
    "annealed-0.3": ["mcl.mode=annealed-wta", "mcl.temperature_init=0.3"],
    "annealed-1": ["mcl.mode=annealed-wta", "mcl.temperature_init=1.0"],
}
FIELDS = ["config", "seed", "recovered", "max_abs_errors", "chains", "win_rates", "share_alarm_step",
          "duplicate_alarm_step", "alarm_pair", "final_entropy",
          "final_closest_distance", "first_checked_step", "min_closest_distance", "distinct", "wta_loss", "ideal_split_loss", "loss_gap", "seconds"]


def compose(experiment: str, seed: int, overrides: list[str], run_dir: Path):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=[
            f"experiment={experiment}", f"seed={seed}", "logger=none", "callbacks=collapse",
            "extras.print_config=false", "extras.num_threads=1", f"paths.output_dir={run_dir}",
            f"paths.log_dir={run_dir}", *overrides])


def run_one(experiment: str, name: str, seed: int, overrides: list[str], run_dir: Path, tolerance: float) -> dict:
    """Train one MCL model and say whether it recovered every chain, and what the alarms said."""
    import numpy as np

    from loramcl.collapse import DUPLICATE, LOW_SHARE, CollapseMonitor
    from loramcl.schema import validate_train
    from loramcl.toy.runner import match_chains, model_summary, toy_mixture, validation_references
    from loramcl.training import apply_extras, fit_model

    settings = validate_train(compose(experiment, seed, [*CONFIGS[name], *overrides], run_dir))
    apply_extras(settings)
    start = time.perf_counter()
    fit = fit_model(settings, "mcl")
    mixture = toy_mixture(settings)
    tokens = fit.datamodule.val_set.tokens
    summary = model_summary(fit, tokens, mixture.num_states, settings.mcl.mode)
    chains = np.stack([np.asarray(p, dtype=float) for p in mixture.transitions])
    assignment = match_chains(np.asarray(summary["matrices"]), chains)
    errors = [a["max_abs_error"] for a in assignment]
    nearest = {int(np.nanmax(np.abs(m - chains), axis=(1, 2)).argmin()) for m in np.asarray(summary["matrices"])}
    ideal = validation_references(mixture, tokens)["mcl_true_chains_wta"]
    monitor = next(cb for cb in fit.trainer.callbacks if isinstance(cb, CollapseMonitor))
    share, dup = monitor.fired(LOW_SHARE), monitor.fired(DUPLICATE)
    return {
        "config": name, "seed": seed,
        "recovered": bool(len({a["chain"] for a in assignment}) == len(chains) and max(errors) < tolerance),
        "distinct": len(nearest) == len(chains),  # each chain is the nearest chain of one hypothesis
        "max_abs_errors": [round(e, 4) for e in errors], "chains": [a["chain"] for a in assignment],
        "win_rates": [round(r, 3) for r in summary["win_rates"]],
        "share_alarm_step": share.step if share else None,
        "duplicate_alarm_step": dup.step if dup else None,
        "alarm_pair": dup.hypotheses if dup else None,
        "final_entropy": round(monitor.history[-1][1], 4), "final_closest_distance": round(monitor.history[-1][2], 4),
        # the closest pair over every window checked for alarms: what the duplicate tolerance is compared
        # with (NaN: never checked, e.g. an annealed run still hotter than max_temperature)
        "first_checked_step": monitor.first_checked_step,
        "min_closest_distance": round(min((row[2] for row in monitor.history if monitor.first_checked_step is not None
                                           and row[0] >= monitor.first_checked_step), default=math.nan), 4),
        "wta_loss": round(summary["eval_wta_loss"], 5), "ideal_split_loss": round(ideal, 5),
        "loss_gap": round(summary["eval_wta_loss"] - ideal, 5),
        "seconds": round(time.perf_counter() - start, 1),
    }


def table(rows: list[dict], names: list[str], seeds: list[int], tolerance: float) -> str:
    """One row per loss: runs whose K hypotheses sit on K distinct chains, runs that also match every
    chain within `tolerance`, runs where an alarm fired (and how many of those were healthy), the mean
    WTA loss gap to the ideal split."""
    lines = [f"| loss | every chain its own hypothesis | ... and within {tolerance:g} | alarm fired | alarm on a healthy run | "
             "loss gap to the ideal split (mean, healthy / collapsed) |",
             "|---|---|---|---|---|---|"]
    for name in names:
        mine = [r for r in rows if r["config"] == name and r["seed"] in seeds]
        if not mine:
            continue
        alarm = [r for r in mine if r["share_alarm_step"] is not None or r["duplicate_alarm_step"] is not None]
        gaps = [[r["loss_gap"] for r in mine if r["distinct"] == ok] for ok in (True, False)]
        gap = " / ".join(f"{sum(g) / len(g):+.4f}" if g else "-" for g in gaps)
        lines.append(f"| `{name}` | {sum(r['distinct'] for r in mine)} / {len(mine)} | {sum(r['recovered'] for r in mine)} / "
                     f"{len(mine)} | {len(alarm)} / {len(mine)} | {sum(1 for r in alarm if r['distinct'])} | {gap} |")
    return "\n".join(lines)


def main() -> int:
    from loramcl.cli import ArgumentParser, arg  # one-line errors
    from loramcl.schema.fields import Float, Int

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="collapse3")
    parser.add_argument("--seeds", type=arg(Int(0, 2**32 - 1)), nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--tolerance", type=arg(Float(0, low_open=True)), default=0.05, help="max abs matrix error of a recovered chain")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "toy_recovery")
    parser.add_argument("--force", action="store_true",
                        help="replace recovery.csv / .md even by a table with fewer lines (the old ones are kept in previous/)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args()

    from loramcl.utils.atomic import guard_results

    # results are never replaced by fewer, checked before any training: a narrower run (--seeds 0)
    # beside a full table is refused (FewerResults: one line), unless --force
    planned = len(args.configs) * len(args.seeds)
    guard_results(args.out / "recovery.csv", planned, planned, lambda row: True, args.force,
                  " (a narrower --seeds / --configs than the table it would replace)")

    import logging

    import torch

    from loramcl.interrupts import doing

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rows, begin = [], time.perf_counter()
    for name in args.configs:
        for seed in args.seeds:
            result = args.out / "runs" / name / f"seed{seed}.json"
            if result.is_file():
                rows.append(json.loads(result.read_text()))
                continue
            doing(f"training {name} seed {seed}")
            row = run_one(args.experiment, name, seed, args.overrides, result.with_suffix(""), args.tolerance)
            from loramcl.utils.atomic import write_text_atomic

            write_text_atomic(result, json.dumps(row, indent=1))  # a run's result appears only when complete
            rows.append(row)
            print(f"{name} seed {seed}: recovered={row['recovered']} errors={row['max_abs_errors']} "
                  f"win rates={row['win_rates']} alarms: share@{row['share_alarm_step']} duplicate@"
                  f"{row['duplicate_alarm_step']} {row['alarm_pair']} closest={row['final_closest_distance']} gap={row['loss_gap']:+.4f} ({row['seconds']} s)",
                  flush=True)
    from loramcl.utils.atomic import publish_files

    text = table(rows, args.configs, args.seeds, args.tolerance)

    def write(stage: Path) -> list[Path]:
        with open(stage / "recovery.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
        (stage / "recovery.md").write_text(f"{args.experiment}, seeds {args.seeds}, tolerance {args.tolerance}, "
                                           f"extra overrides {args.overrides}\n\n{text}\n")
        return [stage / "recovery.md", stage / "recovery.csv"]

    publish_files(args.out, write, "recovery.csv")  # replaced files are kept in previous/<time>/
    print(text)
    print(f"total {sum(r['seconds'] for r in rows):.0f} s of training; this invocation {time.perf_counter() - begin:.0f} s")
    return 0


if __name__ == "__main__":
    from loramcl.cli import run_script
    from loramcl.interrupts import stop_on_signals

    # Ctrl+C / SIGTERM: one `error:` line, exit status 130 / 143
    with stop_on_signals(outcome="finished runs keep their runs/<config>/seed<s>.json: the same command "
                                 "continues with the rest"):
        sys.exit(run_script(main))
