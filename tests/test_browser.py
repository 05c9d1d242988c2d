"""The candidates browser (candidates.html) opened in a real headless Chromium through Selenium:
what the rendered page shows, checked from the page (not from its HTML source), with a screenshot
kept in test-artifacts/. Chromium and its driver are Debian's packages (installed here as root when
missing, as the SLURM tests do)."""

from __future__ import annotations

from pathlib import Path

import pytest

from browser_driver import audio_durations, rendered_items, screenshot, side_by_side_rows
from helpers import eval_predictions, run_eval


def _page(tmp_path: Path) -> Path:
    (page,) = list((tmp_path).glob("eval/**/candidates.html"))
    return page


def test_translation_demo_page_shows_every_items_candidates(browser, translation_runs, tmp_path):
    ev = run_eval(f"ckpt_path={translation_runs['mcl']}", "decoding=mcl_beam1", "max_items=6", "metrics.semantic=false",
                  "metrics.oracle_nll=false", log_dir=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    (records,) = eval_predictions(tmp_path)
    browser.get(_page(tmp_path).as_uri())
    shown = rendered_items(browser)
    assert [s["id"] for s in shown] == [r["id"] for r in records]
    for s, r in zip(shown, records):
        assert s["candidates"] == [c["text"] for c in r["candidates"]] and len(s["candidates"]) == 3
        assert s["oracle"] == 1 and s["references"] == len(r["references"]) and s["text"]
    screenshot(browser, "candidates_translation")
    box = browser.find_element("id", "filter")  # the filter narrows the items to those holding the text
    box.send_keys(shown[1]["text"])  # item 1's source sentence
    visible = browser.execute_script("return [...document.querySelectorAll('.item')].filter(i => i.offsetHeight > 0)"
                                     ".map(i => i.dataset.id)")
    assert records[1]["id"] in visible and len(visible) < len(records)


@pytest.mark.slow  # 22 s; the default suite keeps the translation and image pages
def test_audio_demo_page_plays_its_clips(browser, audio_mcl_run, tmp_path):
    ev = run_eval(f"ckpt_path={audio_mcl_run}", "decoding=mcl_beam1", "max_items=3", "metrics.semantic=false",
                  "metrics.oracle_nll=false", log_dir=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    browser.get(_page(tmp_path).as_uri())
    shown = rendered_items(browser)
    assert len(shown) == 3 and all(s["audio"] and len(s["candidates"]) == 3 for s in shown)
    durations = audio_durations(browser)
    assert len(durations) == 3 and all(d > 0.5 for d in durations), durations  # the synthetic clips are 2-4 s
    screenshot(browser, "candidates_audio")


def test_images_load_and_the_media_budget_holds(browser, tmp_path):
    """A page of real images (the synthetic shapes, prepared as the image demo's are): every image
    decodes in the browser; past the media budget an item says its image was not embedded."""
    from loramcl.data import synthetic
    from loramcl.data.hdf5 import ImageCaptionH5
    from loramcl.evaluation.browser import item_inputs, write_page

    synthetic.make_shapes(tmp_path / "shapes", name="shapes", sizes=(1, 1, 4), only=["test"])
    test = ImageCaptionH5.from_split(tmp_path / "shapes", "shapes", "test")
    records = [{"id": test[i]["id"], "references": test[i]["captions"],
                "candidates": [{"text": f"caption {k}", "hypothesis": k, "score": -0.1 * k, "metrics": {"cider_d": k}}
                               for k in range(2)]} for i in range(4)]
    inputs = item_inputs(test, [r["id"] for r in records])
    two = sum(len(inputs[r["id"]]["image"]) for r in records[:2])
    squeezed = item_inputs(test, [r["id"] for r in records], budget=two)  # room for two images
    info = {"scheme": "LoRA-MCL", "method": "test", "decoding": "mcl_beam1"}
    for name, found in (("full", inputs), ("budget", squeezed)):
        write_page(tmp_path / name, records, info, {}, found, "cider_d")
        browser.get((tmp_path / name / "candidates.html").as_uri())
        shown = rendered_items(browser)
        loaded = [s["image"] for s in shown]
        assert loaded == ([True] * 4 if name == "full" else [True, True, None, None]), loaded
        assert all(s["oracle"] == 1 and s["candidates"] == ["caption 0", "caption 1"] for s in shown)
    notes = browser.execute_script("return [...document.querySelectorAll('.input.note')].map(n => n.innerText)")
    assert len(notes) == 2 and all("not embedded" in n for n in notes)
    browser.get((tmp_path / "full" / "candidates.html").as_uri())
    screenshot(browser, "candidates_images")


@pytest.mark.slow  # about 1 min (two evaluations); the default suite keeps the per-evaluation pages
def test_side_by_side_page_of_two_methods(browser, translation_runs, tmp_path):
    """scripts/browse.py over a MCL and a MLE evaluation of the same items: every item shows both
    methods' K candidates, each link opens that item on the evaluation's own page, and the MCL
    wins / loses filters keep the items where its oracle sentence BLEU is above / below the MLE's."""
    from helpers import run_script

    for run, decoding in ((translation_runs["mcl"], "mcl_beam1"), (translation_runs["mle"], "mle_beam")):
        ev = run_eval(f"ckpt_path={run}", f"decoding={decoding}", "max_items=8", "metrics.semantic=false",
                      "metrics.oracle_nll=false", log_dir=tmp_path)
        assert ev.returncode == 0, ev.stderr[-3000:]
    out = tmp_path / "side.html"
    proc = run_script(["scripts/browse.py", tmp_path / "eval", "--out", out], seconds=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mcl, mle = eval_predictions(tmp_path)  # path order: the MCL evaluation ran first
    browser.get(out.as_uri())
    rows = side_by_side_rows(browser)
    assert [r["id"] for r in rows] == [x["id"] for x in mcl]
    assert all(len(r["columns"]) == 2 and all(len(c) == 3 for c in r["columns"]) and r["text"] for r in rows)
    oracle = {name: {x["id"]: max(c["metrics"]["bleu"] for c in x["candidates"]) for x in recs}
              for name, recs in (("mcl", mcl), ("mle", mle))}
    expected = {i: "wins" if oracle["mcl"][i] > oracle["mle"][i] else "loses" if oracle["mcl"][i] < oracle["mle"][i]
                else "ties" for i in oracle["mcl"]}
    assert {r["id"]: r["verdict"] for r in rows} == expected
    screenshot(browser, "side_by_side_translation")
    for verdict in ("wins", "loses"):
        browser.execute_script(f"const v = document.getElementById('view'); v.value = '{verdict}';"
                               f"v.dispatchEvent(new Event('change'));")
        visible = browser.execute_script("return [...document.querySelectorAll('tr.item')].filter(r => r.offsetHeight > 0)"
                                         ".map(r => r.dataset.id)")
        assert sorted(visible) == sorted(i for i, v in expected.items() if v == verdict)
    link = rows[3]["links"][1]  # item 3 on the MLE evaluation's own page
    browser.get(link)
    assert browser.execute_script(f"return document.getElementById('{link.rsplit('#', 1)[1]}').dataset.id") == rows[3]["id"]
