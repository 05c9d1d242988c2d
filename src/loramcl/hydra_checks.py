"""A Hydra callback that stops bad input before Hydra or the job does any work (configs/hydra/default.yaml).

- `on_run_start` / `on_multirun_start`: the run / sweep folder Hydra is about to create must be
  creatable, i.e. its nearest existing parent a writable folder. Hydra creates it before `main()`
  runs, so without this a read-only `paths.log_dir` ends in Hydra's own traceback.
- `on_job_start` (train.py jobs): `loramcl.preflight.check_before_build` (config values, LoRA
  targets on the meta device) before the runner and its imports (Lightning: ~10 s here) start, so a
  bad value fails in seconds. The runner's own preflight repeats these checks (they also guard
  configs composed outside Hydra) and adds the data, weights and resume checks.

Each failure prints `error: <message>` and exits with status 1, as train.py / eval.py do for the
errors of `main()`; `HYDRA_FULL_ERROR=1` raises instead (with its traceback).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from loramcl.errors import ConfigError, MissingResource


def _stop(err: Exception) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    sys.exit(f"error: {err}")


def check_output_folder(config: DictConfig, key: str) -> None:
    """The folder `key` (hydra.run.dir / hydra.sweep.dir) names can be created; names the key the
    user typed: paths.log_dir when the folder lies below it."""
    from loramcl.preflight import check_writable

    try:
        folder = OmegaConf.select(config, key)
        log_dir = OmegaConf.select(config, "paths.log_dir", default=None)
    except Exception:  # an interpolation only Hydra's job can resolve: Hydra reports it itself
        return
    if folder is None:
        return
    if log_dir is not None and os.path.abspath(str(folder)).startswith(os.path.abspath(str(log_dir)) + os.sep):
        check_writable(log_dir, "paths.log_dir")
    check_writable(folder, key)


class PreflightCallback(Callback):
    """Registered in configs/hydra/default.yaml for train.py and eval.py."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_output_folder(config, "hydra.run.dir")
        except (ConfigError, MissingResource) as err:
            _stop(err)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_output_folder(config, "hydra.sweep.dir")
        except (ConfigError, MissingResource) as err:
            _stop(err)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "mcl" not in config or "task" not in config:  # eval.py: its checks need the run's checkpoint first
            return
        from loramcl.preflight import check_before_build

        try:
            check_before_build(config)
        except (ConfigError, MissingResource) as err:
            _stop(err)
