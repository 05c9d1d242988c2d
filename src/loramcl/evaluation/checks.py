"""Before anything is built: which model of a run folder to evaluate, and whether the decoding suits it.

A run folder with several models (toy, bilingual: `mle` and `mcl`) gives the one `model_name` names,
else the only one whose training scheme the decoding method suits. `check_compatibility` refuses a
eval expectation the run does not meet (`num_hypotheses=`, `backbone=`), and a method that does not suit
the run's scheme or data (`UnsuitedDecoding`, skipped with a warning inside a multirun sweep).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from loramcl.checkpoints import Checkpoint
from loramcl.decoding.methods import DecodingSpec
from loramcl.errors import ConfigError, MissingResource, UnsuitedDecoding
from loramcl.runs import find_checkpoints
from loramcl.schemes import Scheme

log = logging.getLogger(__name__)


def select_checkpoint(top: Any, spec: DecodingSpec) -> Checkpoint:
    """The checkpoint `top.ckpt_path` designates for this decoding (loaded once); `top`: eval.py's
    validated values (`loramcl.schema.evaluation.EvalTop`)."""
    path = Path(str(top.ckpt_path)).expanduser()
    try:
        found = find_checkpoints(path)
    except MissingResource as err:
        raise ConfigError(str(err)) from None
    name = top.model_name
    if name:
        if name not in found:
            raise ConfigError(f"model_name={name} is not in {path}: it holds {', '.join(found)}")
        return Checkpoint.load(found[name])
    if len(found) == 1:
        return Checkpoint.load(next(iter(found.values())))
    suited = []
    for ckpt in found.values():
        try:
            checkpoint = Checkpoint.load(ckpt)
        except ConfigError:  # unreadable: reported when it is chosen
            continue
        if Scheme.of(checkpoint.meta.mode, checkpoint.meta.num_hypotheses).kind in spec.entry.schemes:
            suited.append(checkpoint)
    if len(suited) == 1:
        return suited[0]
    raise ConfigError(f"{path} holds several models ({', '.join(found)}): choose one with model_name=<name>")


def num_candidates(top: Any, train_cfg: DictConfig) -> int:
    """K of the comparison: eval's `num_candidates`, else the run's, else the model's K (if > 1)."""
    for value in (top.num_candidates, train_cfg.get("num_candidates")):
        if value is not None:
            if int(value) < 1:
                raise ConfigError(f"num_candidates must be >= 1, got {value}")
            return int(value)
    K = int(train_cfg.mcl.num_hypotheses)
    if K > 1:
        return K
    raise ConfigError("this is a one-output (MLE) run: set num_candidates=K, the number of candidates to decode "
                      "(the K of the MCL runs it is compared with)")


def check_compatibility(top: Any, train_cfg: DictConfig, checkpoint: Checkpoint, spec: DecodingSpec) -> None:
    """Refuse, before anything is built, an expectation the run does not meet or a decoding that does
    not suit it (`train_cfg` was checked against the checkpoint by `runs.checkpoint_config`)."""
    ckpt = checkpoint.path
    K_run = int(train_cfg.mcl.num_hypotheses)
    expect_k = top.num_hypotheses
    if expect_k is not None and int(expect_k) != K_run:
        raise ConfigError(f"num_hypotheses={expect_k} but {ckpt} was trained with K={K_run} hypotheses")
    expect_backbone = top.backbone
    run_backbone = str(train_cfg.model.get("name_or_path") or train_cfg.model.get("_target_"))
    if expect_backbone and str(expect_backbone) not in (run_backbone, Path(run_backbone).name):
        raise ConfigError(f"backbone={expect_backbone} but {ckpt} was trained on {run_backbone}")
    scheme = Scheme.of_config(train_cfg)
    method = spec.entry
    if scheme.kind not in method.schemes:
        hint = "use mcl_beam1 / mcl_beam2 / mcl_beamK / mcl_dbs" if scheme.kind == "mcl" else \
            "use a decoding for one-output models (beam, dbs, sampling, tta)" if scheme.kind == "mle" else \
            "use moe_standard / moe_sampled_expert / moe_forced, or a one-output decoding"
        raise UnsuitedDecoding(f"decoding={spec.name} {method.purpose}; this {scheme.label} run has K={K_run}: {hint}")
    if method.per_adapter and top.num_candidates not in (None, K_run):
        raise ConfigError(f"decoding={spec.name} gives one candidate per adapter (K={K_run}); "
                          f"num_candidates={top.num_candidates} cannot hold")


def check_data(spec: DecodingSpec, data_kind: str) -> None:
    """A method defined for some kinds of data only (TTA: audio and images)."""
    method = spec.entry
    if method.data_kinds is not None and data_kind not in method.data_kinds:
        kinds = " and ".join(sorted(k.split("_")[0] for k in method.data_kinds))
        raise UnsuitedDecoding(f"decoding={spec.name} ({method.title or method.name}) is defined for {kinds} inputs; "
                               f"this run's data is {data_kind}")


def skip_unsuited(setting: Any, err: UnsuitedDecoding) -> bool:
    """In a multirun (`eval.py -m ... decoding=a,b,c`), a method that does not suit this run is
    skipped with one warning and the sweep goes on (`skip_unsuited=false` makes it an error)."""
    if setting == "auto":
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            setting = HydraConfig.get().mode == RunMode.MULTIRUN
        except (ValueError, ImportError):  # not inside a Hydra run
            setting = False
    if setting:
        log.warning(f"skipped: {err}")
        return True
    return False
