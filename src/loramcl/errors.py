"""The project's error types, below every other module: a run stops on one of these with one line.

`ConfigError`: an impossible or mismatched configuration value (another K, rank or training scheme,
an unknown key); `MissingResource`: data, weights or a checkpoint that a run needs are missing or
unreadable; `UnsuitedDecoding`: a decoding method that does not suit the run's model. All are raised
before any expensive work starts; `train.py` / `eval.py` print them as `error: <message>`.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An impossible configuration value (raised before any model is built)."""


class MissingResource(FileNotFoundError):
    """Data, weights or a checkpoint a run needs are missing or unreadable (raised before any model is loaded)."""


class UnsuitedDecoding(ConfigError):
    """The decoding method does not suit the run's model (e.g. beam search on an MCL run)."""
