"""The results layer pinned by recorded outputs: `collect_results.py`'s and `reproduce.py`'s tables
(CSV, LaTeX) and the text of their plots, from fixed rows, stay what they were when the two modules
built them separately (recorded on 2026-12-07 from evaluation/collect.py and reproduce/results.py
before they were merged into evaluation/tables.py).

The inputs are deterministic: collect's rows as `collect()` returns them from MLflow (two
experiments: captioning with the semantic metrics, a same-method merge, a missing value and LaTeX
special characters; translation), and for every table of configs/table/ at scale=paper and
scale=demo one line per row and method, with every status (done, stale, missing, failed, running)
and values derived from the row's name.

Re-record (only when a change of the tables is intended, and say so in the commit):
    LORAMCL_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_results_golden.py
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest

from helpers import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
RECORD = os.environ.get("LORAMCL_RECORD_GOLDEN") == "1"
GOLDEN = FIXTURES / "golden_results"
TABLES = sorted(p.stem for p in (ROOT / "configs" / "table").glob("*.yaml"))
STATUSES = ("done", "done", "stale", "missing", "done", "failed", "running", "done")

MCL, MLE, MOE = "LoRA-MCL (relaxed_wta)", "LoRA-MLE", "LoRA-MoE"


def _value(*parts: str, low: float = 0.0, high: float = 100.0) -> float:
    """A value in [low, high) fixed by `parts` (two decimals, so that ties at display precision occur)."""
    digest = int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:8], 16)
    return round(low + (high - low) * (digest % 10_000) / 10_000, 2)


def collect_rows() -> list[dict]:
    """Rows as `evaluation.collect.collect` returns them (sorted, merged), for two experiments."""
    from loramcl.evaluation.collect import sort_rows

    caption = ["oracle_bleu_1", "oracle_bleu_4", "oracle_meteor", "oracle_cider_d", "oracle_spider", "oracle_nll",
               "div_1", "div_2", "mbleu_4", "vocab", "forward_passes", "oracle_semantic_similarity",
               "semantic_diversity", "custom_metric"]
    translation = ["bleu_mean", "oracle_bleu", "loo_bleu", "chrf_mean", "oracle_chrf", "pairwise_bleu", "div_1",
                   "div_2", "vocab", "oracle_nll", "forward_passes"]
    specs = [("eval_caption", "captioning", caption, [
        (MLE, "mle", "mle_beam", "Beam search (B=3)"), (MLE, "mle", "mle_dbs", "DBS (λ=0.5)"),
        (MOE, "moe", "moe_forced", "Forced experts"), (MCL, "mcl", "mcl_beam1", "Beam search (B=1)"),
        (MCL, "mcl", "mcl_beam2/mcl_beamK", "Beam search (B=2)"), ("my_scheme & co", "", "x", "50% #1")]),
        ("eval translation", "translation", translation, [
            (MLE, "mle", "mle_beam", "Beam search (B=5)"), (MCL, "mcl", "mcl_beam1", "Beam search (B=1)"),
            (MCL, "mcl", "mcl_dbs", "DBS (λ=0.8)")])]
    rows = []
    for experiment, task, metrics, runs in specs:
        for i, (scheme, kind, decoding, method) in enumerate(runs):
            row = {"experiment": experiment, "scheme": scheme, "scheme_kind": kind, "method": method,
                   "decoding": decoding, "K": 5, "task_type": task, "run_id": f"run{i:02d}"}
            for m in metrics:
                if (i + len(m)) % 7 == 3:
                    continue  # missing in this run
                high = 1.0 if m.startswith(("div_", "semantic", "oracle_semantic")) else 400.0 if m == "vocab" else 60.0
                row[m] = _value(experiment, decoding, m, high=high)
            if experiment == "eval_caption" and i == 1:
                row["oracle_spider"] = rows[0]["oracle_spider"] if "oracle_spider" in rows[0] else 1.0  # a tie
                row["mbleu_4"] = math.nan
            rows.append(row)
    return sort_rows(rows)


def _figure_texts(paths: list[Path]) -> list[str]:
    return sorted(p.name for p in paths)


def collect_outputs(out: Path) -> dict:
    from loramcl.evaluation.collect import latex_table, quality_diversity_figure, write_outputs

    rows = collect_rows()
    written = write_outputs(rows, out)
    record = {"files": {exp: _figure_texts(paths) for exp, paths in written.items()}}
    for exp in written:
        group = [r for r in rows if r["experiment"] == exp]
        stem = exp.replace(" ", "_")
        record[f"{stem}.csv"] = (out / f"{stem}.csv").read_text()
        record[f"{stem}.tex"] = (out / f"{stem}.tex").read_text()
        record[f"{stem} latex_table with caption"] = latex_table(group, caption="My caption", label="tab:mine")
        quality, diversity = ("oracle_spider", "mbleu_4") if exp == "eval_caption" else ("oracle_bleu", "pairwise_bleu")
        fig, points = quality_diversity_figure(group, quality, diversity)
        record[f"{stem} plot"] = _plot_record(fig, points)
    return record


def _plot_record(fig, points=None) -> dict:
    """What a reader sees of a figure: titles, axis labels, legend and label texts, points drawn."""
    axes = []
    for ax in fig.axes:
        legend = ax.get_legend()
        axes.append({"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                     "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
                     "lines": [[list(map(float, line.get_xdata())), list(map(float, line.get_ydata())),
                                line.get_label()] for line in ax.get_lines()],
                     "texts": sorted(t.get_text() for t in ax.texts)})
    record = {"axes": axes}
    if points is not None:
        record["points"] = [[p.scheme, p.method, p.x, p.y, p.size] for p in points]
    return record


def table_lines(table) -> list:
    """One line per row and method of `table`, with every status and values from the row's name."""
    from loramcl.reproduce.results import TOY_COLUMNS, Line

    lines = []
    for i, row in enumerate(table.rows):
        methods = [(ev.decoding, ev.decoding.replace("_", " ").title()) for ev in row.evaluations] or [("", "")]
        for j, (decoding, method) in enumerate(methods):
            status = STATUSES[(i + j) % len(STATUSES)]
            values: dict[str, float] = {}
            if status in ("done", "stale"):
                keys = list(TOY_COLUMNS) if table.kind == "toy" else list(table.metrics)
                values = {m: _value(table.name, row.id, decoding, m, high=1.0 if m == "passed" else 50.0)
                          for m in keys if (i + j + len(m)) % 5 != 1}
                if table.kind == "bilingual":
                    values.update({f"{what}_{lang}_hyp{h}": _value(row.id, what, lang, str(h), high=1.0)
                                   for what in ("share", "won") for lang in ("en", "fr") for h in range(2)})
            lines.append(Line(row, method, decoding, status, values))
    return lines


def reproduce_outputs(name: str, scale: str, tmp_path: Path) -> dict:
    from loramcl.reproduce.main import compose_all
    from loramcl.reproduce.results import _write_files, latex_long, latex_pivot, lines_figure, write_csv

    _, table = compose_all(ROOT, [f"table={name}", f"scale={scale}", f"paths.log_dir={tmp_path / 'logs'}",
                                  f"results_dir={tmp_path / 'results'}"])
    lines = table_lines(table)
    out = tmp_path / "out"
    out.mkdir()
    written = _write_files(table, lines, out)
    record = {"files": _figure_texts(written),
              "csv": (out / f"{table.name}.csv").read_text(), "tex": (out / f"{table.name}.tex").read_text()}
    other = latex_long if table.layout == "pivot" else latex_pivot  # both layouts of every table
    record["tex, other layout"] = other(table, lines)
    if table.plot and table.plot.get("kind") == "lines":
        record["plot"] = _plot_record(lines_figure(table, lines)[0])
    write_csv(table, [], out / "empty.csv")
    record["csv without lines"] = (out / "empty.csv").read_text()
    return record


def _compare_or_record(name: str, value: dict) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    if RECORD:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.is_file(), f"missing golden file {path}: record it with LORAMCL_RECORD_GOLDEN=1"
    want = json.loads(path.read_text())
    got = json.loads(text)
    assert sorted(got) == sorted(want), name
    for key in want:
        assert got[key] == want[key], f"{name}: {key} differs from the recorded output"


def test_collect_results_tables_are_unchanged(tmp_path):
    _compare_or_record("collect", collect_outputs(tmp_path))


@pytest.mark.parametrize("scale", ["paper", "demo"])
@pytest.mark.parametrize("name", TABLES)
def test_reproduce_tables_are_unchanged(name, scale, tmp_path):
    _compare_or_record(f"reproduce_{name}_{scale}", reproduce_outputs(name, scale, tmp_path))
