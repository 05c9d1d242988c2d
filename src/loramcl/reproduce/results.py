"""A table's values gathered into results/<table>/: CSV, LaTeX in the paper's layout, plot(s), and a
side-by-side page of every method's candidates per group (`<table>[_<group>]_candidates.html`, the
group's name with characters other than letters, digits, `.`, `_`, `-` as `_`, as the plots').

Values come from the evaluations' MLflow runs (kind `eval`), from the training runs' summary.json
(kind `toy`), or both (kind `bilingual`: the language columns of the bilingual run). Every row and
method of the table is present, done or not: a missing value is an empty CSV cell and "--" in LaTeX,
and the `status` column says why (missing, failed, running; `stale`: values computed with other
decoding settings or an older metric definition, kept until the evaluation runs again). Where the table config knows the
paper's figure for a cell, a `paper_<metric>` column holds it beside ours (LaTeX: a "paper" column,
with a dagger and a note when the figure is unverified).

Replacing results never loses any: an existing CSV is replaced only by one with at least as many
complete lines (status done), unless forced (`--force`), and the files replaced are kept in
`results/<table>/previous/<time>/`; each file appears under its name only when complete.

Layouts: `long` (one line per row and method, one section per group, best of a column bold within
its group) and `pivot` (one line per row, one column per group, a single metric).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from loramcl.evaluation import tables
from loramcl.evaluation.tables import SEMANTIC_AXES, file_stem, latex_escape
from loramcl.reproduce.plan import Row, Table
from loramcl.reproduce.state import evaluation_state
from loramcl.utils.atomic import guard_results, publish_files
from loramcl.utils.mlflow_store import artifact_dir

log = logging.getLogger(__name__)

# Columns of the toy table (from summary.json), with labels and directions (None: no "best")
WITH_VALUES = ("done", "stale")  # line statuses that carry results

TOY_COLUMNS = {
    "mle_loss": ("MLE loss", False), "mle_optimum": ("MLE optimum", None),
    "mcl_loss": ("MCL WTA loss", False), "mcl_band_low": ("MCL band low", None), "mcl_band_high": ("MCL band high", None),
    "mle_matrix_error": ("MLE matrix err.", False), "mcl_matrix_error": ("MCL matrix err.", False),
    "passed": ("Checks passed (share)", None),
}


@dataclass
class Line:
    """One line of a table: a row and one of its methods (or the row itself when it has none)."""

    row: Row
    method: str  # the method's label ("" for rows without evaluations)
    decoding: str
    status: str  # done | stale | missing | failed | running
    values: dict[str, float] = field(default_factory=dict)
    run_dir: Optional[Path] = None
    eval_dir: Optional[Path] = None  # the evaluation's MLflow artifacts (predictions.jsonl, candidates.html)

    @property
    def paper(self) -> dict[str, float]:
        return self.row.paper_values(self.decoding)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"group": self.row.section or "", "row": self.row.name, "label": self.row.label,
                               "method": self.method, "decoding": self.decoding, "status": self.status}
        out.update(self.values)
        return out


def column_label(key: str) -> tuple[str, Optional[bool]]:
    """(header label, higher is better / None) of a metric, a toy column or a bilingual column."""
    return tables.column_label(key, TOY_COLUMNS)


# ----------------------------------------------------------------------------------------------------
# Gathering


def toy_values(run_dir: Path) -> dict[str, float]:
    from loramcl.toy.acceptance import check_summary

    s = json.loads((run_dir / "summary.json").read_text())
    th, mle, mcl = s["theory"], s["models"]["mle"], s["models"]["mcl"]
    checks = check_summary(s)
    return {"mle_loss": mle["eval_wta_loss"], "mle_optimum": th["mle_optimum"], "mcl_loss": mcl["eval_wta_loss"],
            "mcl_band_low": th["mcl_band"][0], "mcl_band_high": th["mcl_band"][1],
            "mle_matrix_error": mle["average_max_abs_error"],
            "mcl_matrix_error": max(a["max_abs_error"] for a in mcl["assignment"]),
            "passed": float(sum(ok for ok, _ in checks.values())) / len(checks)}


def bilingual_values(run_dir: Path, model_name: str) -> dict[str, float]:
    """Language share of each hypothesis' greedy test captions, and of each language's validation
    references the share each hypothesis wins (summary.json of a task=bilingual run)."""
    model = json.loads((run_dir / "summary.json").read_text())["models"][model_name]
    out = {}
    for h, shares in enumerate(model["language_shares"]):
        out.update({f"share_{lang}_hyp{h}": float(v) for lang, v in shares.items() if lang in ("en", "fr")})
    for lang, wins in (model.get("val_win_rates_by_reference_language") or {}).items():
        out.update({f"won_{lang}_hyp{h}": float(v) for h, v in enumerate(wins)})
    return out


def gather(table: Table, trainings: dict[str, Any], finished: dict[tuple[str, str], Any],
           failed: Optional[set] = None, running: Optional[set] = None) -> list[Line]:
    """Every line of the table. `trainings`: training key -> TrainingState; `finished`: the done
    evaluations' MLflow runs by (group, decoding); `failed` / `running`: keys (training keys or
    (group, decoding)) known to have failed / to be running."""
    failed, running = failed or set(), running or set()
    lines: list[Line] = []
    for row in table.rows:
        state = trainings.get(row.training.key)
        run_dir = state.run_dir if state is not None and state.status == "done" else None
        extra: dict[str, float] = {}
        if run_dir is not None and table.kind == "bilingual":
            name = next((o.split("=", 1)[1] for ev in row.evaluations for o in ev.overrides
                         if o.startswith("model_name=")), "mcl")
            extra = bilingual_values(run_dir, name)
        if not row.evaluations:
            status = "done" if run_dir else _status(row.training.key, failed, running)
            values = toy_values(run_dir) if run_dir is not None and table.kind == "toy" else {}
            lines.append(Line(row, "", "", status, {**values, **extra}, run_dir))
            continue
        for ev in row.evaluations:
            run = finished.get((ev.sweep, ev.decoding))
            if run is not None:
                metrics = {k: float(v) for k, v in run.data.metrics.items()}
                method = run.data.params.get("eval.method") or ev.decoding
                lines.append(Line(row, method, ev.decoding, evaluation_state(ev, finished), {**metrics, **extra},
                                  run_dir, artifact_dir(run)))
            else:
                status = _status((ev.sweep, ev.decoding), failed, running)
                if status == "missing":
                    status = _status(row.training.key, failed, running)
                lines.append(Line(row, ev.decoding, ev.decoding, status, dict(extra), run_dir))
    return lines


def side_by_side_pages(table: Table, lines: list[Line], out: Path) -> list[Path]:
    """One side-by-side page of candidates per group (dataset) of the table, from its finished
    evaluations that kept their predictions (evaluation.side_by_side)."""
    from loramcl.evaluation.side_by_side import write_side_by_side

    groups: dict[Optional[str], dict[Path, str]] = {}  # section -> {evaluation folder: column title}
    for line in lines:
        if line.status in WITH_VALUES and line.eval_dir is not None and \
                all((line.eval_dir / name).is_file() for name in ("predictions.jsonl", "metrics.json")):
            groups.setdefault(line.row.section, {}).setdefault(line.eval_dir, f"{line.row.label} / {line.method}")
    written = []
    for group, folders in groups.items():
        page = out / f"{table.name}{'_' + file_stem(str(group)) if group else ''}_candidates.html"
        try:
            written.append(write_side_by_side(list(folders), page, names=list(folders.values()),
                                              final=table.results_dir / page.name))  # written in a stage folder
        except (ValueError, OSError, KeyError) as err:  # e.g. evaluations of different test sets in one group
            log.info("%s: no side-by-side page for %s (%s)", table.name, group or "the table", err)
    return written


def _status(key: Any, failed: set, running: set) -> str:
    return "failed" if key in failed else "running" if key in running else "missing"


def columns(table: Table, lines: list[Line]) -> list[str]:
    """The table's metrics, then the extra (bilingual) columns present."""
    extra = sorted({k for line in lines for k in line.values if k.startswith(("share_", "won_"))})
    return list(table.metrics) + [k for k in extra if k not in table.metrics]


# ----------------------------------------------------------------------------------------------------
# CSV


def write_csv(table: Table, lines: list[Line], path: Path) -> Path:
    cols = columns(table, lines)
    paper_cols = [f"paper_{m}" for m in cols if any(m in line.paper for line in lines)]
    records = []
    for line in lines:
        record = line.as_dict()
        record.update({f"paper_{m}": line.paper[m] for m in cols if m in line.paper})
        records.append(record)
    return tables.write_csv(path, records, ["group", "row", "label", "method", "decoding", "status"],
                            cols + paper_cols)


# ----------------------------------------------------------------------------------------------------
# LaTeX (evaluation.tables)


def _entries(lines: list[Line]) -> list[tables.Entry]:
    return [tables.Entry(line.row.label, line.method, line.values, line.paper, line.row.section) for line in lines]


def _layout(table: Table, lines: list[Line]) -> tables.Layout:
    caption = latex_escape(table.title)
    if table.scale != "paper":
        caption += latex_escape(f" (rehearsal at scale={table.scale}: synthetic data, tiny models)")
    if table.paper_note:
        caption += r" $^\dagger$: " + latex_escape(table.paper_note) + "."
    methods = any(line.method for line in lines)  # the toy table's rows have no method column
    return tables.Layout(comment=f"Generated by scripts/reproduce.py table={table.name} scale={table.scale}; "
                                 f"do not edit.", caption=caption, label=f"tab:{table.name}",
                         first=("Training", "Method") if methods else ("Training",), labels=TOY_COLUMNS,
                         dagger=bool(table.paper_note))


def latex_long(table: Table, lines: list[Line]) -> str:
    """One line per row and method, one section per group, best of a column bold within its group."""
    return tables.latex_long(_entries(lines), columns(table, lines), _layout(table, lines))


def latex_pivot(table: Table, lines: list[Line]) -> str:
    """One line per row, one column per group, the table's first metric."""
    return tables.latex_pivot(_entries(lines), table.metrics[0], _layout(table, lines))


# ----------------------------------------------------------------------------------------------------
# Plots (evaluation.tables)


def plot_lines(table: Table, lines: list[Line], stem: Path) -> list[Path]:
    """`<stem>.png` / `.pdf` of `lines_figure`."""
    fig, drawn = lines_figure(table, lines)
    if not drawn:
        log.info("%s: no value of ours to plot yet (paper figures only)", table.name)
    return tables.save_figure(fig, stem)


def lines_figure(table: Table, lines: list[Line]) -> tuple[Any, int]:
    """(figure, points of ours drawn) of a `lines` plot: one panel per group, one line per series
    (x = a row field, y = the metric), the paper's figures on a twin axis in a rehearsal."""
    spec = table.plot
    metric, x_field = spec["y"], spec["x"]
    panels = []
    for group in dict.fromkeys(line.row.section for line in lines):
        mine = [line for line in lines if line.row.section == group]
        series = []
        for name in dict.fromkeys(line.row.fields.get("series", line.row.label) for line in mine):
            pts = sorted(((line.row.fields.get(x_field), line.values.get(metric), line.paper.get(metric))
                          for line in mine if line.row.fields.get("series", line.row.label) == name),
                         key=lambda p: (p[0] is None, p[0] or 0))
            series.append(tables.Series(name, [(x, y) for x, y, _ in pts if x is not None and y is not None],
                                        [(x, p) for x, _, p in pts if x is not None and p is not None]))
        panels.append((str(group) if group else table.name, series))
    return tables.lines_figure(panels, spec.get("x_label", x_field), column_label(metric)[0],
                               twin=table.scale != "paper")


def quality_diversity_figures(table: Table, lines: list[Line]) -> list[tuple[str, Any]]:
    """(file stem, figure) of the quality-versus-diversity scatter of each group (marker area: forward
    passes): the table's axes, and `<table>_semantic*` (oracle semantic similarity against semantic
    diversity) when the evaluations have the semantic metrics."""
    spec = table.plot
    figures = []
    for group in dict.fromkeys(line.row.section for line in lines):
        rows = [{"scheme": line.row.label, "method": line.method, "experiment": f"{table.name} {group or ''}".strip(),
                 **line.values} for line in lines if line.row.section == group and line.status in WITH_VALUES]
        quality = spec["y"]
        if not any(quality in r for r in rows) and spec.get("fallback_y"):
            quality = spec["fallback_y"]
        suffix = f"_{file_stem(str(group))}" if group else ""
        for (y, x), name in (((quality, spec["x"]), table.name + suffix),
                             (SEMANTIC_AXES, table.name + "_semantic" + suffix)):
            if not any(y in r and x in r for r in rows):
                log.info("%s%s: nothing to plot yet (%s against %s)", table.name, f" ({group})" if group else "", y, x)
                continue
            figures.append((name, tables.quality_diversity_figure(rows, y, x)[0]))
    return figures


def plot_quality_diversity(table: Table, lines: list[Line], stem: Path) -> list[Path]:
    """`<stem>[_semantic][_<group>].png` / `.pdf` of `quality_diversity_figures`."""
    paths: list[Path] = []
    for name, fig in quality_diversity_figures(table, lines):
        paths += tables.save_figure(fig, stem.with_name(name))
    return paths


def copy_run_figures(table: Table, lines: list[Line], out: Path) -> list[Path]:
    """The toy runs' own figures (loss.png, matrices.png), renamed after their row."""
    copied = []
    for line in lines:
        if line.run_dir is None:
            continue
        for name in ("loss.png", "matrices.png"):
            source = line.run_dir / name
            if source.is_file():
                target = out / f"{line.row.name}_{name}"
                shutil.copyfile(source, target)
                copied.append(target)
    return copied


def complete_row(row: dict) -> bool:
    """A CSV line with results (status done or stale; not missing, failed or running)."""
    return row.get("status") in WITH_VALUES


def write_results(table: Table, lines: list[Line], force: bool = False,
                  hint: str = "") -> tuple[list[Path], Optional[Path]]:
    """CSV, LaTeX and plots of the table into `table.results_dir`; returns (files, previous folder).

    An existing CSV is replaced only by one with at least as many complete lines (else
    FewerResults, one line naming both counts, and nothing is written), or with `force`; the files
    replaced are kept in `<results_dir>/previous/<time>/` (not when the CSV is unchanged). Every
    file is written beside its final name and renamed, the CSV last.
    """
    out = table.results_dir
    csv_name = f"{table.name}.csv"
    done = sum(line.status in WITH_VALUES for line in lines)
    guard_results(out / csv_name, done, len(lines), complete_row, force, hint)
    written, previous = publish_files(out, lambda stage: _write_files(table, lines, stage), csv_name)
    if previous is not None:
        log.info("%s: the files replaced are kept in %s", table.name, previous)
    return written, previous


def _write_files(table: Table, lines: list[Line], out: Path) -> list[Path]:
    """CSV, LaTeX and plots of the table into the folder `out`."""
    stem = out / table.name
    written = [write_csv(table, lines, stem.with_suffix(".csv"))]
    tex = stem.with_suffix(".tex")
    tex.write_text(latex_pivot(table, lines) if table.layout == "pivot" else latex_long(table, lines))
    written.append(tex)
    kind = table.plot.get("kind") if table.plot else None
    if kind == "lines":
        written += plot_lines(table, lines, stem)
    elif kind == "quality_diversity":
        written += plot_quality_diversity(table, lines, stem)
    if table.kind == "toy":
        written += copy_run_figures(table, lines, out)
    written += side_by_side_pages(table, lines, out)
    return written
