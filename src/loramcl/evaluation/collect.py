"""Collect evaluation runs from MLflow into a CSV, a LaTeX table and a quality-versus-diversity plot.

The contract with `eval.py` (the only thing this module relies on): an evaluation run carries the tag
`loramcl.kind = eval`, the params `eval.scheme` (training scheme label), `eval.scheme_kind` (mle | moe |
mcl, see `loramcl.schemes`), `eval.decoding` (decoding
config name), `eval.method` (human label of the decoding method), `eval.num_hypotheses` (K) and
`eval.task_type` ("captioning" | "translation" | "text"), and metrics named as in `metrics.registry.METRICS`
(plus per-hypothesis `<name>_hyp<k>` metrics, which are not table columns). The experiment name is the
evaluation task name. A table row is one (scheme, decoding) pair of one experiment; when several
finished runs share it (re-runs), the newest one (by start time) is kept and a log line says so.
Decoding configs that are the same method at this K (same `eval.method`, e.g. B = 2K and B = K^2 at
K = 2) share one row.
Runs that are not FINISHED are skipped, also with a log line.

Outputs, one set per experiment, in the output folder (derived files, replaced on every call, but
never by fewer results: a CSV with more complete lines than the new rows is kept, unless forced, and
the files replaced are kept in `<out>/previous/<time>/`; each file appears under its name only when
complete):
`<experiment>.csv`, `<experiment>.tex` (one booktabs table), `<experiment>_quality_diversity.png`
and `.pdf` (lexical: oracle SPIDEr / BLEU against mBLEU-4 / pairwise BLEU) and, when the runs have the
semantic metrics, `<experiment>_semantic_quality_diversity.png` and `.pdf` (oracle semantic similarity
against semantic diversity, the same layout). Rows are grouped by scheme, baselines first (by `eval.scheme_kind`: MLE, then MoE, then MCL,
as in the paper; runs without the param last), then by decoding name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from loramcl.evaluation import tables
from loramcl.evaluation.tables import (MAX_MARKER_AREA, SEMANTIC_AXES, best_rows, default_axes,  # noqa: F401
                                       file_stem, format_value, has_value, latex_escape, metric_columns,
                                       quality_diversity_figure)
from loramcl.metrics.registry import METRICS, PER_HYPOTHESIS_PREFIXES
from loramcl.schemes import ORDER
from loramcl.utils.atomic import guard_results, publish_files
from loramcl.utils.mlflow_store import EVAL_FILTER, all_pages, open_store, sqlite_path

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///logs/mlflow.db"
ID_COLUMNS = ["experiment", "scheme", "scheme_kind", "method", "decoding", "K", "task_type", "run_id"]


class CollectError(RuntimeError):
    """A one-line, user-facing reason why nothing could be collected."""


# ----------------------------------------------------------------------------------------------------
# Reading MLflow


def _client(tracking_uri: str):
    """The store's client; CollectError (one line) when there is no store or it cannot be read."""
    db = sqlite_path(tracking_uri)
    try:
        client = open_store(tracking_uri)
    except Exception as err:  # noqa: BLE001 - any backend failure becomes one readable line
        raise CollectError(f"cannot read the MLflow store {tracking_uri}: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from err
    if client is None:
        raise CollectError(f"no MLflow store at {db.resolve()} (tracking URI {tracking_uri}); run eval.py first "
                           "or pass --tracking-uri")
    return client


def _all_experiments(client) -> list:
    return all_pages(client.search_experiments)


def eval_runs(client, experiment_id: str) -> list:
    """Every evaluation run (tag loramcl.kind = eval) of an experiment, whatever its status."""
    return all_pages(client.search_runs, experiment_ids=[experiment_id], filter_string=EVAL_FILTER)


def _is_table_metric(key: str) -> bool:
    return not key.startswith(PER_HYPOTHESIS_PREFIXES)


def _row(experiment: str, run) -> dict[str, Any]:
    params = run.data.params
    k = params.get("eval.num_hypotheses", "")
    row: dict[str, Any] = {
        "experiment": experiment,
        "scheme": params.get("eval.scheme", ""),
        "scheme_kind": params.get("eval.scheme_kind", ""),
        "method": params.get("eval.method") or params.get("eval.decoding", ""),
        "decoding": params.get("eval.decoding", ""),
        "K": int(k) if str(k).isdigit() else k,
        "task_type": params.get("eval.task_type", ""),
        "run_id": run.info.run_id,
    }
    row.update({key: float(value) for key, value in run.data.metrics.items() if _is_table_metric(key)})
    return row


def sort_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paper layout: the MLE baselines, then the mixture of experts, then ours (MCL); unknown kinds last."""
    return sorted(rows, key=lambda r: (r["experiment"], ORDER.get(r.get("scheme_kind", ""), len(ORDER)), r["scheme"],
                                       r["decoding"], r["method"]))


def _merge_same_method(rows: list[dict]) -> list[dict]:
    """One row per (experiment, scheme, method label): at small K two decoding configs can be the same
    method (K = 2: B = 2K and B = K^2 are both beam 4), so their rows are merged (the first run's
    numbers kept, the decoding names joined with "/")."""
    merged: dict[tuple, dict] = {}
    for row in rows:
        key = (row["experiment"], row["scheme"], row["method"])
        if key not in merged:
            merged[key] = row
            continue
        first = merged[key]
        names = sorted(set(first["decoding"].split("/")) | {row["decoding"]})
        log.info("%s: %s and %s are the same method (%s) for %s: one row", row["experiment"], first["decoding"],
                 row["decoding"], row["method"], row["scheme"])
        merged[key] = {**first, "decoding": "/".join(names)}
    return list(merged.values())


def collect(tracking_uri: str = DEFAULT_TRACKING_URI,
            experiments: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    """One row dict per (experiment, scheme, decoding): the ID_COLUMNS plus every table metric of the run.

    `experiments=None` takes every experiment that holds evaluation runs. Raises CollectError when the
    store is missing, a named experiment does not exist or holds no finished evaluation run.
    """
    client = _client(tracking_uri)
    existing = {e.name: e for e in _all_experiments(client)}
    if experiments:
        missing = [name for name in experiments if name not in existing]
        if missing:
            raise CollectError(f"experiment(s) not found: {', '.join(missing)}; the store has: "
                               f"{', '.join(sorted(existing)) or '(none)'}")
        chosen = [existing[name] for name in dict.fromkeys(experiments)]
    else:
        chosen = sorted(existing.values(), key=lambda e: e.name)

    rows: list[dict[str, Any]] = []
    for exp in chosen:
        kept: dict[tuple[str, str], list] = {}
        unfinished = 0
        for run in eval_runs(client, exp.experiment_id):
            if run.info.status != "FINISHED":
                unfinished += 1
                continue
            key = (run.data.params.get("eval.scheme", ""), run.data.params.get("eval.decoding", ""))
            if not all(key):
                log.warning("%s: run %s has no eval.scheme / eval.decoding param, skipped", exp.name, run.info.run_id)
                continue
            kept.setdefault(key, []).append(run)
        if unfinished:
            log.info("%s: skipped %d evaluation run(s) that are not FINISHED", exp.name, unfinished)
        if not kept:
            if experiments:
                raise CollectError(f"experiment {exp.name!r} has no finished evaluation run "
                                   f"(runs tagged loramcl.kind=eval with status FINISHED)")
            continue
        for (scheme, decoding), runs in kept.items():
            runs.sort(key=lambda r: (r.info.start_time or 0, r.info.end_time or 0), reverse=True)
            if len(runs) > 1:
                log.info("%s: %d finished runs for (%s, %s): keeping the newest %s, ignoring %s", exp.name,
                         len(runs), scheme, decoding, runs[0].info.run_id,
                         ", ".join(r.info.run_id for r in runs[1:]))
            rows.append(_row(exp.name, runs[0]))
    rows = _merge_same_method(rows)
    if not rows:
        raise CollectError(f"no finished evaluation runs (tag loramcl.kind=eval) in {tracking_uri}; experiments: "
                           f"{', '.join(sorted(existing)) or '(none)'}")
    return sort_rows(rows)


# ----------------------------------------------------------------------------------------------------
# Tables (built by evaluation.tables, the results layer shared with reproduce.py)


def _extra_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Metrics outside the registry (kept in the CSV only), alphabetically."""
    return sorted({k for r in rows for k in r if k not in METRICS and k not in ID_COLUMNS})


def group_by_experiment(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["experiment"], []).append(r)
    return groups


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """ID columns, then every metric present in any row (registry order, then unknown ones); empty when missing."""
    return tables.write_csv(path, rows, ID_COLUMNS, metric_columns(rows) + _extra_columns(rows))


def latex_table(rows: Sequence[dict[str, Any]], caption: Optional[str] = None, label: Optional[str] = None) -> str:
    """One booktabs table: Scheme | Method | quality columns | diversity columns, best of each column bold.

    `caption` is LaTeX (not escaped). The scheme name is written on the first row of its group only (no
    multirow package needed) and a \\midrule separates the groups. Needs `\\usepackage{booktabs}`.
    """
    rows = list(rows)
    experiment = rows[0]["experiment"] if rows else ""
    caption = caption or (latex_escape(experiment) + r": oracle quality and diversity of the $K$ hypotheses per "
                          r"training scheme and decoding method; best of each column in bold ($\uparrow$: higher "
                          r"is better or more diverse, $\downarrow$: lower is).")
    layout = tables.Layout(comment=f"Generated by scripts/collect_results.py from the MLflow experiment "
                                   f"{experiment!r}; do not edit.", caption=caption,
                           label=label or f"tab:{file_stem(experiment)}", first=("Scheme", "Method"),
                           families=True, block_rule="midrule")
    entries = [tables.Entry(r["scheme"], r["method"], r) for r in rows]
    return tables.latex_long(entries, metric_columns(rows, ("quality", "diversity")), layout)


def write_latex(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(latex_table(rows))
    return path


# ----------------------------------------------------------------------------------------------------
# Quality versus diversity plot


def write_plot(rows: Sequence[dict[str, Any]], stem: Path, quality: Optional[str] = None,
               diversity: Optional[str] = None) -> list[Path]:
    """`<stem>.png` and `<stem>.pdf`. A metric asked for explicitly but absent from every row raises
    CollectError; a default one that is absent only skips the plot (with a log line)."""
    default_q, default_d = default_axes(rows)
    chosen = {"quality": (quality or default_q, quality is not None),
              "diversity": (diversity or default_d, diversity is not None)}
    experiment = rows[0]["experiment"] if rows else "?"
    for axis, (key, explicit) in chosen.items():
        if not any(has_value(r.get(key)) for r in rows):
            message = (f"{experiment}: no run has the {axis} metric {key!r} (available: "
                       f"{', '.join(metric_columns(rows)) or 'none'})")
            if explicit:
                raise CollectError(message)
            log.warning("%s; no plot (choose one with --%s)", message, axis)
            return []
    fig, _ = quality_diversity_figure(rows, chosen["quality"][0], chosen["diversity"][0])
    return tables.save_figure(fig, stem)


# ----------------------------------------------------------------------------------------------------
# Everything for one or more experiments


def output_paths(out_dir: Path, experiment: str) -> dict[str, Path]:
    stem = file_stem(experiment)
    return {"csv": out_dir / f"{stem}.csv", "tex": out_dir / f"{stem}.tex",
            "png": out_dir / f"{stem}_quality_diversity.png", "pdf": out_dir / f"{stem}_quality_diversity.pdf",
            "semantic_png": out_dir / f"{stem}_semantic_quality_diversity.png",
            "semantic_pdf": out_dir / f"{stem}_semantic_quality_diversity.pdf"}


def write_semantic_plot(rows: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    """The semantic quality-versus-diversity plot, when some run has both semantic metrics (else nothing)."""
    quality, diversity = SEMANTIC_AXES
    if not any(has_value(r.get(quality)) and has_value(r.get(diversity)) for r in rows):
        log.info("%s: no run has the semantic metrics (metrics.semantic): no semantic plot",
                 rows[0]["experiment"] if rows else "?")
        return []
    return write_plot(rows, stem, quality, diversity)


def complete_row(row: dict[str, Any]) -> bool:
    """A row (or CSV line) with results: some metric column holds a value."""
    return any(k not in ID_COLUMNS and v not in ("", None) and (not isinstance(v, float) or has_value(v))
               for k, v in row.items())


def _write_experiment(group: Sequence[dict[str, Any]], out_dir: Path, experiment: str, quality: Optional[str],
                      diversity: Optional[str]) -> list[Path]:
    paths = output_paths(out_dir, experiment)
    files = [write_csv(group, paths["csv"]), write_latex(group, paths["tex"])]
    files += write_plot(group, paths["png"].with_suffix(""), quality, diversity)
    files += write_semantic_plot(group, paths["semantic_png"].with_suffix(""))
    return files


def check_outputs(rows: Sequence[dict[str, Any]], out_dir: Path, force: bool = False) -> None:
    """FewerResults (one line, naming the file and both counts) when an existing `<experiment>.csv`
    in `out_dir` has more complete lines than the new rows of its experiment, unless `force`."""
    for experiment, group in group_by_experiment(rows).items():
        guard_results(output_paths(Path(out_dir), experiment)["csv"], sum(map(complete_row, group)), len(group),
                      complete_row, force, f" (read from the experiment {experiment!r} of the MLflow store: is it "
                                           f"the right store?)")


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: Path, quality: Optional[str] = None,
                  diversity: Optional[str] = None, force: bool = False) -> dict[str, list[Path]]:
    """CSV, LaTeX and plot per experiment; returns {experiment: [written paths]}.

    First, for every experiment: an existing `<experiment>.csv` with more complete lines than the
    new rows is a FewerResults error (one line, nothing written) unless `force`. Then each
    experiment's files are written beside their final names and renamed, the CSV last; the files
    they replace are kept in `<out_dir>/previous/<time>/` (not when the CSV is unchanged).
    """
    out_dir = Path(out_dir)
    groups = group_by_experiment(rows)
    check_outputs(rows, out_dir, force)
    written: dict[str, list[Path]] = {}
    for experiment, group in groups.items():
        paths = output_paths(out_dir, experiment)
        files, previous = publish_files(
            out_dir, lambda stage: _write_experiment(group, stage, experiment, quality, diversity),
            paths["csv"].name, keep=[p.name for p in paths.values()])
        if previous is not None:
            log.info("%s: the earlier output files are kept in %s", experiment, previous)
        written[experiment] = files
    return written
