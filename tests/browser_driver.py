"""Headless Chromium through Selenium for the browser tests (tests/test_browser.py, the reproduce
rehearsal's side-by-side page): Debian's chromium and chromium-driver (installed here as root when
missing, as the SLURM tests do), what a rendered candidates page shows, screenshots kept in
test-artifacts/ (git-ignored)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT

ARTIFACTS = Path(os.environ.get("LORAMCL_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def _install_chromium() -> None:
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if os.geteuid() != 0:
        pytest.fail("headless Chromium is missing: apt-get install chromium chromium-driver (as root)", pytrace=False)
    proc = subprocess.run(["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"], capture_output=True,
                          text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"apt-get install chromium chromium-driver failed: {proc.stderr[-500:]}", pytrace=False)


def chromium():
    """A headless Chromium driver (a generator: the `browser` fixture of conftest.py yields it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _install_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def rendered_items(driver) -> list[dict]:
    """What the rendered page shows per item: visible candidate rows, the oracle-marked ones, media state."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const shown = async it => {
          it.scrollIntoView();  // items off screen are neither laid out nor their images fetched (lazy)
          const im = it.querySelector('img');
          const image = im ? await im.decode().then(() => im.naturalWidth > 0, () => false) : null;
          return {id: it.dataset.id,
            candidates: [...it.querySelectorAll('tr.candidate')].filter(r => r.offsetHeight > 0).map(r => r.cells[1].innerText),
            oracle: it.querySelectorAll('tr.candidate.oracle').length,
            references: it.querySelectorAll('.refs li').length,
            text: (it.querySelector('.input .text') || {}).innerText || null,
            image: image, audio: !!it.querySelector('audio')};
        };
        (async () => { const out = []; for (const it of document.querySelectorAll('.item')) out.push(await shown(it));
                       window.scrollTo(0, 0); return out; })().then(done);""")


def audio_durations(driver) -> list[float]:
    """Each audio element's duration once its metadata loaded (NaN: it did not load)."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const audios = [...document.querySelectorAll('audio')];
        Promise.all(audios.map(a => a.readyState >= 1 ? Promise.resolve(a.duration) : new Promise(ok => {
            a.addEventListener('loadedmetadata', () => ok(a.duration)); a.addEventListener('error', () => ok(NaN));
            a.load(); }))).then(done);""")


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path




def side_by_side_rows(driver) -> list[dict]:
    """Per item of a side-by-side page: id, MCL verdict, each method's visible candidates, input text, links."""
    return driver.execute_script("""
        return [...document.querySelectorAll('tr.item')].map(r => ({id: r.dataset.id, verdict: r.dataset.mcl,
          columns: [...r.querySelectorAll('ol.cands')].map(o => [...o.querySelectorAll('li')].map(li => li.innerText)),
          text: (r.querySelector('.input .text') || {}).innerText || null,
          links: [...r.querySelectorAll('a')].map(a => a.href)}));""")
