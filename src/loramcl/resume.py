"""`train.py ckpt_path=...`: which checkpoint a run resumes, and whether there is anything left to do.

`ckpt_path` may be
- a checkpoint file (`.../checkpoints/K3/last.ckpt`, `step40.ckpt`);
- a train.py run folder: its newest readable checkpoint of this config's model (`checkpoints/K3/`,
  `moe3/`), i.e. the one with the most optimizer steps;
- `auto`: the same, in the run folder this job writes to (`paths.output_dir`), or a fresh start
  when it has no checkpoint yet. That is what a re-submitted job needs: give it a fixed run folder
  (`hydra.run.dir=logs/<name>`) and `ckpt_path=auto`, and every start continues the last one.

A job that SLURM requeued (SLURM_RESTART_COUNT >= 1) runs in the same run folder (its name comes
from the job id, `loramcl.cluster.run_stamp`) and resumes as with `auto` when `ckpt_path` is
unset. Without `ckpt_path`, a run folder that already holds checkpoints of the model is refused:
a new run never writes over another's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from loramcl.checkpoints import Checkpoint, CheckpointFolder
from loramcl.errors import ConfigError, MissingResource

log = logging.getLogger(__name__)

AUTO = "auto"


def newest_checkpoint(folder: Path) -> Optional[Path]:
    """The readable checkpoint of `folder` with the most optimizer steps (last.ckpt wins ties); None
    when there is none. Unreadable files (e.g. truncated by a kill) are skipped with a warning."""
    scan = CheckpointFolder.scan(folder)
    for path, why in scan.unreadable.items():
        log.warning(f"skipping {path}: {why}")
    return scan.newest()


def resolve_ckpt_path(value: Optional[str], model_folder: str, output_dir: Optional[Path]) -> Optional[Path]:
    """The checkpoint file that `ckpt_path=value` designates for the model `model_folder` (e.g. "K3"),
    or None (no ckpt_path, or `auto` with nothing saved yet). Raises MissingResource / ConfigError
    with one line otherwise."""
    from loramcl.cluster import slurm_restart_count

    unset = value is None or str(value).strip() == ""
    if unset and slurm_restart_count() > 0 and output_dir is not None:
        log.info(f"SLURM restart {slurm_restart_count()} of this job: ckpt_path=auto")
        value, unset = AUTO, False
    if unset:
        if output_dir is not None:  # never train over another run's checkpoints
            existing = sorted((output_dir / "checkpoints" / model_folder).glob("*.ckpt"))
            if existing:
                raise ConfigError(f"the run folder {output_dir} already holds checkpoints of this model "
                                  f"({', '.join(p.name for p in existing)}): continue it with ckpt_path=auto, or "
                                  f"start a new run in another folder (hydra.run.dir=...)")
        return None
    if str(value) == AUTO:
        if output_dir is None:
            raise ConfigError("ckpt_path=auto needs a Hydra run folder (run train.py)")
        found = newest_checkpoint(output_dir / "checkpoints" / model_folder)
        if found is None:
            log.info(f"ckpt_path=auto: no checkpoint in {output_dir / 'checkpoints' / model_folder} yet, starting fresh")
        else:
            log.info(f"ckpt_path=auto: resuming {found}")
        return found
    path = Path(str(value)).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise MissingResource(f"ckpt_path {path} does not exist (give a checkpoint, a train.py run folder or 'auto')")
    folder = path / "checkpoints" / model_folder
    if not (path / "checkpoints").is_dir():
        raise MissingResource(f"ckpt_path {path} is a folder without checkpoints/: not a train.py run folder")
    found = newest_checkpoint(folder) if folder.is_dir() else None
    if found is None:
        others = sorted(p.name for p in (path / "checkpoints").iterdir() if p.is_dir() and any(p.glob("*.ckpt")))
        raise MissingResource(f"ckpt_path {path} has no readable checkpoint of this model in checkpoints/{model_folder}/"
                              + (f" (it has {', '.join(others)}: another K or scheme?)" if others else ""))
    return found


def finished(checkpoint: Checkpoint, max_steps: Optional[int], max_epochs: Optional[int]) -> Optional[str]:
    """Why `checkpoint` needs no more training under `trainer.max_steps` / `trainer.max_epochs`
    (a phrase), or None."""
    step = int(checkpoint.raw.get("global_step", 0))
    max_steps = int(max_steps or -1)
    if max_steps > 0 and step >= max_steps:
        return f"it is at step {step} of trainer.max_steps={max_steps}"
    loops = checkpoint.raw.get("loops", {}).get("fit_loop", {})
    epochs_done = loops.get("epoch_progress", {}).get("current", {}).get("completed")
    if max_epochs is not None and int(max_epochs) > 0 and epochs_done is not None:
        if int(epochs_done) >= int(max_epochs):
            return f"it completed {epochs_done} of trainer.max_epochs={max_epochs} epochs"
    return None
