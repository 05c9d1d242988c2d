"""The Java side of the captioning metrics: jars staged offline for aac-metrics, and the Java check.

aac-metrics 0.5.4 looks for its jars under `<cache>/aac-metrics/...` (the layout its
`aac-metrics-download` command creates) and would download them from the internet. The same jars
ship inside the pycocoevalcap 1.2 wheel, so `stage_jars` links them (a copy where links are not
possible) into that layout at first use, atomically, never replacing a file that is already there:

    <cache>/aac-metrics/stanford_nlp/stanford-corenlp-3.4.1.jar   PTB tokenizer
    <cache>/aac-metrics/meteor/meteor-1.5.jar                      METEOR 1.5
    <cache>/aac-metrics/meteor/data/paraphrase-en.gz               METEOR's English paraphrase table
    <cache>/aac-metrics/spice/spice-1.0.jar, spice/lib/*.jar       SPICE 1.0, without Stanford CoreNLP 3.6.0
    <cache>/aac-metrics/spice/cache/                               (an empty folder aac-metrics requires)

The default cache is aac-metrics' own (`$AAC_METRICS_CACHE_PATH`, else `~/.cache`), so jars that
`aac-metrics-download` fetched there (SPICE's CoreNLP 3.6.0) are found. SPICE is the only one that
cannot be completed offline: its two CoreNLP 3.6.0 jars are in no wheel.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Optional, Union

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

AAC_DIR = "aac-metrics"  # aac-metrics' sub-folder of the cache directory
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
# (file in the pycocoevalcap package, destination under <cache>/aac-metrics)
_STAGED = (
    ("tokenizer/stanford-corenlp-3.4.1.jar", "stanford_nlp/stanford-corenlp-3.4.1.jar"),
    ("meteor/meteor-1.5.jar", "meteor/meteor-1.5.jar"),
    ("meteor/data/paraphrase-en.gz", "meteor/data/paraphrase-en.gz"),
    ("spice/spice-1.0.jar", "spice/spice-1.0.jar"),
)


class JavaError(RuntimeError):
    """No usable Java runtime (one line, user-facing)."""


def default_cache_dir() -> Path:
    """aac-metrics' default cache directory: `$AAC_METRICS_CACHE_PATH`, else `~/.cache`."""
    return Path(os.path.expanduser(os.environ.get("AAC_METRICS_CACHE_PATH") or "~/.cache"))


def stage_jars(cache_dir: Optional[PathLike] = None) -> Path:
    """Put pycocoevalcap's jars where aac-metrics looks for them; returns the cache directory."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    source = _pycocoevalcap_dir()
    pairs = [(source / src, cache / AAC_DIR / dst) for src, dst in _STAGED]
    spice_lib = sorted((source / "spice" / "lib").glob("*.jar"))  # SPICE's dependencies, CoreNLP 3.6.0 excepted
    pairs += [(jar, cache / AAC_DIR / "spice" / "lib" / jar.name) for jar in spice_lib]
    for src, dst in pairs:
        _link_or_copy(src, dst)
    (cache / AAC_DIR / "spice" / "cache").mkdir(parents=True, exist_ok=True)
    return cache


def missing_spice_jars(cache_dir: PathLike) -> list[str]:
    """Names of SPICE's CoreNLP 3.6.0 jars missing from `<cache>/aac-metrics/spice/lib` (after staging)."""
    lib = Path(cache_dir) / AAC_DIR / "spice" / "lib"
    return [name for name in SPICE_CORENLP_JARS if not (lib / name).is_file()]


def java_major_version(java: str = "java") -> int:
    """Major version of `java` (8 for "1.8.0_392", 17 for "17.0.15"); `JavaError` if it does not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        raise JavaError(
            f"Java not found or not runnable ({java!r}: {type(err).__name__}): METEOR, SPICE and the PTB tokenizer "
            "need a Java runtime >= 8; install one (apt-get install openjdk-17-jre-headless) or pass java=/path/to/java"
        ) from err
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise JavaError(f"cannot read the Java version from `{java} -version`: {out.stderr.strip()[:200]!r}")
    major, minor = int(match.group(1)), int(match.group(2) or 0)
    return minor if major == 1 else major  # Java <= 8 reports "1.<major>"


@contextlib.contextmanager
def accept_java(java: str = "java") -> Iterator[int]:
    """Let aac-metrics 0.5.4 run the Java tools on this machine's Java, whatever its major version.

    The one workaround of this package. aac-metrics 0.5.4 refuses Java > 13 (`check_java_path` compares
    with the module constant `aac_metrics.utils.checks.MAX_JAVA_MAJOR_VERSION = 13`) before METEOR, SPICE
    and the PTB tokenizer. The check sits inside `if __debug__:` blocks, so only `python -O` turns it off:
    there is no argument, setting or environment variable for it. METEOR 1.5 and the PTB tokenizer run
    fine on Java 17 (tests/test_metrics.py compares them with pycocoevalcap running the same jars with no
    version check), so this raises that public constant to the installed major version for the duration
    of the block and restores it afterwards. Nothing else of aac-metrics is touched.
    """
    major = java_major_version(java)  # before importing aac-metrics: a missing Java fails at once
    from aac_metrics.utils import checks

    previous = checks.MAX_JAVA_MAJOR_VERSION
    checks.MAX_JAVA_MAJOR_VERSION = max(previous, major)
    try:
        yield major
    finally:
        checks.MAX_JAVA_MAJOR_VERSION = previous


def _pycocoevalcap_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pycocoevalcap is not installed: pip install pycocoevalcap==1.2 (it ships the jars)")
    return Path(list(spec.submodule_search_locations)[0])


def _link_or_copy(src: Path, dst: Path) -> None:
    """Create `dst` as a link to `src` (a copy if links fail), atomically; keep an existing `dst` file."""
    if dst.is_file():  # follows links: a dangling link from a removed environment is replaced
        return
    if not src.is_file():
        raise FileNotFoundError(f"{src} is missing from the pycocoevalcap package (reinstall pycocoevalcap==1.2)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            tmp.symlink_to(src.resolve())
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)  # atomic: parallel evaluations never see a half-written jar
    finally:
        tmp.unlink(missing_ok=True)
    log.debug("staged %s -> %s", src, dst)
