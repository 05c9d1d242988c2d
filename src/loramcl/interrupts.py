"""Ctrl+C (SIGINT) and SIGTERM end every entry point the same way: one line, exit status 128 + signal.

    with stop_on_signals(outcome="nothing was written"):   # eval.py, every script under scripts/
        sys.exit(main())

- `stop_on_signals` turns SIGTERM into the same exception as Ctrl+C (`Interrupted`, a
  KeyboardInterrupt), so the `finally` / `except BaseException` clean-ups run for both (temporary
  files removed, an open MLflow run closed as KILLED). What escapes it ends the process with one
  line on stderr, `error: interrupted (SIGINT) while <activity>: <detail>; <outcome>`, and exit
  status 130 (SIGINT) / 143 (SIGTERM), without a traceback (with HYDRA_FULL_ERROR=1: the traceback,
  then the line). A training's own stop (`StopRequested` of `loramcl.callbacks.GracefulStop`, which
  saved a checkpoint) and Lightning's exit after a KeyboardInterrupt are reported the same way.
- `doing(text)`: what the process is doing now, named by that line ("while decoding ...");
  `note(text)`: something a clean-up did, added to it ("MLflow run <id> closed as KILLED").
- `run_child(command)`: a child process (train.py / eval.py started by the reproduce runner) run to
  its end in a session of its own. A signal that reaches this process is passed on to the child,
  once per signal (a Ctrl+C in the terminal reaches the child only this way, so train.py sees one
  Ctrl+C and saves a checkpoint; a second one stops it at once; a third kills its process group);
  this process waits for the child to end, then raises `Interrupted` naming its exit status.

Only entry points install the handlers: importing this module changes nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Union

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# what run_child passes on: a hang-up (the terminal closed) asks the child to stop like SIGTERM does
FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}

Text = Union[str, Callable[[], str], None]

_received: Optional[int] = None  # the first stop signal this process received
_depth = 0  # nesting of stop_on_signals
_reported = False  # the one line was printed (a SystemExit on its way out)
_activity: Text = None
_notes: list[str] = []


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (raised where the process was); `detail` says what was stopped and how."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(detail)
        self.signum = int(signum)
        self.detail = detail

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def doing(activity: Text) -> None:
    """What the process is doing from now on (a text, or a callable giving it when the line is
    printed, e.g. with a progress count); None: nothing worth naming."""
    global _activity
    _activity = activity


def note(text: str) -> None:
    """Add `text` (what a clean-up did on the way out) to the line."""
    _notes.append(text)


def _text(value: Text) -> str:
    try:
        return (value() if callable(value) else value) or ""
    except Exception:  # the line must come out whatever the callable does
        return ""


def _is_rank_zero() -> bool:
    """Only the first process of a multi-process run prints the line (every rank gets a Ctrl+C)."""
    return all(os.environ.get(key, "0") in ("", "0") for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def line(signum: int, detail: str = "", outcome: Text = None) -> str:
    """`error: interrupted (SIGINT) while <activity>: <detail>; <outcome>; <notes>`."""
    text = f"error: interrupted ({signal_name(signum)})"
    activity = _text(_activity)
    if activity:
        text += f" while {activity}"
    if detail:
        text += f": {detail}"
    for part in [_text(outcome), *_notes]:
        if part:
            text += f"; {part}"
    return " ".join(text.split())  # one line, whatever the parts hold


def _progress_bars() -> list:
    """The progress bars on the screen (tqdm's, if it was imported)."""
    tqdm_std = sys.modules.get("tqdm.std")
    return list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", ()))


def _clear_progress_bars(close: bool = True) -> None:
    """Bars are erased, not left, when they close (a bar closes itself when the exception passes
    through its loop); `close`: close them now. The line is then the only thing an interruption
    leaves on stderr."""
    for bar in _progress_bars():
        try:
            bar.leave = False
            if close:
                bar.close()
        except Exception:
            pass


def _report(signum: int, detail: str = "", outcome: Text = None) -> None:
    global _reported
    _reported = True
    if not _is_rank_zero():
        return
    _clear_progress_bars()
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        print(line(signum, detail, outcome), file=sys.stderr, flush=True)
    except Exception:  # stderr gone (the terminal closed): the exit status still says it
        pass


def _handle(signum: int, frame: Any) -> None:
    global _received
    if _received is None:
        _received = signum
    if _depth > 0:
        _clear_progress_bars(close=False)
        raise Interrupted(signum)
    # outside any guarded stretch (installed, e.g. between two jobs of an eval.py multirun): stop here
    _report(signum)
    raise SystemExit(128 + signum)


def _unraisable(unraisable: Any) -> None:
    """`sys.unraisablehook`: an `Interrupted` raised while Python ran a finalizer or a weakref
    callback (a signal that arrived during garbage collection) is dropped by Python with an
    "Exception ignored" traceback, and the process would go on; the signal is delivered again
    instead, to be raised in the code that was running."""
    if isinstance(unraisable.exc_value, Interrupted):
        import _thread
        import threading

        # from another thread, a moment later: the handler then runs in the code that was running, not in this hook
        timer = threading.Timer(0.05, _thread.interrupt_main, args=(unraisable.exc_value.signum,))
        timer.daemon = True
        timer.start()
        return
    _previous_unraisable(unraisable)


_previous_unraisable = sys.unraisablehook


def install() -> dict[int, Any]:
    """Handle SIGINT and SIGTERM with `_handle` (a SIGINT ignored by the parent, e.g. in a shell's
    background job, stays ignored); returns the previous handlers."""
    global _previous_unraisable
    if sys.unraisablehook is not _unraisable:
        _previous_unraisable, sys.unraisablehook = sys.unraisablehook, _unraisable
    previous = {}
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN and signum == signal.SIGINT:
            continue
        previous[signum] = current
        signal.signal(signum, _handle)
    return previous


def full_errors_wanted() -> bool:
    """The user set HYDRA_FULL_ERROR=1 (not `loramcl.cli.run_hydra`, which sets it for Hydra to
    raise, marked by LORAMCL_HYDRA_FULL_ERROR_SET)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get("LORAMCL_HYDRA_FULL_ERROR_SET") != "1"


def signal_of(err: BaseException) -> Optional[int]:
    """The stop signal behind `err`, or None when it is an ordinary error."""
    from loramcl.errors import StopRequested

    if isinstance(err, Interrupted):
        return err.signum
    if isinstance(err, StopRequested):  # a fit stopped by GracefulStop, its checkpoint saved
        return err.exit_code - 128
    if isinstance(err, KeyboardInterrupt):  # Python's own handler, or GracefulStop's second Ctrl+C
        return _received or signal.SIGINT
    # after a signal, anything else on the way out is its consequence (Lightning's sys.exit(1)
    # after a KeyboardInterrupt, a library that wrapped it)
    return _received


def _detail(err: BaseException) -> str:
    from loramcl.errors import StopRequested

    if isinstance(err, Interrupted):
        return err.detail
    if isinstance(err, StopRequested):  # (its resume command is train.py's, not this program's)
        return str(err).split("; resume with:", 1)[0]
    return ""


@contextmanager
def stop_on_signals(outcome: Text = None, restore: bool = True) -> Iterator[None]:
    """Run the body with SIGTERM raised like Ctrl+C; an interruption that escapes it prints the one
    line (`outcome`: what was left behind, a text or a callable) and exits with 128 + the signal.
    `restore=False` keeps the handlers installed afterwards (eval.py: the next job of a multirun
    runs in this process, and a signal between two jobs still ends it with one line)."""
    global _depth
    previous = install()
    _depth += 1
    try:
        yield
    except BaseException as err:
        if isinstance(err, SystemExit) and (_reported or _received is None):
            raise  # an ordinary exit, or the line was already printed (a nested guard)
        signum = signal_of(err)
        if signum is None:
            raise
        if full_errors_wanted():
            traceback.print_exc()
        _report(signum, _detail(err), outcome)
        raise SystemExit(128 + signum) from None
    finally:
        _depth -= 1
        if restore:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if _depth == 0:
            doing(None)


# ------------------------------------------------------------------------------------------ children
def run_child(command: Sequence[str], echo: Optional[Callable[[str], None]] = None,
              also: Optional[dict[int, int]] = None, **popen: Any) -> int:
    """Run `command` (`subprocess.Popen` keywords in `popen`) to its end; returns its exit status.

    The child runs in a session (and process group) of its own, so a Ctrl+C in the terminal
    reaches it only through this process: each SIGINT / SIGTERM (SIGHUP: as SIGTERM) received
    meanwhile is passed on to it, the third one kills its process group (SIGKILL); `echo` (if
    given) says so. `also`: more {signal received: signal passed on} (a job's USR1: SIGTERM). Once the child has ended, a received signal raises `Interrupted(signum)` (its
    `child_code`: the child's exit status). Nothing is left running when this returns or raises."""
    received: list[int] = []
    child: list[subprocess.Popen] = []
    forwarded = {**FORWARDED, **(also or {})}

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        if not child:
            return  # not started yet: it will not be
        proc = child[0]
        if proc.poll() is not None:
            return
        if len(received) >= 3:
            _kill_group(proc)
            if echo:
                echo(f"  {signal_name(signum)} again: killed {_program(command)} (pid {proc.pid})")
            return
        os.kill(proc.pid, forwarded[signum])
        if echo:
            what = "stops at once" if len(received) == 2 else "saves a checkpoint and stops" \
                if _program(command) == "train.py" else "stops"
            echo(f"  {signal_name(signum)} passed on to {_program(command)} (pid {proc.pid}): it {what}; "
                 f"waiting for it to end" + (" (Ctrl+C again stops it at once)" if len(received) == 1 else ""))

    previous = {}
    for signum in forwarded:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:  # e.g. SIGINT in a background job, SIGHUP under nohup
            continue
        previous[signum] = current
        signal.signal(signum, forward)
    try:
        if received:
            raise Interrupted(received[0], f"{_program(command)} was not started")
        popen.setdefault("stdin", subprocess.DEVNULL)  # a background process group must not read the terminal
        child.append(subprocess.Popen(list(command), start_new_session=True, **popen))
        proc = child[0]
        if received:  # arrived while it was being started
            os.kill(proc.pid, forwarded[received[0]])
        try:
            code = proc.wait()
        except BaseException:  # not one of ours (they do not raise): leave nothing behind
            _kill_group(proc)
            proc.wait()
            raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if received:
        stop = Interrupted(received[0], f"{_program(command)} (pid {proc.pid}) was passed "
                                        f"{signal_name(forwarded[received[0]])} and exited with status {code}")
        stop.child_code = code
        raise stop
    return code


def _program(command: Sequence[str]) -> str:
    """`train.py` for `python /path/train.py ...`: the first argument that names a file."""
    for part in list(command)[1:]:
        if not str(part).startswith("-"):
            return os.path.basename(str(part))
    return os.path.basename(str(command[0]))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
