"""Every way an entry point can fail ends in one `error:` line (train.py, eval.py, scripts/*.py).

    if __name__ == "__main__":
        run_hydra(main)                     # a @hydra.main function (train.py, eval.py)

    parser = ArgumentParser(description=...)                         # a script's arguments
    parser.add_argument("--gpu-gb", type=arg(Float(0, low_open=True)), default=80.0)

- `run_hydra` ends a Ctrl+C / SIGTERM at any moment with one line (`loramcl.interrupts`) and lets
  Hydra raise instead of printing its own report (HYDRA_FULL_ERROR, set for this
  process only when the user did not set it), then writes one line per kind: our `ConfigError` /
  `MissingResource` as they are; Hydra's and OmegaConf's composition errors (an unknown group
  option, an override of a key that does not exist, a bad override syntax) folded into one line;
  anything else, which is a bug, as one line naming the exception, with the whole traceback saved
  to a file that the line names. Exit status 1. With HYDRA_FULL_ERROR=1 set by the user, tracebacks
  are shown as Hydra shows them.
- `ArgumentParser`: argparse whose errors are one line, `error: --gpu-gb must be a finite number > 0,
  got -1` (exit status 2), without the usage block.
- `arg(rule)`: an argparse type from a schema rule (`loramcl.schema.fields`): the text is parsed as
  YAML would (numbers, true / false, null) and checked by the same rule as a config value.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

OURS = "LORAMCL_HYDRA_FULL_ERROR_SET"  # marks a HYDRA_FULL_ERROR that run_hydra set (inherited by children)


def fold(text: str) -> str:
    """A multi-line library message as one line: blank and `full_key:` / `object_type=` lines dropped,
    tab-indented option lists joined by commas, the rest by '; '."""
    parts: list[str] = []
    for raw in str(text).splitlines():
        line = raw.strip()
        if not line or line.startswith(("full_key:", "object_type=", "reference_type=")) \
                or "HYDRA_FULL_ERROR" in line:
            continue
        if raw.startswith("\t") and parts and parts[-1].endswith(":"):
            parts[-1] += " " + line
        elif raw.startswith("\t") and parts and parts[-1].rstrip().endswith(tuple("abcdefghijklmnopqrstuvwxyz0123456789_")) \
                and ":" in parts[-1]:
            parts[-1] += ", " + line
        else:
            parts.append(line)
    return "; ".join(parts)


def _traceback_file(err: BaseException) -> Optional[Path]:
    """Save the traceback of an unexpected error: in the run folder when there is one, else /tmp."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    folder: Optional[Path] = None
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            folder = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        folder = None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for place in ([folder] if folder is not None and folder.is_dir() else []) + [Path(tempfile.gettempdir())]:
        try:
            path = place / f"loramcl-error-{stamp}-{os.getpid()}.txt"
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def _is_library_config_error(err: BaseException) -> bool:
    names = {c.__module__.split(".")[0] for c in type(err).__mro__}
    return bool(names & {"hydra", "omegaconf"})


def library_message(err: BaseException) -> str:
    """A Hydra / OmegaConf composition error as one line that names the key or option the user typed."""
    message = fold(err)
    cause = err.__cause__
    if cause is not None and _is_library_config_error(cause) and fold(cause) not in message:
        message += f" ({fold(cause)})"
    message = re.sub(r"^Error merging override ", "cannot apply the override ", message)
    if getattr(err, "override", None) and str(err.override) not in message:  # a syntax error
        message = f"cannot parse the override {err.override!r}: {message}"
    message = re.sub(r";? ?Config search path:.*$", "", message)
    missing_key = re.match(r"Could not override '([^']+)'.*not in struct", message)
    if missing_key:  # a key that does not exist (a typo, or a key of another group option)
        key = missing_key.group(1)
        given = re.search(r"use \+(\S+)", message)
        message = (f"{key} is not a key of this config: check its spelling (a new key is added with "
                   f"+{given.group(1) if given else key + '=...'})")
    option = re.match(r"In '[^']+': Could not find '([^']+)/([^']+)'; Available options in '[^']+': (.*)$", message)
    if option:  # an unknown option of a config group (mcl=nonexistent)
        message = f"{option.group(1)}={option.group(2)} is not an option of {option.group(1)}/ (available: {option.group(3)})"
    return message


def report(err: BaseException) -> int:
    """Print the one line for `err`; returns the exit status."""
    from loramcl.errors import ConfigError, MissingResource, RunStopped

    if isinstance(err, RunStopped):
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    if isinstance(err, (ConfigError, MissingResource)):
        print(f"error: {fold(err)}", file=sys.stderr, flush=True)
        return 1
    from loramcl.utils.atomic import FewerResults

    if isinstance(err, FewerResults):  # results would be replaced by fewer: refused, nothing written
        print(f"error: {fold(err)}", file=sys.stderr, flush=True)
        return 2
    if _is_library_config_error(err):
        print(f"error: {library_message(err)}", file=sys.stderr, flush=True)
        return 1
    saved = _traceback_file(err)
    where = f"the traceback is in {saved}" if saved else "no traceback could be saved"
    print(f"error: unexpected {type(err).__name__}: {' '.join(str(err).split())[:300]} ({where}; set "
          f"HYDRA_FULL_ERROR=1 to see it here)", file=sys.stderr, flush=True)
    return 1


def entry_point(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function (under @hydra.main): an exception that escapes it ends the process
    with its one line (Hydra would add its own 'Error executing job' line and re-raise). In a
    multirun the line is printed and the exception goes on to Hydra, so the other jobs still run."""
    import functools

    @functools.wraps(task)
    def wrapper(cfg: Any) -> Any:
        try:
            return task(cfg)
        except Exception as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(OURS) != "1":
                raise
            code = report(err)
            try:
                from hydra.core.hydra_config import HydraConfig
                from hydra.types import RunMode

                if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
                    raise
            except ImportError:
                pass
            sys.exit(code)

    return wrapper


def run_hydra(main: Callable[[], Any], signals: bool = True) -> None:
    """Run a @hydra.main function; any failure ends in one `error:` line (see the module docstring).
    `signals=False`: Ctrl+C / SIGTERM keep Python's own handling (train.py: GracefulStop's during a fit)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(OURS) != "1":
        main()  # the user asked for tracebacks
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; we report
    os.environ[OURS] = "1"
    from loramcl.interrupts import stop_on_signals

    try:
        # Ctrl+C / SIGTERM from the first moment (Hydra's start, the checks, the imports): one line and
        # 130 / 143; a training's own stop (GracefulStop, checkpoint saved) prints its line inside
        if signals:
            with stop_on_signals(restore=False):
                main()
        else:
            main()
    except SystemExit:
        raise
    except KeyboardInterrupt as err:  # a Ctrl+C that nothing inside turned into its line
        signum = int(getattr(err, "signum", 2))
        if not getattr(err, "reported", False):
            print(f"error: interrupted ({'SIGTERM' if signum == 15 else 'SIGINT'})", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    except Exception as err:
        sys.exit(report(err))


# ---------------------------------------------------------------------------------------------- scripts
class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <message>` on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        message = re.sub(r"^argument ([^:]+): ", lambda m: m.group(1).split("/")[-1] + " ", message)
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def parse_value(text: str) -> Any:
    """A command-line text as a config value: YAML numbers, booleans and null; else the text."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def arg(rule: Any, parse: Callable[[str], Any] = parse_value) -> Callable[[str], Any]:
    """An argparse `type` checking a schema rule: `--x -1` gives `--x must be an integer >= 1, got -1`."""
    from pydantic import TypeAdapter, ValidationError

    adapter = TypeAdapter(rule)

    def convert(text: str) -> Any:
        value = parse(text)
        try:
            return adapter.validate_python(value)
        except ValidationError as err:
            raise argparse.ArgumentTypeError(f"must be {err.errors()[0]['msg']}, got {text}") from None

    convert.__name__ = "value"
    return convert


def run_script(main: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """A script's `main(...)`; an exception that escapes it is its one line (see `report`), and its
    exit status is returned. Signals are `loramcl.interrupts.stop_on_signals`' business."""
    try:
        return main(*args, **kwargs)
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(OURS) != "1":
            raise
        return report(err)
