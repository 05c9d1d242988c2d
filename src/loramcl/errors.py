"""The project's error types, below every other module: a run stops on one of these with one line.

`ConfigError`: an impossible or mismatched configuration value (another K, rank or training scheme,
an unknown key); `MissingResource`: data, weights or a checkpoint that a run needs are missing or
unreadable; `UnsuitedDecoding`: a decoding method that does not suit the run's model. All are raised
before any expensive work starts; `train.py` / `eval.py` print them as `error: <message>`.

`RunStopped` is the other kind: a training run that was stopped on purpose, mid-fit (a non-finite
loss or gradient, a SIGTERM / SIGINT); it carries the process' exit status and the MLflow status
its run is closed with.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An impossible configuration value (raised before any model is built)."""


class MissingResource(FileNotFoundError):
    """Data, weights or a checkpoint a run needs are missing or unreadable (raised before any model is loaded)."""


class UnsuitedDecoding(ConfigError):
    """The decoding method does not suit the run's model (e.g. beam search on an MCL run)."""


class RunStopped(Exception):
    """A training run stopped before its end; `train.py` prints the message and exits with `exit_code`."""

    exit_code = 1
    mlflow_status = "FAILED"


class NonFiniteError(RunStopped):
    """A NaN / inf training loss, gradient or adapter weight: the run stops before it is stepped or saved."""


class StopRequested(RunStopped):
    """SIGTERM or SIGINT: a checkpoint was saved at a step boundary; exit status 128 + the signal number."""

    mlflow_status = "KILLED"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
