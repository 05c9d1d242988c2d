"""Which answer mode each candidate takes, per hypothesis and per decoding method.

For data whose answers fall into known modes (the text demo's three styles, `synthetic_text.style_of`;
or any `labeler(text) -> mode` of one's own), `mode_report` reads evaluations' predictions.jsonl and
says, per method, which mode each candidate position took (for LoRA-MCL: each hypothesis) and how
well an item's K candidates cover the modes of its references:

    shares[k][mode]   fraction of the items whose candidate k is in `mode`
    dominant[k]       candidate k's most frequent mode, and `specialised`: every candidate position
                      keeps one mode in >= 90 % of the items, and no two share it
    coverage          mean over items of |modes among the K candidates| / |modes among its references|
    all_modes         fraction of items whose K candidates cover every mode of its references

    python scripts/answer_modes.py logs/eval/multiruns/<time>   # every evaluation under it
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

SPECIALISED = 0.9  # a candidate position "keeps" a mode when it takes it for at least 90 % of the items


def mode_report(records: Iterable[dict], labeler: Callable[[str], str]) -> dict:
    """The report of one evaluation's records (predictions.jsonl lines); see the module text."""
    counts: dict[int, Counter] = {}
    coverage, complete, n = 0.0, 0, 0
    for record in records:
        cands = record["candidates"]
        modes = [labeler(c["text"]) for c in cands]
        for k, mode in enumerate(modes):
            counts.setdefault(k, Counter())[mode] += 1
        wanted = {labeler(r) for r in record.get("references") or []} or set(modes)
        covered = wanted & set(modes)
        coverage += len(covered) / len(wanted)
        complete += covered == wanted
        n += 1
    if n == 0:
        raise ValueError("no records to analyse")
    shares = {k: {m: c / n for m, c in sorted(counter.items())} for k, counter in sorted(counts.items())}
    dominant = {k: max(s, key=s.get) for k, s in shares.items()}
    specialised = all(s[dominant[k]] >= SPECIALISED for k, s in shares.items()) and \
        len(set(dominant.values())) == len(dominant)
    return {"items": n, "shares": shares, "dominant": dominant, "specialised": specialised,
            "coverage": coverage / n, "all_modes": complete / n}


def evaluation_folders(paths: Iterable[str | Path]) -> list[Path]:
    """Every folder holding a predictions.jsonl at or below `paths` (an evaluation, or a sweep)."""
    found = []
    for path in map(Path, paths):
        if (path / "predictions.jsonl").is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.rglob("predictions.jsonl")))
        else:
            raise FileNotFoundError(f"{path} is neither an evaluation folder nor a folder holding some")
    if not found:
        raise FileNotFoundError(f"no predictions.jsonl under {', '.join(map(str, paths))}")
    return found


def describe(folder: Path) -> str:
    """"<scheme> / <method>" from the evaluation's metrics.json, else the folder's name."""
    info = folder / "metrics.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        if meta.get("method"):
            return f"{meta.get('scheme', '?')} / {meta['method']}"
    return folder.name


def report_table(rows: list[tuple[str, dict]]) -> str:
    """A plain-text table: one line per method, candidate k's dominant mode and its share, coverage."""
    lines = [f"{'method':<48} {'candidates (dominant mode, share)':<60} {'coverage':>8} {'all modes':>9}"]
    for name, r in rows:
        cells = ", ".join(f"{k}:{r['dominant'][k]} {r['shares'][k][r['dominant'][k]]:.0%}" for k in r["shares"])
        mark = " (specialised)" if r["specialised"] else ""
        lines.append(f"{name[:48]:<48} {cells + mark:<60} {r['coverage']:>8.2f} {r['all_modes']:>9.0%}")
    return "\n".join(lines)
