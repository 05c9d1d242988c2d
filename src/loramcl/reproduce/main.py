"""`python scripts/reproduce.py table=<name> [scale=demo] [overrides] [--slurm | --status | --collect | --dry-run]`.

Order of work, cheapest first: compose the table and every row's training config (a bad table or
override fails here, naming the row); find what is done (run folders by config key, evaluations in
MLflow); check that every dataset and backbone the missing work needs is on this machine (all of
them named at once, each once, with the command that provides it); then run the missing jobs here
one after the other, or submit them to SLURM; then collect results/<table>/. Results are never
replaced by fewer: a results CSV with more complete lines than the new one is kept (one `error:`
line, exit 2) unless `--force`, and replaced files are kept in results/<table>/previous/<time>/.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from loramcl.errors import ConfigError, MissingResource
from loramcl.reproduce.plan import Table, plan_table
from loramcl.reproduce.results import gather, write_results
from loramcl.reproduce.runner import LocalRunner
from loramcl.identity import METRICS_VERSION, code_version, read_identity
from loramcl.reproduce.state import RunIndex, evaluation_done, evaluation_state, finished_evaluations
from loramcl.utils.atomic import FewerResults


def compose_all(root: Path, overrides: list[str]) -> tuple[DictConfig, Table]:
    """The reproduce config and its planned table (every row's train.py config composed)."""
    from hydra import compose, initialize_config_dir

    import loramcl.config  # noqa: F401 - registers the project's resolvers

    configs = root / "configs"
    tables = sorted(p.stem for p in (configs / "table").glob("*.yaml"))
    if not any(o.startswith("table=") for o in overrides):
        raise ConfigError(f"choose a table: table=<name> (configs/table/ has: {', '.join(tables)})")
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("table="))
    if name not in tables:
        raise ConfigError(f"no table {name!r} (configs/table/ has: {', '.join(tables)})")
    decodings = {p.stem for p in (configs / "decoding").glob("*.yaml")}
    with initialize_config_dir(config_dir=str(configs), version_base="1.3", job_name="reproduce"):
        try:
            cfg = compose("reproduce", overrides=overrides)
        except Exception as err:  # hydra's override / composition errors
            from loramcl.cli import library_message

            raise ConfigError(library_message(err)) from None
        from loramcl.schema import validate_reproduce, validate_train

        validate_reproduce(cfg)  # every value of configs/reproduce.yaml, the table and the scale
        for key in ("slurm",):  # a scale may change SLURM resources (the rehearsal asks for no GPU) ...
            if cfg.scale.get(key):
                cfg[key] = OmegaConf.merge(cfg[key], cfg.scale[key], given_on_the_command_line(overrides, key))
        validate_reproduce(cfg)
        table = plan_table(cfg, compose, decodings)
        for key, train_cfg in table.configs.items():  # every row's train.py values, before anything runs
            try:
                validate_train(train_cfg)
            except ConfigError as err:
                rows = ", ".join(r.id for r in table.rows if r.training.key == key)
                raise ConfigError(f"row {rows}: {err}") from None
    return cfg, table


def given_on_the_command_line(overrides: list[str], group: str) -> DictConfig:
    """... but what the command line sets in `group` (slurm.time_train=...) wins over the scale."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = OmegaConf.create({})
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith(f"{group}.") and not override.is_delete():
            OmegaConf.update(given, key[len(group) + 1:], override.value())
    return given


def pending_configs(table: Table, index: RunIndex, finished: dict) -> dict[str, DictConfig]:
    """Training configs that still have work to do (a training, or an evaluation that needs its data)."""
    out = {}
    for training in table.trainings():
        evals = table.evaluations(training)
        if index.state(training).status != "done" or any(not evaluation_done(e, finished) for e in evals):
            out[training.key] = table.configs[training.key]
    return out


def check_resources(table: Table, configs: dict[str, DictConfig]) -> None:
    """Every missing dataset and backbone, each once (MissingResource with one line per problem)."""
    from loramcl.preflight import missing_resources

    problems: dict[str, None] = {}
    distinct = {}  # one config per (data, backbone): building a DataModule takes a second
    for cfg in configs.values():
        what = (OmegaConf.to_yaml(cfg.data), OmegaConf.to_yaml(cfg.model))
        distinct.setdefault(what, cfg)
    for cfg in distinct.values():
        for problem in missing_resources(cfg):
            problems.setdefault(problem, None)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise MissingResource(f"table {table.name} needs {len(problems)} thing(s) this machine does not have "
                              f"(nothing was started):\n{lines}\n(docs/reproduce.md lists every table's data and "
                              f"models)")


def describe_plan(table: Table, index: RunIndex, finished: dict, echo=print) -> None:
    trainings = table.trainings()
    evals = table.evaluations()
    echo(f"table {table.name} (scale={table.scale}): {len(table.rows)} rows, {len(trainings)} trainings, "
         f"{len(evals)} evaluations; MLflow experiment {table.experiment}")
    others = 0
    for training in trainings:
        state = index.state(training)
        mine = table.evaluations(training)
        done = sum(evaluation_done(e, finished) for e in mine)
        stale = sum(evaluation_state(e, finished) == "stale" for e in mine)
        rows = ", ".join(r.id for r in table.rows if r.training.key == training.key)
        echo(f"  {training.key} [{state.status}] {rows}: train.py {training.describe()}; "
             f"evaluations {done}/{len(mine)} done" + (f", {stale} stale" if stale else "")
             + (f" ({state.run_dir})" if state.status != "missing" else ""))
        if state.status == "done":
            trained_by = trained_by_code(state.run_dir)
            if trained_by != code_version():
                others += 1
                echo(f"    warning: trained by code {trained_by}, this is {code_version()}: reused "
                     f"(retrain_other_code=true trains it again)")
    stale = sum(evaluation_state(e, finished) == "stale" for e in evals)
    if stale:
        echo(f"  {stale} evaluation(s) are stale (computed with other decoding / generation settings or an older "
             f"metric definition than METRICS_VERSION {METRICS_VERSION}): they run again; their old values stay in "
             f"the results, marked stale, until then")
    if others:
        echo(f"  {others} training(s) were trained by another code version (see above): reused, as their key "
             f"(what they train) is the same")


def trained_by_code(run_dir: Path) -> str:
    """The code version that trained a run (identity.json), or what stands for it before identity.json."""
    return read_identity(run_dir).get("code_version", "unknown (before identity.json)")


def other_code_trainings(table: Table, index: RunIndex) -> list[tuple[Any, Path, str]]:
    """(training, its done run folder, the code version that trained it) of every training of the
    table that another code version than this one finished."""
    found = []
    for training in table.trainings():
        state = index.state(training)
        if state.status == "done" and trained_by_code(state.run_dir) != code_version():
            found.append((training, state.run_dir, trained_by_code(state.run_dir)))
    return found


def retrain_other_code(table: Table, cfg: DictConfig, log_dir: Path, echo=print) -> int:
    """`retrain_other_code=true`: every training of the table finished by another code version is
    trained again. Its folder is kept under another name (`<folder>.other-code-<time>`, with
    `retired.json`: no longer counted as done), and the finished MLflow runs of its evaluations in the
    table's experiment are tagged superseded (stale: they run again, their values stay in the results
    marked stale until then). Returns how many trainings it set aside."""
    import time

    from loramcl.reproduce.state import SUPERSEDED_TAG
    from loramcl.run_folders import RETIRED
    from loramcl.utils.mlflow_store import open_store
    from loramcl.utils.atomic import write_text_atomic

    found = other_code_trainings(table, RunIndex(log_dir))
    if not found:
        return 0
    finished = finished_evaluations(str(cfg.mlflow_uri), table.experiment)
    client = open_store(str(cfg.mlflow_uri)) if finished else None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for training, folder, trained_by in found:
        write_text_atomic(folder / RETIRED, json.dumps({"reason": "retrain_other_code", "code_version": trained_by,
                                                        "retrained_by": code_version(), "time": stamp}))
        kept = folder
        if folder == training.run_dir(log_dir):  # the table's own folder: the new training goes there
            kept = folder.with_name(f"{folder.name}.other-code-{stamp}")
            folder.rename(kept)
        superseded = 0
        for ev in table.evaluations(training):
            run = finished.get((ev.sweep, ev.decoding))
            if run is not None and client is not None:
                client.set_tag(run.info.run_id, SUPERSEDED_TAG, f"{training.key} trained again by {code_version()}")
                superseded += 1
        echo(f"  {training.key}: trained by code {trained_by}: trained again (its run is kept in {kept}, "
             f"{superseded} of its evaluations run again)")
    return len(found)


def status(table: Table, cfg: DictConfig, log_dir: Path, echo=print) -> dict[str, Any]:
    """Per row: its training and evaluations done / running / failed / missing (SLURM jobs included)."""
    from loramcl.reproduce.slurm import ACTIVE, job_states, submitted_jobs

    index = RunIndex(log_dir)
    finished = finished_evaluations(str(cfg.mlflow_uri), table.experiment)
    jobs = submitted_jobs(log_dir, table)
    ids = list(dict.fromkeys(list(jobs.get("trainings", {}).values()) + list(jobs.get("evaluations", {}).values())
                             + ([jobs["collect"]] if jobs.get("collect") else [])))
    states = job_states(ids)

    def job_status(job: Optional[str], done: bool) -> str:
        if done:
            return "done"
        if job is None:
            return "missing"
        state = states.get(job, "")
        if state in ACTIVE:
            return "running" if state != "PENDING" else "pending"
        return "failed" if state else "missing"

    report: dict[str, Any] = {}
    echo(f"table {table.name} (scale={table.scale})" + (f", submitted {jobs['submitted']} ({jobs['folder']})"
                                                         if jobs else ""))
    for row in table.rows:
        state = index.state(row.training)
        t_status = job_status(jobs.get("trainings", {}).get(row.training.key), state.status == "done")
        if t_status == "missing" and state.status == "partial":
            t_status = "partial"
        e_status = [job_status(jobs.get("evaluations", {}).get(f"{ev.sweep}/{ev.decoding}"),
                               evaluation_done(ev, finished)) for ev in row.evaluations]
        e_status = [("stale" if s == "missing" and evaluation_state(ev, finished) == "stale" else s)
                    for s, ev in zip(e_status, row.evaluations)]  # older metrics / other settings: runs again
        counts = {s: e_status.count(s) for s in dict.fromkeys(e_status)}
        report[row.id] = {"training": t_status, "evaluations": counts}
        evals = ", ".join(f"{n} {s}" for s, n in counts.items()) or "none"
        echo(f"  {row.id:<28} training {t_status:<8} evaluations: {evals}")
    if jobs.get("collect"):
        echo(f"  collection job {jobs['collect']}: {states.get(jobs['collect'], 'unknown')}")
    return report


def collect(table: Table, cfg: DictConfig, log_dir: Path, failed: Optional[dict] = None, echo=print,
            index: Optional[RunIndex] = None, force: bool = False) -> list[Path]:
    """Write results/<table>/ from what is done. Raises FewerResults (nothing written) when the
    existing CSV has more complete lines than the new results, unless `force`."""
    index = index or RunIndex(log_dir)
    states = {t.key: index.state(t) for t in table.trainings()}
    finished = finished_evaluations(str(cfg.mlflow_uri), table.experiment)
    running: set = set()
    if failed is None:  # after a --slurm submission: what its jobs say (a failed training, a cancelled evaluation)
        from loramcl.reproduce.slurm import job_outcomes

        failed, running = job_outcomes(log_dir, table)
    lines = gather(table, states, finished, set(failed or ()), running)
    hint = f" (read from paths.log_dir={log_dir} and mlflow_uri={cfg.mlflow_uri}: are they right?)"
    written, previous = write_results(table, lines, force=force, hint=hint)
    done = sum(line.status == "done" for line in lines)
    echo(f"results of table {table.name}: {done}/{len(lines)} lines complete")
    print_lines(table, lines, echo)
    for path in written:
        echo(f"  {path}")
    if previous is not None:
        echo(f"  (the files replaced are kept in {previous})")
    return written


def print_lines(table: Table, lines: list, echo=print) -> None:
    from loramcl.reproduce.results import column_label, columns

    cols = columns(table, lines)[:8]
    header = f"  {'row':<34} {'method':<26} " + " ".join(f"{column_label(c)[0][:12]:>12}" for c in cols)
    echo(header)
    for line in lines:
        label = f"{line.row.label}" + (f" [{line.row.section}]" if line.row.section else "")
        cells = []
        for c in cols:
            value = line.values.get(c)
            paper = line.paper.get(c)
            text = "" if value is None else f"{value:.3f}"
            if paper is not None:
                text += f" ({paper:g})"
            cells.append(f"{text or ('-' if line.status == 'done' else line.status):>12}")
        echo(f"  {label[:34]:<34} {line.method[:26]:<26} " + " ".join(cells))


def main(argv: Optional[list[str]] = None, root: Optional[Path] = None) -> int:
    import argparse

    from loramcl.cli import ArgumentParser

    parser = ArgumentParser(prog="scripts/reproduce.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="table=<name>, scale=demo, and any key of configs/reproduce.yaml")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--slurm", action="store_true", help="submit to SLURM (also: hydra/launcher=slurm)")
    mode.add_argument("--status", action="store_true", help="per row: done / running / failed / missing")
    mode.add_argument("--collect", action="store_true", help="only write results/<table>/ from what is done")
    mode.add_argument("--dry-run", action="store_true", help="print the plan (trainings, evaluations, states)")
    parser.add_argument("--force", action="store_true",
                        help="replace results/<table>/ even by results with fewer complete lines (the old files are "
                             "kept in results/<table>/previous/<time>/)")
    args = parser.parse_intermixed_args(argv)  # flags anywhere among the overrides
    overrides = [o for o in args.overrides if o != "hydra/launcher=slurm"]
    use_slurm = args.slurm or len(overrides) != len(args.overrides)
    root = Path(root or os.environ.get("PROJECT_ROOT") or Path(__file__).resolve().parents[3]).resolve()
    os.environ.setdefault("PROJECT_ROOT", str(root))
    try:
        cfg, table = compose_all(root, overrides)
        log_dir = Path(str(cfg.paths.log_dir)).resolve()
        paths = {"log_dir": str(log_dir), "data_dir": str(Path(str(cfg.paths.data_dir)).resolve())}
        index = RunIndex(log_dir)
        finished = finished_evaluations(str(cfg.mlflow_uri), table.experiment)
        if args.status:
            status(table, cfg, log_dir)
            return 0
        if args.collect:
            collect(table, cfg, log_dir, index=index, force=args.force)
            return 0
        if cfg.retrain_other_code and not args.dry_run and retrain_other_code(table, cfg, log_dir):
            index, finished = RunIndex(log_dir), finished_evaluations(str(cfg.mlflow_uri), table.experiment)
        describe_plan(table, index, finished)
        if args.dry_run:
            if cfg.retrain_other_code and other_code_trainings(table, index):
                print("  retrain_other_code=true: the trainings of another code version above would train again")
            return 0
        check_resources(table, pending_configs(table, index, finished))
        if use_slurm:
            from loramcl.reproduce.slurm import submit

            collect_command = [sys.executable, str(root / "scripts" / "reproduce.py"), *overrides, "--collect",
                               *(["--force"] if args.force else [])]
            submit(table, cfg, root, paths, str(cfg.mlflow_uri), sys.executable, collect_command)
            print(f"follow it with: python scripts/reproduce.py {' '.join(overrides)} --status")
            return 0
        outcome = LocalRunner(table, root, paths, str(cfg.mlflow_uri), index=index).run()
        collect(table, cfg, log_dir, outcome.failed, index=index, force=args.force)
        if outcome.failed:
            print(f"{len(outcome.failed)} job(s) failed (their logs are named above); run the same command again "
                  f"to retry them: what is done is kept")
            return 1
        return 0
    except (ConfigError, MissingResource, FewerResults) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
