"""How long a candidates page (src/loramcl/evaluation/browser.py) takes to open in headless Chromium, and its size.

    python bench/browser_page.py [--items 1000] [--candidates 5] [--images 0] [--repeats 3]

Builds a page of `--items` items of `--candidates` candidates each (text inputs of ~12 words, 3
references, sentence scores; `--images N`: the first N items carry a 256 px JPEG, as an image
evaluation's page would), opens it `--repeats` times in Debian's chromium through Selenium and
prints the page size and, per open, the time to the load event measured by the browser
(navigation timing: its start to loadEventEnd) and the wall time of the open as the
driver saw it. Needs chromium and chromium-driver (apt-get).
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path


def build(folder: Path, items: int, k: int, images: int, seed: int = 0) -> Path:
    from PIL import Image

    from loramcl.evaluation.browser import image_uri, write_page

    rng = random.Random(seed)
    words = "the a small red blue dog cat runs sits on under near big green house tree car street park".split()

    def sentence(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    records, inputs = [], {}
    for i in range(items):
        key = f"item-{i:05d}"
        records.append({"id": key, "references": [sentence(10) for _ in range(3)],
                        "candidates": [{"text": sentence(12), "hypothesis": j, "score": -rng.random(),
                                        "metrics": {"bleu": 100 * rng.random(), "chrf": 100 * rng.random()}}
                                       for j in range(k)]})
        if i < images:
            pixels = bytes(rng.randrange(256) for _ in range(64 * 48 * 3))
            inputs[key] = {"image": image_uri(Image.frombytes("RGB", (64, 48), pixels).resize((320, 240)))}
        else:
            inputs[key] = {"text": sentence(12)}
    info = {"scheme": "LoRA-MCL (bench)", "method": f"{k} candidates", "decoding": "mcl_beam1"}
    return write_page(folder, records, info, {"oracle_bleu": 50.0}, inputs, "bleu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--images", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder = Path(tempfile.mkdtemp())
    page = build(folder, args.items, args.candidates, args.images)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        print(f"page: {args.items} items x {args.candidates} candidates, {args.images} images: "
              f"{page.stat().st_size / 1e6:.2f} MB")
        for n in range(args.repeats):
            driver.get("about:blank")
            start = time.perf_counter()
            driver.get(f"{page.as_uri()}?open={n}")  # returns after the load event; a new URL: no cache
            wall = time.perf_counter() - start
            load = driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd;")
            shown = driver.execute_script("return document.querySelectorAll('tr.candidate').length")
            print(f"open {n + 1}: load event after {load / 1000:.2f} s (browser), {wall:.2f} s wall; "
                  f"{shown} candidate rows rendered")
    finally:
        driver.quit()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
