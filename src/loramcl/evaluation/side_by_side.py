"""Several evaluations' candidates for the same items, side by side: one self-contained HTML page.

An evaluation is a folder holding its predictions.jsonl and metrics.json (eval.py's run folder, or
its MLflow run's artifacts); `scripts/browse.py` finds them from folders, sweeps or an MLflow
experiment, and `scripts/reproduce.py` writes one page per table. Items are matched by id (those
every evaluation decoded, in the first one's order). Per item: the input (as on each evaluation's
own page: `browser.item_inputs`, read from the trained run's data when it is still there), the
references, and one column per evaluation with its K candidates, the oracle-best marked, and a link
to the item on that evaluation's own candidates.html.

Filters: "disagree most" sorts the items by the spread of the methods' oracle scores (the best
candidate's primary sentence score per method: max - min over methods); "MCL wins" / "MCL loses"
keep the items where the best LoRA-MCL evaluation's oracle score is above / below every other
method's.
"""

from __future__ import annotations

import html
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from loramcl.evaluation.browser import PAGE_NAME, STYLE, input_html, number, directions

log = logging.getLogger(__name__)

TASK_PRIMARY = {"captioning": "cider_d", "translation": "bleu", "text": "chrf"}  # metrics.tasks.TASKS' primaries


@dataclass
class Evaluation:
    """One evaluation's folder, its description and its records by item id."""

    folder: Path
    info: dict
    records: dict[str, dict] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    name: Optional[str] = None  # its column's title; None: "<scheme> / <method>" from metrics.json

    @classmethod
    def load(cls, folder: Path) -> "Evaluation":
        folder = Path(folder)
        info = json.loads((folder / "metrics.json").read_text())
        lines = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines() if line.strip()]
        return cls(folder, info, {str(r["id"]): r for r in lines}, [str(r["id"]) for r in lines])

    @property
    def label(self) -> str:
        method = self.info.get("method") or self.info.get("decoding", "?")
        return self.name or f"{self.info.get('scheme', '?')} / {method}"

    @property
    def is_mcl(self) -> bool:
        return self.info.get("scheme_kind") == "mcl"


def find_evaluations(paths: Sequence[str | Path]) -> list[Path]:
    """Every folder at or below `paths` holding predictions.jsonl and metrics.json."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "predictions.jsonl").is_file() and (path / "metrics.json").is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.rglob("predictions.jsonl") if (p.parent / "metrics.json").is_file())
        else:
            raise FileNotFoundError(f"{path} is neither an evaluation folder nor a folder holding some")
    if not found:
        raise FileNotFoundError(f"no evaluation (predictions.jsonl + metrics.json) under {', '.join(map(str, paths))}")
    return list(dict.fromkeys(found))


def run_inputs(info: dict, ids: Sequence[str]) -> dict[str, dict]:
    """The items' inputs from the trained run's test split ({} with a log line when it cannot be read)."""
    from hydra.utils import instantiate

    from loramcl.evaluation.browser import item_inputs
    from loramcl.runs import RunFolder

    try:
        cfg = RunFolder.containing(Path(info["train_run"])).config()
        datamodule = instantiate(cfg.data)  # its own values only (the run's trainer refers to Hydra's runtime)
        return item_inputs(datamodule.load_sets()["test"], ids)
    except Exception as err:  # moved or deleted data: the page is written without inputs
        log.info(f"inputs not shown: the run's test data cannot be read ({' '.join(str(err).split())[:160]})")
        return {}


def _oracle(record: dict, primary: Optional[str], higher: bool) -> Optional[tuple[float, int]]:
    values = [c.get("metrics", {}).get(primary) for c in record["candidates"]] if primary else []
    if not values or any(v is None for v in values):
        return None
    best = max(range(len(values)), key=lambda j: values[j] if higher else -values[j])
    return float(values[best]), best


def page_html(evaluations: list[Evaluation], inputs: dict[str, dict], out: Path) -> str:
    """The side-by-side page (see the module text); `out`: where it will be read from (its links are
    relative to that folder)."""
    first = evaluations[0]
    ids = [i for i in first.order if all(i in e.records for e in evaluations)]
    primary = TASK_PRIMARY.get(str(first.info.get("task_type")))
    higher = directions([first.records[ids[0]]]).get(primary, True) if ids and primary else True
    head = "".join(f"<th>{html.escape(e.label)}</th>" for e in evaluations)
    rows = []
    for n, key in enumerate(ids):
        oracles = [_oracle(e.records[key], primary, higher) for e in evaluations]
        scores = [o[0] for o in oracles if o is not None]
        spread = (max(scores) - min(scores)) if len(scores) > 1 else 0.0
        mcl = [o[0] for o, e in zip(oracles, evaluations) if o is not None and e.is_mcl]
        rest = [o[0] for o, e in zip(oracles, evaluations) if o is not None and not e.is_mcl]
        verdict = ""
        if mcl and rest:
            best_mcl, best_rest = (max(mcl), max(rest)) if higher else (-min(mcl), -min(rest))
            verdict = "wins" if best_mcl > best_rest else "loses" if best_mcl < best_rest else "ties"
        cells = []
        for e, oracle in zip(evaluations, oracles):
            record = e.records[key]
            link = Path(os.path.relpath(e.folder / PAGE_NAME, out.parent)).as_posix()
            items = "".join(
                f'<li class="candidate{" oracle" if oracle and j == oracle[1] else ""}">'
                f'<span class="idx">{c.get("hypothesis", j)}</span> {html.escape(c["text"])}'
                f'{" ★" if oracle and j == oracle[1] else ""}'
                f' <span class="score">{number(c.get("metrics", {}).get(primary)) if primary else ""}</span></li>'
                for j, c in enumerate(record["candidates"]))
            position = e.order.index(key)
            cells.append(f'<td><ol class="cands">{items}</ol><a href="{html.escape(link)}#item-{position}">'
                         f'on its page (#{position})</a></td>')
        refs = "".join(f"<li>{html.escape(r)}</li>" for r in first.records[key].get("references", []))
        rows.append(f'<tr class="item" data-id="{html.escape(key)}" data-spread="{spread:.6g}" data-mcl="{verdict}">'
                    f'<td class="what"><b>#{n} · {html.escape(key)}</b>{input_html(inputs.get(key, {}))}'
                    f'<details class="refs"><summary>references</summary><ol>{refs}</ol></details></td>'
                    f'{"".join(cells)}</tr>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>side by side</title>'
            f'<style>{STYLE}{SIDE_STYLE}</style></head><body data-items="{len(ids)}">'
            f'<header><h1>{len(evaluations)} evaluations side by side, {len(ids)} items</h1>'
            f'<label>show <select id="view"><option value="all">all items</option>'
            f'<option value="spread">where the methods disagree most</option>'
            f'<option value="wins">where MCL\'s oracle wins</option><option value="loses">where MCL\'s oracle loses'
            f'</option></select></label> <span id="shown">{len(ids)}</span> shown; oracle by '
            f'{html.escape(primary or "no sentence metric")}</header><main><table class="side"><thead><tr>'
            f'<th>item</th>{head}</tr></thead><tbody id="items">{"".join(rows)}</tbody></table></main>'
            f'<script>{SIDE_JS}</script></body></html>')


SIDE_STYLE = """
table.side{border-collapse:collapse;width:100%} table.side td,table.side th{border:1px solid #e3e3e3;padding:6px}
table.side thead th{position:sticky;top:86px;background:#fff} .cands{margin:0;padding-left:0;list-style:none}
.cands .idx{color:#888;display:inline-block;min-width:1.5em} .cands .score{color:#888;font-size:12px}
.cands li.oracle{background:#e6f4e6;font-weight:600} td.what{max-width:280px} td.what audio{width:100%} tr.item.hidden{display:none}
tr.item{content-visibility:auto;contain-intrinsic-size:auto 160px}
"""
SIDE_JS = """
const body=document.getElementById('items'),rows=[...body.querySelectorAll('tr.item')],view=document.getElementById('view');
view.addEventListener('change',()=>{const v=view.value;let shown=rows;
if(v==='spread'){shown=[...rows].sort((a,b)=>b.dataset.spread-a.dataset.spread).slice(0,Math.max(1,Math.ceil(rows.length/5)));}
else if(v!=='all'){shown=rows.filter(r=>r.dataset.mcl===v);}
const keep=new Set(shown);for(const r of rows)r.classList.toggle('hidden',!keep.has(r));
for(const r of shown)body.appendChild(r);document.getElementById('shown').textContent=shown.length;});
"""


def write_side_by_side(folders: Sequence[Path], out: Path, with_inputs: bool = True,
                       final: Optional[Path] = None, names: Optional[Sequence[str]] = None) -> Path:
    """The page for the evaluations in `folders` (see `find_evaluations`), written to `out`; `final`:
    where it will be read from when that is elsewhere (a page written in a staging folder and moved:
    its links to the evaluations' own pages are relative to `final`); `names`: the columns' titles
    (default "<scheme> / <method>", which two trainings of one scheme share, e.g. two LoRA ranks)."""
    from loramcl.utils.atomic import write_text_atomic

    evaluations = []
    for i, evaluation in enumerate(map(Evaluation.load, folders)):
        evaluation.name = names[i] if names else None
        if evaluation.records:
            evaluations.append(evaluation)
        else:  # e.g. the teacher-forced test loss (decoding=test_loss)
            log.info("%s decoded no candidates: not on the page", evaluation.label)
    if not evaluations:
        raise ValueError("none of these evaluations decoded candidates")
    kinds = {e.info.get("task_type") for e in evaluations}
    if len(kinds) > 1:
        raise ValueError(f"these evaluations are of different tasks ({', '.join(sorted(map(str, kinds)))}): "
                         f"give evaluations of one test set")
    first = evaluations[0]
    ids = [i for i in first.order if all(i in e.records for e in evaluations)]
    if not ids:
        raise ValueError("these evaluations have no item in common (different test sets?)")
    inputs = run_inputs(first.info, ids) if with_inputs and first.info.get("train_run") else {}
    out = Path(out)
    write_text_atomic(out, page_html(evaluations, inputs, Path(final or out)))
    return out


def experiment_evaluations(tracking_uri: str, experiment: str) -> list[Path]:
    """The artifact folders of an MLflow experiment's finished evaluation runs (each holds its
    predictions.jsonl and metrics.json), newest run of each decoding first kept."""
    from loramcl.evaluation.collect import _client, eval_runs
    from loramcl.utils.mlflow_store import artifact_dir

    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise FileNotFoundError(f"no MLflow experiment {experiment!r} in {tracking_uri}")
    folders, seen = [], set()
    for run in sorted(eval_runs(client, found.experiment_id), key=lambda r: -r.info.start_time):
        folder = artifact_dir(run)
        key = (run.data.params.get("eval.scheme"), run.data.params.get("eval.decoding"))
        if run.info.status == "FINISHED" and folder is not None and (folder / "predictions.jsonl").is_file() \
                and key not in seen:
            seen.add(key)
            folders.append(folder)
    if not folders:
        raise FileNotFoundError(f"experiment {experiment!r} has no finished evaluation with its predictions")
    return folders[::-1]
