"""A browser of an evaluation's candidates: one self-contained HTML page, candidates.html.

Every evaluation writes it beside predictions.jsonl (and logs it to its MLflow run, whose UI shows
HTML artifacts). One file, no server and no network: it opens from a laptop after `scp`. Per item:
the input (the source text, the audio clip playable, the image), the references, and the K
candidates with what produced each (hypothesis, DBS group, beam rank, sample: `hypotheses.index_name`),
their sentence scores and the decoder's score; the oracle-best candidate by the task's primary score
is marked, and the item's win statistics say which candidate each sentence metric prefers. A filter
box narrows the items by any text on them; `candidates.html#item-<n>` opens item n (0-based, file
order), which the side-by-side pages link to.

Sizes: the page itself is about 1 kB per candidate. Media are embedded (data URIs), each clip cut to
its first `AUDIO_SECONDS` (16 kHz, 16-bit WAV: 32 kB per second) and each image shrunk to
`IMAGE_SIDE` pixels on its longest side (JPEG), until the page holds `MEDIA_BUDGET` bytes of media;
items after that say that their medium was not embedded.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

MEDIA_BUDGET = 20_000_000  # bytes of embedded media per page: 60 ten-second clips, or ~1,500 images
AUDIO_SECONDS = 10.0  # the first 10 s of a clip (Clotho's clips are 15-30 s: enough to recognise one)
IMAGE_SIDE = 256  # px, the longest side of an embedded image
PAGE_NAME = "candidates.html"


# ------------------------------------------------------------------------------------------- media
def audio_uri(samples: np.ndarray, sample_rate: int = 16000, seconds: float = AUDIO_SECONDS) -> str:
    """A data URI of a WAV file (16-bit PCM) holding the first `seconds` of `samples`."""
    import soundfile as sf

    clip = np.asarray(samples, dtype=np.float32)[: int(seconds * sample_rate)]
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(clip, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_uri(image: Any, side: int = IMAGE_SIDE) -> str:
    """A data URI of `image` (PIL) as a JPEG whose longest side is at most `side` pixels."""
    image = image.convert("RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def item_inputs(dataset: Any, ids: Sequence[str], budget: int = MEDIA_BUDGET) -> dict[str, dict]:
    """{item id: its input} for the items `ids` of an evaluation's test set, in file order: "text"
    (a source), "audio" / "image" (a data URI), or "note" when the media budget is spent."""
    wanted, found, spent = set(ids), {}, 0
    for i in range(len(dataset)):
        if len(found) == len(wanted):
            break
        item = dataset[i]
        key = str(item.get("id"))
        if key not in wanted:
            continue
        if "source" in item:
            found[key] = {"text": str(item["source"])}
            continue
        kind = "audio" if "audio" in item else "image" if "image" in item else None
        if kind is None:
            found[key] = {}
            continue
        uri = None if spent > budget else \
            audio_uri(item["audio"], int(item.get("sample_rate", 16000))) if kind == "audio" else image_uri(item["image"])
        if uri is None or spent + len(uri) > budget:  # from the first medium that does not fit, none is embedded
            spent = budget + 1
            found[key] = {"note": f"{kind} not embedded: the page's {budget / 1e6:.3g} MB media budget is spent"}
            continue
        spent += len(uri)
        found[key] = {kind: uri}
    return found


# ------------------------------------------------------------------------------------------- page
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:8px 16px;z-index:1}
h1{font-size:18px;margin:0 0 4px} h2{font-size:14px;margin:0 0 6px;color:#555}
main{padding:8px 16px} .item{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:10px;margin:10px 0;
content-visibility:auto;contain-intrinsic-size:auto 320px}
img{border:1px solid #ddd;max-width:100%}
.input{margin:4px 0 8px} .input .text{font-weight:600} .note{color:#a60}
table{border-collapse:collapse} td,th{padding:2px 8px;text-align:left;vertical-align:top}
.candidates td.num,.candidates th.num{text-align:right;font-variant-numeric:tabular-nums}
.candidates tr:nth-child(even){background:#f6f6f6} .oracle td{background:#e6f4e6!important;font-weight:600}
.refs{margin:2px 0 6px;color:#444} .refs li{margin:0} .wins{color:#555;margin:6px 0 0}
.metrics td{padding:0 10px 0 0} .hidden{display:none}
"""
FILTER_JS = """
const box=document.getElementById('filter'),items=[...document.querySelectorAll('.item')],shown=document.getElementById('shown');
box.addEventListener('input',()=>{const q=box.value.toLowerCase();let n=0;
for(const it of items){const hit=!q||it.textContent.toLowerCase().includes(q);it.classList.toggle('hidden',!hit);n+=hit}
shown.textContent=n;});
"""


def number(value: Any) -> str:
    return "" if value is None else f"{float(value):.3g}"


def input_html(found: dict) -> str:
    if "text" in found:
        return f'<div class="input"><span class="text">{html.escape(found["text"])}</span></div>'
    if "audio" in found:
        return f'<div class="input"><audio controls preload="metadata" src="{found["audio"]}"></audio></div>'
    if "image" in found:
        return f'<div class="input"><img alt="input image" loading="lazy" decoding="async" src="{found["image"]}"></div>'
    if "note" in found:
        return f'<div class="input note">{html.escape(found["note"])}</div>'
    return ""


def _winners(candidates: list[dict], higher: dict[str, bool]) -> dict[str, int]:
    """Per sentence metric, the candidate it prefers (first on ties)."""
    out = {}
    for name in candidates[0].get("metrics", {}) if candidates else []:
        values = [c.get("metrics", {}).get(name) for c in candidates]
        if any(v is None for v in values):
            continue
        out[name] = int(np.argmax(values) if higher.get(name, True) else np.argmin(values))
    return out


def item_html(n: int, record: dict, found: dict, index_label: str, primary: Optional[str],
              higher: dict[str, bool]) -> str:
    """One item's section: input, references, candidates (oracle-best marked), win statistics."""
    cands = record["candidates"]
    wins = _winners(cands, higher)
    best = wins.get(primary) if primary else None
    refs = "".join(f"<li>{html.escape(r)}</li>" for r in record.get("references", []))
    rows = []
    for j, c in enumerate(cands):
        mark = " ★" if j == best else ""
        score = number(c.get("metrics", {}).get(primary)) if primary else ""
        rows.append(f'<tr class="candidate{" oracle" if j == best else ""}" data-index="{c.get("hypothesis", j)}">'
                    f'<td class="num">{c.get("hypothesis", j)}{mark}</td><td>{html.escape(c["text"])}</td>'
                    f'<td class="num">{score}</td><td class="num">{number(c.get("score"))}</td></tr>')
    stats = ", ".join(f"{name}: {index_label} {cands[k].get('hypothesis', k)}" for name, k in wins.items())
    return (f'<section class="item" id="item-{n}" data-id="{html.escape(str(record["id"]))}" '
            f'data-k="{len(cands)}"><h2>#{n} · {html.escape(str(record["id"]))}</h2>{input_html(found)}'
            f'<details class="refs" open><summary>{len(record.get("references", []))} reference(s)</summary>'
            f'<ol>{refs}</ol></details><table class="candidates"><thead><tr><th class="num">{index_label}</th>'
            f'<th>candidate</th><th class="num">{html.escape(primary or "")}</th><th class="num">decoder score</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="wins">best candidate by {html.escape(stats) if stats else "no sentence metric"}</p></section>')


def page_html(records: list[dict], info: dict, metrics: dict[str, float], inputs: dict[str, dict],
              primary: Optional[str], higher: dict[str, bool]) -> str:
    from loramcl.evaluation.hypotheses import index_name
    from loramcl.metrics.registry import METRICS

    label = index_name(info)
    title = f"{info.get('scheme', '')} / {info.get('method', info.get('decoding', ''))}"
    shown = [(k, v) for k, v in metrics.items() if k in METRICS]
    table = "".join(f"<tr><td>{html.escape(METRICS[k].label)}</td><td>{number(v)}</td></tr>" for k, v in shown)
    wins = ", ".join(f"{label} {k.rsplit('hyp', 1)[1]}: {v:.0%}" for k, v in metrics.items()
                     if k.startswith("win_rate_hyp"))
    sections = "".join(item_html(n, r, inputs.get(str(r["id"]), {}), label, primary, higher)
                       for n, r in enumerate(records))
    meta = {k: info.get(k) for k in ("decoding", "task_type", "train_run", "num_hypotheses", "items")}
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body data-items="{len(records)}">'
            f'<header><h1>{html.escape(title)}</h1><div>{html.escape(json.dumps(meta))}</div>'
            f'<details><summary>metrics; win rates: {html.escape(wins) or "none"}</summary>'
            f'<table class="metrics">{table}</table></details>'
            f'<label>filter <input id="filter" type="search" placeholder="any text on an item"></label> '
            f'<span id="shown">{len(records)}</span> of {len(records)} items</header>'
            f'<main>{sections}</main><script>{FILTER_JS}</script></body></html>')


def directions(records: list[dict]) -> dict[str, bool]:
    """Higher-is-better of every sentence metric on the candidates (from the registry's oracle keys)."""
    from loramcl.metrics.registry import METRICS

    names = {name for r in records[:1] for c in r["candidates"] for name in c.get("metrics", {})}
    return {name: METRICS[f"oracle_{name}"].higher if f"oracle_{name}" in METRICS else True for name in names}


def write_page(out: Path, records: list[dict], info: dict, metrics: dict[str, float], inputs: dict[str, dict],
               primary: Optional[str] = None) -> Path:
    """candidates.html in `out` (written whole, then renamed into place)."""
    from loramcl.utils.atomic import write_text_atomic

    path = Path(out) / PAGE_NAME
    write_text_atomic(path, page_html(records, info, metrics, inputs, primary, directions(records)))
    return path
