"""Outputs that appear under their final name only when complete, and results that never get worse.

Anything built in steps (a tiny base, an HDF5 split, a peft export, a results table) is written to a
temporary sibling `<final>.partial-<host>-<pid>-<random>` in the same folder (same file system, so
the final rename is one atomic step) and renamed into place once complete. A crash therefore
leaves a `.partial-` sibling, never a half-built artifact under the final name; the next build
removes the partials of processes of this machine that no longer run (one log line each) and
ignores the others (they may belong to a live process on another node).

Placing a new artifact never replaces an existing one unless asked (`overwrite`): a folder is
renamed onto the final name, which fails when a concurrent builder put a non-empty folder there
first; a file is hard-linked to the final name, which fails when any file is there. The loser
learns it (`publish` returns False) and keeps the winner's artifact.

Results files (`guard_results` + `publish_files`): a results CSV is replaced only by one with at
least as many complete lines, unless forced; the files replaced are kept in
`<folder>/previous/<time>/` first.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
PARTIAL = ".partial-"
_PARTIAL_RE = re.compile(r"^(?P<name>.+)\.partial-(?P<host>.+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", socket.gethostname()) or "host"


def partial_path(final: PathLike) -> Path:
    """A fresh temporary sibling of `final`: `<final>.partial-<host>-<pid>-<8 hex digits>`."""
    final = Path(final)
    return final.with_name(f"{final.name}{PARTIAL}{_host()}-{os.getpid()}-{secrets.token_hex(4)}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (loramcl.callbacks and loramcl.cluster ask it too)."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def discard(path: PathLike) -> None:
    """Remove a file or folder if present (partial outputs)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_partials(final: PathLike) -> list[Path]:
    """Remove the `.partial-` siblings of `final` left by processes of this machine that no longer
    run (an interrupted build), one log line each; partials of live or remote processes are left."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    host = _host()
    for path in final.parent.glob(f"{glob_escape(final.name)}{PARTIAL}*"):
        match = _PARTIAL_RE.match(path.name)
        if match is None or match["name"] != final.name or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        discard(path)
        log.warning("removed %s, left by process %d which no longer runs (an interrupted build)", path, pid)
        removed.append(path)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def new_partial_dir(final: PathLike) -> Path:
    """Remove stale partials of `final`, then create and return an empty temporary sibling folder."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    tmp = partial_path(final)
    tmp.mkdir()
    return tmp


def _is_taken(final: Path) -> bool:
    """Whether something that must not be replaced silently sits at `final` (an empty folder does not count)."""
    if final.is_symlink() or final.is_file():
        return True
    return final.is_dir() and any(final.iterdir())


def publish(tmp: PathLike, final: PathLike, overwrite: bool = False) -> bool:
    """Move the complete `tmp` (file or folder) to `final` in one step; True when it is in place.

    Without `overwrite`, nothing at `final` is replaced (an empty folder excepted): when another
    process placed its artifact there first, `tmp` is removed and False returned. With `overwrite`,
    the old artifact is moved aside, `tmp` renamed, then the old one removed.
    """
    tmp, final = Path(tmp), Path(final)
    if not overwrite:
        try:
            if tmp.is_dir():
                os.rename(tmp, final)  # onto a non-empty folder or a file: refused by the kernel
            else:
                os.link(tmp, final)  # refused when any file is there
                tmp.unlink()
            return True
        except FileExistsError:
            pass
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                pass
            elif err.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK) and not tmp.is_dir():
                if not _is_taken(final):  # a file system without hard links: check, then rename
                    os.replace(tmp, final)
                    return True
            else:
                raise
        discard(tmp)
        return False
    if not tmp.is_dir() and not (final.is_dir() and not final.is_symlink()):
        os.replace(tmp, final)  # a file over a file: one step
        return True
    old: Optional[Path] = None
    if final.is_symlink() or final.exists():
        if final.is_dir() and not final.is_symlink() and not any(final.iterdir()) and tmp.is_dir():
            final.rmdir()
        else:
            old = final.with_name(f"{final.name}.replaced-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        discard(old)
    return True


class staged:
    """`with staged(final) as stage:` build into the empty folder `stage.path`; on success it is
    published at `final` (`stage.placed`: False when another process published first). On an
    exception the partial folder is removed and nothing at `final` changes."""

    def __init__(self, final: PathLike, overwrite: bool = False):
        self.final = Path(final)
        self.overwrite = overwrite
        self.placed = False
        self.path = Path()

    def __enter__(self) -> "staged":
        self.path = new_partial_dir(self.final)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            discard(self.path)
            return
        self.placed = publish(self.path, self.final, self.overwrite)


def write_text_atomic(path: PathLike, text: str, overwrite: bool = True, encoding: str = "utf-8") -> bool:
    """Write `text` to a temporary sibling, then move it to `path` (replacing it only with
    `overwrite`); True when it is in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = partial_path(path)
    try:
        with open(tmp, "w", encoding=encoding) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        discard(tmp)
        raise
    if overwrite:
        os.replace(tmp, path)
        return True
    return publish(tmp, path, overwrite=False)


# ------------------------------------------------------------------------------------------ results
class FewerResults(Exception):
    """A results file would be replaced by one with fewer complete lines (the message is one line)."""


def count_csv(path: PathLike, complete: Callable[[dict], bool]) -> int:
    """How many rows of the CSV `path` are `complete` (0 for an unreadable file)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return sum(1 for row in csv.DictReader(handle) if complete(row))
    except (OSError, UnicodeDecodeError, csv.Error):
        return 0


def guard_results(csv_path: PathLike, new_complete: int, new_total: int, complete: Callable[[dict], bool],
                  force: bool, hint: str = "") -> Optional[int]:
    """Refuse (FewerResults, one line) to replace `csv_path` by results with fewer complete lines,
    unless `force`. Returns the old count (None when there is no old file)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return None
    old = count_csv(csv_path, complete)
    if new_complete < old and not force:
        raise FewerResults(
            f"{csv_path} holds {old} complete line(s), the new results only {new_complete} (of {new_total}): "
            f"not replaced, nothing written{hint}; pass --force to replace it anyway (the current files are "
            f"then kept in {csv_path.parent / 'previous'}/<time>/)")
    return old


def _previous_dir(folder: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = folder / "previous" / stamp, 1
    while target.exists():
        target, n = folder / "previous" / f"{stamp}-{n}", n + 1
    return target


def publish_files(folder: PathLike, write: Callable[[Path], Iterable[Path]], csv_name: str,
                  keep: Iterable[str] = ()) -> tuple[list[Path], Optional[Path]]:
    """Write a set of results files atomically into `folder`, keeping the files they replace.

    `write(stage)` writes the new files into a temporary folder and returns their paths; the files
    of `folder` they replace (and those named in `keep` that exist) are first linked into
    `folder/previous/<time>/` (skipped when the CSV `csv_name` is unchanged), then each new file
    is renamed into place, the CSV last. Returns (final paths, the previous folder or None).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = new_partial_dir(folder / ".results")
    try:
        written = [Path(p) for p in write(stage)]
        names = list(dict.fromkeys(p.name for p in written))
        replaced = [folder / n for n in dict.fromkeys([*names, *keep]) if (folder / n).is_file()]
        old_csv, new_csv = folder / csv_name, stage / csv_name
        unchanged = old_csv.is_file() and new_csv.is_file() and old_csv.read_bytes() == new_csv.read_bytes()
        previous = None
        if replaced and not unchanged:
            previous = _previous_dir(folder)
            previous.mkdir(parents=True)
            for path in replaced:
                try:
                    os.link(path, previous / path.name)
                except OSError:
                    shutil.copy2(path, previous / path.name)
        names.sort(key=lambda n: n == csv_name)  # the CSV last: the others are in place when it is
        for name in names:
            os.replace(stage / name, folder / name)
    finally:
        discard(stage)
    return [folder / n for n in names], previous
