"""Open a table's side-by-side candidate pages and check its plots, after a demo sweep.

    bash scripts/demo_sweep.sh translation && python bench/demo_pages.py mt_ende
    python bench/demo_pages.py mt_ende audio_quality_diversity textcaps_bilingual --out docs/img

For each table (scale=demo unless `--scale`), every `<table>[_<group>]_candidates.html` that
`scripts/reproduce.py` wrote into its results folder is opened in Debian's headless Chromium
(Selenium): per page it prints the items, the methods side by side, the candidates per method, and
the media that loaded as rendered (audio clips with a duration, images decoded, source texts),
the page's size and the time to its load event, and saves a screenshot (`<out>/<page>.png`). The
table's quality-versus-diversity figures are rebuilt from the same runs and every pair of text
boxes matplotlib reports is checked for overlap. Needs chromium and chromium-driver (apt-get).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PAGE_STATE = """
const done = arguments[arguments.length - 1];
(async () => {
  if (document.readyState !== 'complete') await new Promise(ok => window.addEventListener('load', ok));
  const out = [];
  for (const r of document.querySelectorAll('tr.item')) {
    r.scrollIntoView();
    const im = r.querySelector('img');
    const image = im ? await im.decode().then(() => im.naturalWidth > 0, () => false) : null;
    const a = r.querySelector('audio');
    const audio = a ? await (a.readyState >= 1 ? Promise.resolve(a.duration) : new Promise(ok => {
        a.addEventListener('loadedmetadata', () => ok(a.duration)); a.addEventListener('error', () => ok(NaN));
        a.load(); })) : null;
    out.push({id: r.dataset.id, image: image, audio: audio,
              text: !!((r.querySelector('.input .text') || {}).innerText),
              columns: [...r.querySelectorAll('ol.cands')].map(o => o.querySelectorAll('li').length),
              oracle: r.querySelectorAll('ol.cands li.oracle').length});
  }
  window.scrollTo(0, 0);
  const nav = performance.getEntriesByType('navigation')[0];
  return {items: out, load_ms: nav ? nav.loadEventEnd - nav.startTime : null,
          methods: [...document.querySelectorAll('table.side thead th')].slice(1).map(th => th.innerText)};
})().then(done);
"""


def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    chrome.set_script_timeout(120)
    return chrome


def check_pages(chrome, folder: Path, out: Path) -> list[dict]:
    rows = []
    for page in sorted(folder.glob("*_candidates.html")):
        start = time.perf_counter()
        chrome.get(page.as_uri())
        state = chrome.execute_async_script(PAGE_STATE)
        items = state["items"]
        shot = out / f"{page.stem}.png"
        chrome.save_screenshot(str(shot))
        audio = [i["audio"] for i in items if i["audio"] is not None]
        images = [i["image"] for i in items if i["image"] is not None]
        rows.append({"page": page.name, "size_mb": page.stat().st_size / 2**20, "items": len(items),
                     "methods": len(state["methods"]), "columns_per_item": sorted({len(i["columns"]) for i in items}),
                     "candidates": sorted({c for i in items for c in i["columns"]}),
                     "oracle_marks": sum(i["oracle"] for i in items),
                     "audio": f"{sum(d == d and d > 0 for d in audio)}/{len(audio)}",
                     "images": f"{sum(images)}/{len(images)}", "texts": sum(i["text"] for i in items),
                     "load_s": (state["load_ms"] or 0) / 1000, "open_s": time.perf_counter() - start,
                     "screenshot": str(shot)})
    return rows


def check_plots(name: str, overrides: list[str]) -> list[tuple[str, int, list]]:
    """(figure, labels, overlapping pairs) of the table's quality-diversity figures from its runs."""
    from loramcl.evaluation.labels import overlaps
    from loramcl.reproduce.main import compose_all
    from loramcl.reproduce.results import gather, quality_diversity_figures
    from loramcl.reproduce.state import RunIndex, finished_evaluations

    cfg, table = compose_all(ROOT, [f"table={name}", *overrides])
    index = RunIndex(Path(cfg.paths.log_dir))
    lines = gather(table, {t.key: index.state(t) for t in table.trainings()},
                   finished_evaluations(str(cfg.mlflow_uri), table.experiment))
    return [(stem, sum(len(ax.texts) for ax in fig.axes), overlaps(fig))
            for stem, fig in quality_diversity_figures(table, lines)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", help="table names (configs/table/), e.g. mt_ende")
    parser.add_argument("--scale", default="demo")
    parser.add_argument("--log-dir", type=Path, help="paths.log_dir of the runs (default: the project's logs/)")
    parser.add_argument("--results-dir", type=Path, help="results_dir of reproduce.py (default: the project's results/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more reproduce.py overrides the sweep ran with (e.g. scale.steps=4), repeatable")
    parser.add_argument("--out", type=Path, default=ROOT / "test-artifacts" / "demo_pages", help="screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    chrome = driver()
    try:
        for name in args.tables:
            overrides = [f"scale={args.scale}", *args.set]
            overrides += [f"paths.log_dir={args.log_dir}"] if args.log_dir else []
            overrides += [f"results_dir={args.results_dir}"] if args.results_dir else []
            folder = (args.results_dir or ROOT / "results") / (f"rehearsal_{name}" if args.scale != "paper" else name)
            print(f"== {name} ({folder})")
            for row in check_pages(chrome, folder, args.out):
                print("  " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            for stem, labels, pairs in check_plots(name, overrides):
                print(f"  plot {stem}: {labels} labels, {len(pairs)} overlapping pairs {pairs or ''}")
    finally:
        chrome.quit()


if __name__ == "__main__":
    main()
