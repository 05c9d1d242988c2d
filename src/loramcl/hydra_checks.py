"""A Hydra callback that stops bad input before Hydra or the job does any work (configs/hydra/default.yaml).

`on_run_start` runs before Hydra creates the run folder or writes its `.hydra/` files, so a refusal
there leaves every existing file as it was:
- the run folder can be created (its nearest existing parent is a writable folder);
- train.py: every config value against the schema (`loramcl.schema`), the toy's chains, the LoRA
  targets on the meta device (`preflight.check_before_build`), the values Lightning and torch own
  (`preflight.check_libraries`), and the run folder (`loramcl.run_folders`): a folder that holds a
  run is used only to resume that very run with its own model values, and its previous `.hydra/`
  files are kept in `.hydra/previous/<n>/`;
- eval.py: its values against the schema, `generation` asked of transformers, and a run folder that
  holds no training run and no earlier evaluation; predict.py: its values and the same run folder rule.
`on_multirun_start` checks the sweep folder; `on_job_start` validates each job of a sweep (a sweep's
job folders are new). The runners repeat the config checks for configs composed outside Hydra.

Each failure prints `error: <message>` and exits with status 1 (`HYDRA_FULL_ERROR=1`: the traceback first).
"""

from __future__ import annotations

import copy
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from loramcl.errors import ConfigError, MissingResource


def _stop(err: Exception) -> None:
    """End the process with the one line (Hydra turns an exception of a callback into a mere warning,
    so a callback must exit); a user's HYDRA_FULL_ERROR=1 also gets the traceback."""
    from loramcl.cli import OURS, fold

    from loramcl.cluster import release_claim

    release_claim()  # a SLURM run folder claimed for this refused run goes again
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(OURS) != "1":
        traceback.print_exception(err)
    if isinstance(err, (ConfigError, MissingResource)):
        print(f"error: {fold(err)}", file=sys.stderr, flush=True)
        sys.exit(1)
    from loramcl.cli import report

    sys.exit(report(err))  # a bug in a check: one line, its traceback saved to a file


def _rank() -> int:
    """The launcher's rank of this process, from the environment (0 for a plain process)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value and value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def check_output_folder(config: DictConfig, key: str) -> Optional[Path]:
    """The folder `key` (hydra.run.dir / hydra.sweep.dir) names can be created; names the key the
    user typed: paths.log_dir when the folder lies below it. Returns the folder."""
    from loramcl.preflight import check_writable

    try:
        folder = OmegaConf.select(config, key)
        log_dir = OmegaConf.select(config, "paths.log_dir", default=None)
    except Exception:  # an interpolation only Hydra's job can resolve: Hydra reports it itself
        return None
    if folder is None:
        return None
    if log_dir is not None and os.path.abspath(str(folder)).startswith(os.path.abspath(str(log_dir)) + os.sep):
        check_writable(log_dir, "paths.log_dir")
    check_writable(folder, key)
    return Path(str(folder)).expanduser().absolute()


def with_runtime(config: DictConfig, folder: Optional[Path]) -> DictConfig:
    """A copy of `config` whose `${hydra:runtime.output_dir}` resolves to `folder`, as it will in the job."""
    if folder is None:
        return config
    from hydra.core.hydra_config import HydraConfig

    config = copy.deepcopy(config)
    with read_write(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(folder)
    HydraConfig.instance().set_config(config)
    return config


def is_train(config: DictConfig) -> bool:
    return "mcl" in config and "task" in config


def is_predict(config: DictConfig) -> bool:
    return "ckpt_path" in config and "input_file" in config and "mcl" not in config


def is_eval(config: DictConfig) -> bool:
    return "ckpt_path" in config and "mcl" not in config and "table" not in config and not is_predict(config)


def check_job(config: DictConfig) -> None:
    """The config checks of one job (train.py or eval.py), before any model is built."""
    if is_train(config):
        from loramcl.preflight import check_before_build, check_libraries, missing_resources

        settings = check_before_build(config)  # schema, chains, library signatures, LoRA targets on the meta device
        try:
            check_libraries(settings)  # and the Trainer, constructed without a model
        except ConfigError:
            missing = missing_resources(settings)  # a paper experiment on a CPU: its missing data come first
            if missing:
                raise MissingResource(" | ".join(missing)) from None
            raise
    elif is_eval(config):
        from loramcl.schema import validate_eval

        validate_eval(config, libraries=True)
    elif is_predict(config):
        from loramcl.schema.evaluation import validate_predict

        validate_predict(config)


class PreflightCallback(Callback):
    """Registered in configs/hydra/default.yaml for train.py and eval.py."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            folder = check_output_folder(config, "hydra.run.dir")
            config = with_runtime(config, folder)
            check_job(config)
            if folder is None or _rank() > 0:  # ranks > 0 share rank 0's folder (Lightning, srun, torchrun)
                return
            from loramcl import run_folders

            if is_train(config):
                if run_folders.check_train_folder(config, folder):
                    run_folders.keep_previous_config(folder)
            elif is_eval(config) or is_predict(config):
                run_folders.check_eval_folder(folder)
        except Exception as err:  # Hydra would turn it into a warning and go on
            _stop(err)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_output_folder(config, "hydra.sweep.dir")
        except Exception as err:  # Hydra would turn it into a warning and go on
            _stop(err)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:  # a single run was checked in on_run_start
            return
        try:
            check_job(config)
        except Exception as err:  # Hydra would turn it into a warning and go on
            _stop(err)
