"""The results layer: tables (CSV, LaTeX) and plots of evaluation results, for both
`scripts/collect_results.py` (one table per MLflow experiment, `evaluation.collect`) and
`scripts/reproduce.py` (a paper table, `reproduce.results`). Those two only gather values; how a value
is shown, which cell is best, how a LaTeX table is laid out and how a plot is drawn live here.

A table is a list of `Entry`: one line of values under a block (a training scheme or a table row,
written on the block's first line only), optionally a method, a section (a dataset: a LaTeX section
and a plot panel) and the paper's figures for the same cells. Two LaTeX layouts: `latex_long` (one
line per entry, best of a column bold within its section) and `latex_pivot` (one line per block, one
column per section, one metric). Registry metrics (`metrics.registry.METRICS`) are shown with two
decimals (counts without), other values with three.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from loramcl.evaluation.labels import place_labels
from loramcl.metrics.registry import METRICS

log = logging.getLogger(__name__)

INTEGER_KEYS = {"vocab", "forward_passes"}  # counts: shown without decimals
MAX_MARKER_AREA = 400.0  # points^2 of the method with the most forward passes; others scale linearly
SEMANTIC_AXES = ("oracle_semantic_similarity", "semantic_diversity")  # (quality, diversity) of the semantic plot


# ----------------------------------------------------------------------------------------------------
# Values


def has_value(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def format_value(key: str, value: Any) -> str:
    """A cell's text: registry metrics with two decimals (counts none), other numbers three; "" if none."""
    if not has_value(value):
        return ""
    if key not in METRICS:
        return f"{value:.3f}"
    return f"{value:.0f}" if key in INTEGER_KEYS else f"{value:.2f}"


def best_rows(rows: Sequence[Mapping[str, Any]], key: str) -> set[int]:
    """Indices of the best rows for a registry metric `key` (max if `higher`, else min), compared at
    displayed precision, so that values which print the same are all bold; none for other keys."""
    if key not in METRICS:
        return set()
    shown = {i: float(format_value(key, r.get(key))) for i, r in enumerate(rows) if has_value(r.get(key))}
    if not shown:
        return set()
    best = (max if METRICS[key].higher else min)(shown.values())
    return {i for i, v in shown.items() if v == best}


def metric_columns(rows: Sequence[Mapping[str, Any]],
                   families: Sequence[str] = ("quality", "diversity", "cost")) -> list[str]:
    """Registry metrics with at least one value in `rows`, family by family, registry order within a family."""
    present = {k for r in rows for k, v in r.items() if k in METRICS and has_value(v)}
    return [m.key for fam in families for m in METRICS.values() if m.family == fam and m.key in present]


def column_label(key: str, extra: Optional[Mapping[str, tuple[str, Optional[bool]]]] = None
                 ) -> tuple[str, Optional[bool]]:
    """(header label, higher is better / None: no best) of a registry metric, a key of `extra`, or a
    bilingual language column (share_en_hyp0: "H1 EN captions", won_fr_hyp1: "H2 FR refs won")."""
    if key in METRICS:
        return METRICS[key].label, METRICS[key].higher
    if extra and key in extra:
        return extra[key]
    parts = key.split("_")
    if len(parts) == 3 and parts[0] in ("share", "won") and parts[2].startswith("hyp"):
        what = "captions" if parts[0] == "share" else "refs won"
        return f"H{int(parts[2][3:]) + 1} {parts[1].upper()} {what}", None
    return key, None


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


# ----------------------------------------------------------------------------------------------------
# CSV


def write_csv(path: Path, records: Sequence[Mapping[str, Any]], id_columns: Sequence[str],
              value_columns: Sequence[str]) -> Path:
    """One line per record: its id columns as given, its values where they are numbers (else empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(id_columns) + list(value_columns), extrasaction="ignore")
        writer.writeheader()
        for r in records:
            line = {c: r.get(c, "") for c in id_columns}
            line.update({c: r[c] if has_value(r.get(c)) else "" for c in value_columns})
            writer.writerow(line)
    return path


# ----------------------------------------------------------------------------------------------------
# LaTeX

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
# Unicode that pdflatex does not take (method labels such as "DBS (λ=0.5)") becomes math mode.
_LATEX_UNICODE = {"α": r"$\alpha$", "β": r"$\beta$", "γ": r"$\gamma$", "δ": r"$\delta$", "ε": r"$\varepsilon$",
                  "η": r"$\eta$", "θ": r"$\theta$", "κ": r"$\kappa$", "λ": r"$\lambda$", "μ": r"$\mu$",
                  "π": r"$\pi$", "ρ": r"$\rho$", "σ": r"$\sigma$", "τ": r"$\tau$", "ω": r"$\omega$",
                  "≤": r"$\leq$", "≥": r"$\geq$", "×": r"$\times$", "∝": r"$\propto$", "–": "--", "—": "---"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch) or _LATEX_UNICODE.get(ch) or ch for ch in str(text))


@dataclass
class Entry:
    """One line of a results table."""

    block: str  # the first column: a training scheme, a table row's label
    method: str = ""
    values: Mapping[str, float] = field(default_factory=dict)
    paper: Mapping[str, float] = field(default_factory=dict)  # the paper's figures for the same cells
    section: Optional[str] = None  # a dataset: a section of a long table, a column of a pivot


@dataclass
class Layout:
    """What frames a LaTeX table: its comment, caption (LaTeX), label and first column names."""

    comment: str  # "Generated by ...; do not edit."
    caption: str
    label: str
    first: tuple[str, ...] = ("Training", "Method")  # one name: no method column
    labels: Mapping[str, tuple[str, Optional[bool]]] = field(default_factory=dict)  # non-registry columns
    families: bool = False  # a Quality | Diversity header over the registry columns
    block_rule: str = "cmidrule"  # between blocks: "cmidrule" (a thin rule) or "midrule"
    dagger: bool = False  # the paper's figures are unverified: a dagger on each (explained in the caption)


def _head(layout: Layout, spec: str) -> list[str]:
    return [f"% {layout.comment}", r"% Needs \usepackage{booktabs}.", r"\begin{table}[t]", r"\centering", r"\small",
            rf"\caption{{{layout.caption}}}", rf"\label{{{layout.label}}}", rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule"]


def _foot() -> list[str]:
    return [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]


def _header(key: str, layout: Layout) -> str:
    label, higher = column_label(key, layout.labels)
    return latex_escape(label) + ("" if higher is None else r" $\uparrow$" if higher else r" $\downarrow$")


def _cell(key: str, value: Any, bold: bool = False) -> str:
    text = format_value(key, value)
    if not text:
        return "--"
    return rf"\textbf{{{text}}}" if bold else text


def _paper_cell(key: str, value: Optional[float], dagger: bool) -> str:
    if value is None:
        return ""
    return format_value(key, value) + (r"$^\dagger$" if dagger else "")


def latex_long(entries: Sequence[Entry], columns: Sequence[str], layout: Layout) -> str:
    """One line per entry; a section title before each section's entries, the block's name on its
    first line, a rule between blocks; best of each column bold within its section; the paper's
    figure in a "paper" column after each column that has one."""
    with_paper = [m for m in columns if any(m in e.paper for e in entries)]
    methods = len(layout.first) > 1
    spec = "l" * len(layout.first) + "".join("rr" if m in with_paper else "r" for m in columns)
    width = len(spec)
    out = _head(layout, spec)
    if layout.families:
        families = [(name, [k for k in columns if k in METRICS and METRICS[k].family == name.lower()])
                    for name in ("Quality", "Diversity")]
        families = [(name, keys) for name, keys in families if keys]
        if families:
            cells, rules, start = [""] * len(layout.first), [], len(layout.first) + 1
            for name, keys in families:
                cells.append(rf"\multicolumn{{{len(keys)}}}{{c}}{{{name}}}")
                rules.append(rf"\cmidrule(lr){{{start}-{start + len(keys) - 1}}}")
                start += len(keys)
            out += [" & ".join(cells) + r" \\", " ".join(rules)]
    header = list(layout.first)
    for m in columns:
        header.append(_header(m, layout))
        if m in with_paper:
            header.append("paper")
    out += [" & ".join(header) + r" \\", r"\midrule"]
    rule = r"\midrule" if layout.block_rule == "midrule" else r"\cmidrule(lr){1-" + str(width) + "}"
    sections = list(dict.fromkeys(e.section for e in entries))
    for s_index, section in enumerate(sections):
        mine = [e for e in entries if e.section == section]
        best = {m: best_rows([e.values for e in mine], m) for m in columns}
        if section is not None:
            if s_index:
                out.append(r"\midrule")
            out.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(section)}}}}} \\")
        previous = None
        for i, e in enumerate(mine):
            if previous is not None and e.block != previous:
                out.append(rule)
            cells = [latex_escape(e.block) if e.block != previous else ""]
            if methods:
                cells.append(latex_escape(e.method))
            for m in columns:
                cells.append(_cell(m, e.values.get(m), i in best[m]))
                if m in with_paper:
                    cells.append(_paper_cell(m, e.paper.get(m), layout.dagger))
            out.append(" & ".join(cells) + r" \\")
            previous = e.block
    return "\n".join(out + _foot())


def latex_pivot(entries: Sequence[Entry], metric: str, layout: Layout) -> str:
    """One line per block, one column per section (and its paper figure), one metric; best of each
    section's column bold."""
    sections = list(dict.fromkeys(e.section for e in entries))
    blocks = list(dict.fromkeys(e.block for e in entries))
    cell = {(e.block, e.section): e for e in entries}
    with_paper = {s for s in sections if any(e.paper for e in entries if e.section == s)}
    spec = "l" + "".join("rr" if s in with_paper else "r" for s in sections)
    header = [_header(metric, layout)]
    for s in sections:
        header.append(latex_escape(str(s)))
        if s in with_paper:
            header.append("paper")
    out = _head(layout, spec) + [" & ".join(header) + r" \\", r"\midrule"]
    best = {s: best_rows([cell[(b, s)].values for b in blocks if (b, s) in cell], metric) for s in sections}
    for i, block in enumerate(blocks):
        cells = [latex_escape(block)]
        for s in sections:
            e = cell.get((block, s))
            cells.append(_cell(metric, e.values.get(metric) if e else None, i in best[s]))
            if s in with_paper:
                cells.append(_paper_cell(metric, e.paper.get(metric) if e else None, layout.dagger))
        out.append(" & ".join(cells) + r" \\")
    return "\n".join(out + _foot())


# ----------------------------------------------------------------------------------------------------
# Plots


def save_figure(fig, stem: Path) -> list[Path]:
    """`<stem>.png` (200 dpi) and `<stem>.pdf`."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=200)
    return paths


@dataclass(frozen=True)
class PlotPoint:
    scheme: str
    method: str
    x: float  # diversity metric
    y: float  # quality metric
    forward_passes: Optional[float]
    size: float  # marker area in points^2, proportional to forward_passes


def default_axes(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(quality key, diversity key) of the plot: oracle SPIDEr (else CIDEr-D) vs mBLEU-4 for captioning,
    oracle BLEU vs pairwise BLEU for translation and text tasks of one's own."""
    present = set(metric_columns(rows))
    translation = any(r.get("task_type") in ("translation", "text") for r in rows) or (
        "oracle_bleu" in present and "oracle_cider_d" not in present)
    if translation:
        return "oracle_bleu", "pairwise_bleu"
    return ("oracle_spider" if "oracle_spider" in present else "oracle_cider_d"), "mbleu_4"


def plot_points(rows: Sequence[Mapping[str, Any]], quality: str, diversity: str) -> list[PlotPoint]:
    """The points the plot draws (rows lacking either metric are left out, with a log line)."""
    usable = [r for r in rows if has_value(r.get(quality)) and has_value(r.get(diversity))]
    for r in rows:
        if not any(r is u for u in usable):
            log.info("plot: %s / %s has no %s or %s, not plotted", r["scheme"], r["method"], quality, diversity)
    passes = [r["forward_passes"] for r in usable if has_value(r.get("forward_passes"))]
    top = max(passes) if passes else 0.0
    points = []
    for r in usable:
        fp = r.get("forward_passes") if has_value(r.get("forward_passes")) else None
        size = MAX_MARKER_AREA * fp / top if fp is not None and top > 0 else MAX_MARKER_AREA / 4
        points.append(PlotPoint(r["scheme"], r["method"], float(r[diversity]), float(r[quality]), fp, size))
    return points


def axis_label(key: str) -> str:
    metric = METRICS.get(key)
    if metric is None:
        return key
    if metric.family == "diversity":
        return f"{metric.label} ({'higher' if metric.higher else 'lower'} = more diverse)"
    return f"{'Oracle ' if key.startswith('oracle_') and not metric.label.startswith('Oracle') else ''}" \
           f"{metric.label} ({'higher' if metric.higher else 'lower'} = better)"


def quality_diversity_figure(rows: Sequence[Mapping[str, Any]], quality: str, diversity: str, title: str = ""):
    """(matplotlib Figure, points): one scatter (colour + marker) per scheme, method names as labels
    placed without overlap (`evaluation.labels`); marker area proportional to forward passes. `rows`
    are dicts with scheme, method and metric keys; the title defaults to the first row's experiment."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    points = plot_points(rows, quality, diversity)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    schemes = list(dict.fromkeys(p.scheme for p in points))
    handles = []
    for i, scheme in enumerate(schemes):
        mine = [p for p in points if p.scheme == scheme]
        colour, marker = colours[i % len(colours)], markers[i % len(markers)]
        ax.scatter([p.x for p in mine], [p.y for p in mine], s=[p.size for p in mine], c=colour, marker=marker,
                   alpha=0.8, edgecolors="black", linewidths=0.5, label=scheme)
        handles.append(Line2D([], [], color=colour, marker=marker, linestyle="none", markersize=7, label=scheme))
    ax.set_xlabel(axis_label(diversity))
    ax.set_ylabel(axis_label(quality))
    ax.set_title(title or (rows[0].get("experiment", "") if rows else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(0.15)  # room around the points for their labels
    if handles:
        ax.legend(handles=handles, fontsize=8, title="marker area ∝ forward passes", title_fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))  # the bottom strip holds the key of labels that found no room
    place_labels(ax, [(p.x, p.y) for p in points], [p.method for p in points],  # after the layout: no overlap
                 marker_radius=[max(p.size, 1.0) ** 0.5 / 2 for p in points])
    return fig, points


@dataclass
class Series:
    """One curve of a line plot: ours (x, y) and the paper's (x, y) at the same x."""

    name: str
    ours: list[tuple[float, float]]
    paper: list[tuple[float, float]]


def lines_figure(panels: Sequence[tuple[str, Sequence[Series]]], x_label: str, y_label: str,
                 twin: bool) -> tuple[Any, int]:
    """(figure, points of ours drawn): one panel per (title, series), one line per series; the paper's
    figures as hollow markers, on the same axis, or with `twin` on a twin axis (its own scale, right):
    a rehearsal's tiny models give values of another magnitude, and one axis would squeeze one of the
    two curves flat."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(panels), 3.6))
    drawn = 0
    for i, (title, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        paper_ax = ax.twinx() if twin else ax
        for j, s in enumerate(series):
            if s.ours:
                ax.plot(*zip(*s.ours), marker="o", color=f"C{j}", label=f"{s.name} (ours)")
                drawn += len(s.ours)
            if s.paper:
                paper_ax.plot(*zip(*s.paper), marker="o", mfc="none", linestyle="--", color=f"C{j}",
                              label=f"{s.name} (paper{', right axis' if twin else ''})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label + (" (ours)" if twin else ""))
        if twin:
            paper_ax.set_ylabel(y_label + " (paper)")
        ax.grid(True, alpha=0.3)
        handles = [h for a in {ax: None, paper_ax: None} for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles=handles, fontsize=7)
    fig.tight_layout()
    return fig, drawn
