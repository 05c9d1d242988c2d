"""The schema of eval.py's config (configs/eval.yaml, configs/decoding/).

eval.py's own values are checked here before anything is read; the trained run's config is checked
against the train.py schema (`validate_train(..., training=False)`) once it has been read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from loramcl.errors import ConfigError
from loramcl.schema.errors import validate
from pydantic import model_validator

from loramcl.schema.fields import Anything, Bool, Choice, Float, Int, Mapping, Text, is_int, rule
from loramcl.schema.groups import SEED, GenerationSchema, Group, PathsSchema

METHODS = ("hypotheses", "beam", "dbs", "mcl_dbs", "sample", "tta", "moe_sample", "forced_expert",
           "teacher_forced")
SAMPLERS = ("top_k", "nucleus", "typical", "ancestral")
COUNT = rule("an integer >= 1 or K, 2K, K^2", lambda v: (is_int(v) and v >= 1)
             or (isinstance(v, str) and re.fullmatch(r"\s*(\d*)\s*K\s*(\^\s*2)?\s*", v) is not None))


class TTASchema(Group):
    strength: Choice("weak", "medium", "strong") = "weak"
    crop_scale: Float(0, 1, low_open=True) = 0.85
    flip: Bool() = False
    seed: SEED = 0


class DecodingSchema(Group):
    name: Text()
    method: Choice(*METHODS)
    num_beams: COUNT = 1
    label: Text(nullable=True) = None
    diversity_penalty: Float(0) = 0.5
    num_beam_groups: COUNT = "K"
    sampler: Choice(*SAMPLERS, nullable=True) = None
    temperature: Float(0, low_open=True) = 1.0
    batched: Bool() = True
    tta: Optional[TTASchema] = None


class MetricsSchema(Group):
    java: Text() = "java"
    cache_dir: Text(nullable=True) = None
    spice: Choice("auto", True, False) = "auto"
    fense: Choice("auto", True, False) = "auto"
    oracle_nll: Bool() = True
    semantic: Choice("auto", True, False) = "auto"
    embedding_model: Text() = "sentence-transformers/all-MiniLM-L6-v2"
    embedding_batch_size: Int(1) = 64
    embedding_device: Text(nullable=True) = None


class MLflowSchema(Group):
    enabled: Bool() = True
    tracking_uri: Text() = None
    artifact_location: Text(nullable=True) = None
    experiment: Text(nullable=True) = None
    tags: Mapping() = None


class EvalGeneration(GenerationSchema):
    max_new_tokens: Int(1) = 40
    repetition_penalty: Float(0, low_open=True, note="1.0: no penalty") = 1.1
    length_penalty: Float() = 1.0


class EvalTop(Group):
    task_name: Text() = "eval"
    ckpt_path: Text(what="a train.py run folder or a checkpoint file in it")
    model_name: Text(nullable=True) = None
    skip_unsuited: Choice("auto", True, False) = "auto"
    train_config: Text(nullable=True) = None
    num_hypotheses: Int(1, nullable=True) = None
    backbone: Text(nullable=True) = None
    num_candidates: Int(1, nullable=True, note="null: the run's, else its K") = None
    seed: SEED = 0
    batch_size: Int(1, nullable=True, note="null: the run's data.val_batch_size") = None
    max_items: Int(1, nullable=True, note="null: the whole test split") = None
    references_language: Text(nullable=True, pattern=r"[a-z]{2,3}", what="a language code (en, fr)") = None
    devices: Int(1) = 1
    accelerator: Choice("auto", "cpu", "gpu", "cuda", "mps") = "auto"
    generation: EvalGeneration = EvalGeneration()
    metrics: MetricsSchema = MetricsSchema()
    mlflow: MLflowSchema = MLflowSchema()
    paths: PathsSchema = PathsSchema()
    decoding: Optional[DecodingSchema] = None
    local: Anything = None


@dataclass(frozen=True)
class EvalSettings:
    """An eval.py config, validated: what the evaluation modules receive instead of the raw config."""

    top: EvalTop
    raw: dict = field(default_factory=dict, repr=False)  # the resolved values (logged as MLflow params)
    output_dir: Optional[Path] = None  # the evaluation's run folder (None outside a Hydra run)

    @property
    def metrics(self) -> dict:
        """`metrics` as the metric functions take it (a mapping)."""
        return self.top.metrics.model_dump()


def validate_eval(cfg: Any, libraries: bool = False) -> EvalSettings:
    """Every value of an eval.py config; `libraries=True`: transformers judges `generation` too."""
    from loramcl.schema.values import plain

    values = plain(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    values.pop("hydra", None)
    if "ckpt_path" not in values:
        raise ConfigError("ckpt_path is missing: give a train.py run folder or a checkpoint, ckpt_path=<path>")
    top = validate(EvalTop, values)
    if top.train_config is not None:
        from loramcl.errors import MissingResource

        if not Path(top.train_config).expanduser().is_file():
            raise MissingResource(f"train_config={top.train_config} does not exist (give a train.py run's "
                                  f".hydra/config.yaml)")
    if libraries:
        from loramcl.schema.library import probe_generation

        probe_generation(values.get("generation"), "generation")
    return EvalSettings(top=top, raw=values, output_dir=_output_dir(values))


class PredictTop(Group):
    """predict.py's values (configs/predict.yaml)."""

    task_name: Text() = "predict"
    ckpt_path: Text(what="a train.py run folder or a checkpoint file in it")
    model_name: Text(nullable=True) = None
    input: Anything = None
    input_file: Text(nullable=True) = None
    output: Text(nullable=True) = None
    num_candidates: Int(1, nullable=True, note="null: the run's, else its K") = None
    num_hypotheses: Int(1, nullable=True) = None  # expectations, as eval.py's
    backbone: Text(nullable=True) = None
    seed: SEED = 0
    batch_size: Int(1) = 8
    accelerator: Choice("auto", "cpu", "gpu", "cuda") = "auto"
    generation: EvalGeneration = EvalGeneration()
    paths: PathsSchema = PathsSchema()
    decoding: Optional[DecodingSchema] = None
    local: Anything = None

    @model_validator(mode="after")
    def _one_source(self) -> "PredictTop":
        if (self.input is None) == (self.input_file is None):
            raise ValueError("give one of input=\"...\" (one input) or input_file=<file> (one per line, or rows)"
                             if self.input is None else "give input or input_file, not both")
        if self.input is not None and not isinstance(self.input, (str, int, float)):
            raise ValueError(f"@input must be a text, got {type(self.input).__name__}")
        return self


def validate_predict(cfg: Any) -> EvalSettings:
    """Every value of a predict.py config, before anything is read."""
    from loramcl.schema.values import plain

    values = plain(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    values.pop("hydra", None)
    if "ckpt_path" not in values:
        raise ConfigError("ckpt_path is missing: give a train.py run folder or a checkpoint, ckpt_path=<path>")
    top = validate(PredictTop, values)
    return EvalSettings(top=top, raw=values, output_dir=_output_dir(values) if top.output is None else None)


def _output_dir(values: dict) -> Optional[Path]:
    """The run folder Hydra made for this job (created if missing), or None outside a Hydra run."""
    folder = (values.get("paths") or {}).get("output_dir")
    if not folder:
        return None
    path = Path(str(folder))
    path.mkdir(parents=True, exist_ok=True)
    return path
