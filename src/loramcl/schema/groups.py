"""The schema of every config group: one pydantic model per group, one typed field per key.

Each model lists the keys of its group with their rule (`loramcl.schema.fields`): type, range,
choices, finite floats, `null` where null means something. Groups without a `_target_` forbid
unknown keys. Groups that build an object (`_target_`: the DataModule, the backbone, the optimizer,
the Lightning Trainer, callbacks, loggers) type the keys we know and leave the others to the
target's own signature (`loramcl.schema.library.check_signature`), so that a key the library takes
is accepted and a key it does not is named. Relations between values of one group are model
validators; their messages write `@key` for a key of the group (see `loramcl.schema.errors`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from loramcl.schema.fields import Anything, Bool, Choice, Float, Int, Mapping, Text, is_int, is_number, rule

MCL_MODES = ("wta", "relaxed-wta", "annealed-wta", "random-wta")  # K hypotheses, winner-takes-all family
MODES = (*MCL_MODES, "moe")  # "moe": K LoRA experts behind a token router, one model trained by plain NLL
SCHEDULE_UNITS = ("step", "epoch")
DTYPES = ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16")  # loramcl.backbones.DTYPES (torch-free here)
REFERENCE_MODES = ("random", "all", "first")  # loramcl.data.collate.REFERENCE_MODES
LORA_IMPLEMENTATIONS = ("fast", "reference")  # the K-way layer's forwards (loramcl.layers.MultiLoRALinear)
SEED = Int(0, 2**32 - 1)  # numpy's seed range, which Lightning's seed_everything enforces


class Group(BaseModel):
    """A group without `_target_`: every key is listed, an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Target(BaseModel):
    """A group that builds `_target_`: known keys typed, other keys checked against its signature."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)
    target: Text() = None
    partial: Bool() = False

    def __init__(self, **data: Any):
        data = dict(data)
        if "_target_" in data:
            data["target"] = data.pop("_target_")
        if "_partial_" in data:
            data["partial"] = data.pop("_partial_")
        data.pop("_recursive_", None)
        data.pop("_convert_", None)
        super().__init__(**data)


# ---------------------------------------------------------------------------------------- the core
class MCLSchema(Group):
    """How the K hypotheses share the loss (SPEC section 2)."""

    num_hypotheses: Int(1) = 1
    mode: Choice(*MODES) = "wta"
    epsilon: Float(0, 1, high_open=True) = 0.05
    temperature_init: Float(0, low_open=True) = 1.0
    temperature_min: Float(0, low_open=True) = 1e-6
    temperature_decay: Float(0, 1, low_open=True) = 0.999
    schedule_unit: Choice(*SCHEDULE_UNITS) = "step"

    @model_validator(mode="after")
    def _relations(self) -> "MCLSchema":
        if self.mode == "moe" and self.num_hypotheses < 2:
            raise ValueError(f"@mode=moe mixes @num_hypotheses >= 2 LoRA experts, got {self.num_hypotheses} (one "
                             f"adapter is the MLE baseline: use a wta mode with @num_hypotheses=1)")
        if self.mode == "annealed-wta" and self.temperature_min >= self.temperature_init:
            raise ValueError(f"@temperature_min={self.temperature_min:g} must be below @temperature_init="
                             f"{self.temperature_init:g}: annealed-wta would never anneal")
        return self


def _regex(text: str) -> bool:
    import re

    try:
        re.compile(text)
    except re.error:
        return False
    return bool(text.strip())


class LoRASchema(Group):
    """Where the K adapters go and their shape: y_k = W x + (alpha / r) B_k A_k dropout(x)."""

    r: Int(1) = 8
    alpha: Float(0, low_open=True) = 8.0
    dropout: Float(0, 1, high_open=True) = 0.0
    target_modules: rule("a non-empty list of module-name suffixes, a valid regular expression or 'all-linear'",
                         lambda v: (isinstance(v, str) and (v == "all-linear" or _regex(v)))
                         or (isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(t, str) and t.strip() for t in v)),
                         lambda v: v if isinstance(v, str) else list(v)) = ("q_proj", "v_proj")
    exclude_modules: rule("null, a list of module-name suffixes or a valid regular expression",
                          lambda v: v is None or (isinstance(v, str) and _regex(v))
                          or (isinstance(v, (list, tuple)) and all(isinstance(t, str) and t.strip() for t in v)),
                          lambda v: v if v is None or isinstance(v, str) else list(v)) = None
    adapt_encoders: Bool() = False
    implementation: Choice(*LORA_IMPLEMENTATIONS) = "fast"


# ---------------------------------------------------------------------------------------- data and model
def _interval(v: Any) -> bool:
    return (is_int(v) and v >= 1) or (isinstance(v, float) and is_number(v) and 0.0 < v <= 1.0)


class DataSchema(Target):
    """Every DataModule's keys (the toy's Markov stream and the HDF5 tasks); each is optional here."""

    batch_size: Int(1) = None
    val_batch_size: Int(1) = None
    num_workers: Int(0) = None
    references: Choice(*REFERENCE_MODES) = None
    val_references: Choice(*REFERENCE_MODES) = None
    max_train_items: Int(1, nullable=True, note="null: every item") = None
    max_val_items: Int(1, nullable=True, note="null: every item") = None
    num_train_batches: Int(1, note="the toy's training stream, one batch per optimizer step: set trainer.max_steps >= 1") = None
    num_val_sequences: Int(1) = None
    seq_len: Int(2, note="the first token is never scored") = None
    max_source_tokens: Int(1) = None
    max_target_tokens: Int(2, note="a target must hold at least one token and EOS") = None
    seed: SEED = None
    name: Text() = None
    root: Text() = None
    processor: Text() = None
    prompt: Text() = None
    src_lang: Text() = None
    tgt_lang: Text() = None
    prepare_hint: Text(nullable=True) = None
    auto_prepare: Mapping() = None
    splits: Mapping() = None
    # data=text (loramcl.data.text)
    hub_dataset: Text(nullable=True) = None
    hub_config: Text(nullable=True) = None
    format: Choice("auto", "json", "csv", "parquet") = None
    input_field: Text() = None
    reference_field: rule("a field name or a non-empty list of field names",
                          lambda v: (isinstance(v, str) and bool(v.strip()))
                          or (isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(t, str) and t.strip() for t in v)),
                          lambda v: v if isinstance(v, str) else list(v)) = None
    id_field: Text(nullable=True) = None
    chat_template: Choice("auto", True, False) = None
    system_prompt: Text(nullable=True) = None
    separator: Anything = None
    init: Anything = None
    transitions: Anything = None
    weights: Anything = None


class ModelSchema(Target):
    name_or_path: Text() = None
    dtype: Choice(*DTYPES, nullable=True) = None
    model_class: Text(nullable=True) = None
    config_class: Text() = None
    config: Mapping() = None
    seed: SEED = None
    gradient_checkpointing: Bool() = None
    auto_pretrain: Mapping() = None


class OptimizerSchema(Target):
    lr: Float(0, low_open=True) = None
    weight_decay: Float(0) = None
    eps: Float(0, low_open=True) = None
    betas: rule("two finite numbers in [0, 1)", lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                and all(is_number(b) and 0 <= b < 1 for b in v), list) = None


class SchedulerSchema(Target):
    warmup_ratio: Float(0, 1, high_open=True) = None
    min_lr_ratio: Float(0, 1) = None


class OptimSchema(Group):
    optimizer: OptimizerSchema
    scheduler: SchedulerSchema | None = None


# ---------------------------------------------------------------------------------------- trainer
def _devices_ok(v: Any) -> bool:
    if v == "auto" or (is_int(v) and (v >= 1 or v == -1)):
        return True
    if isinstance(v, str):
        parts = [p.strip() for p in v.split(",") if p.strip()]
        return v.strip() == "-1" or (bool(parts) and all(p.isdigit() for p in parts))
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(is_int(d) and d >= 0 for d in v)


DEVICES = rule("a number of devices >= 1, -1 (all), 'auto', or a list of device indices", _devices_ok)


class TrainerSchema(Target):
    accelerator: Text() = None
    devices: DEVICES = None
    num_nodes: Int(1) = None
    precision: rule("a text or number Lightning knows as a precision (e.g. 32-true, bf16-mixed, 16-mixed)",
                    lambda v: (isinstance(v, str) and v.strip() != "") or (is_int(v) and v in (16, 32, 64))) = None
    strategy: Anything = None
    max_steps: Int(1, also=(-1,), note="-1: no limit, trainer.max_epochs decides") = None
    max_epochs: Int(1, nullable=True, also=(-1,), note="-1: no limit") = None
    min_steps: Int(0, nullable=True) = None
    min_epochs: Int(0, nullable=True) = None
    val_check_interval: rule("a number of training steps >= 1 or a fraction of an epoch in (0, 1]",
                             lambda v: v is None or _interval(v)) = None
    check_val_every_n_epoch: Int(1, nullable=True, note="null: count validation steps across epochs") = None
    num_sanity_val_steps: Int(0, also=(-1,)) = None
    log_every_n_steps: Int(1) = None
    gradient_clip_val: Float(0, low_open=True, nullable=True, note="null: no clipping") = None
    gradient_clip_algorithm: Choice("norm", "value", nullable=True) = None
    accumulate_grad_batches: Int(1) = None
    limit_train_batches: rule("a fraction in [0, 1] or a number of batches >= 0",
                              lambda v: v is None or (is_int(v) and v >= 0) or (isinstance(v, float) and is_number(v) and 0 <= v <= 1)) = None
    limit_val_batches: rule("a fraction in [0, 1] or a number of batches >= 0",
                            lambda v: v is None or (is_int(v) and v >= 0) or (isinstance(v, float) and is_number(v) and 0 <= v <= 1)) = None
    fast_dev_run: rule("true, false or a number of batches >= 0",
                       lambda v: isinstance(v, bool) or (is_int(v) and v >= 0)) = None
    deterministic: Bool(also=("warn",)) = None
    benchmark: Bool(nullable=True) = None
    enable_model_summary: Bool() = None
    enable_progress_bar: Bool() = None
    enable_checkpointing: Bool() = None
    use_distributed_sampler: Bool() = None
    default_root_dir: Text(nullable=True) = None
    plugins: Anything = None


# ---------------------------------------------------------------------------------------- callbacks and loggers
class CollapseSchema(Target):
    window: Int(1, nullable=True, note="null: 100 steps, a third of a fit under 300 steps") = None
    min_share: Float(0, 1, high_open=True, nullable=True, note="null: 1 / (4K); 0: never") = None
    duplicate_tolerance: Float(0, nullable=True, note="null: not checked") = None
    duplicate_growth: Float(0) = None
    max_temperature: Float(0, low_open=True) = None
    action: Choice("warn", "stop") = None
    plot: Bool() = None
    dirpath: Text(nullable=True) = None


class CheckpointSchema(Target):
    dirpath: Text(nullable=True) = None
    filename: Text(nullable=True) = None
    monitor: Text(nullable=True) = None
    mode: Choice("min", "max") = None
    save_top_k: Int(0, also=(-1,), note="-1: every checkpoint") = None
    save_last: Bool(nullable=True, also=("link",)) = None
    every_n_train_steps: Int(1, nullable=True, note="null or 0: only at validation / epoch ends", also=(0,)) = None
    every_n_epochs: Int(1, nullable=True, also=(0,)) = None
    train_time_interval: Anything = None
    auto_insert_metric_name: Bool() = None
    save_weights_only: Bool() = None
    verbose: Bool() = None


class LRMonitorSchema(Target):
    logging_interval: Choice("step", "epoch", nullable=True) = None


class MLflowLoggerSchema(Target):
    experiment_name: Text() = None
    tracking_uri: Text(nullable=True) = None
    artifact_location: Text(nullable=True) = None
    log_model: Bool(also=("all",)) = None
    run_name: Text(nullable=True) = None


class TensorBoardSchema(Target):
    save_dir: Text() = None
    name: Text(nullable=True) = None
    default_hp_metric: Bool() = None


CALLBACK_SCHEMAS = {"CollapseMonitor": CollapseSchema, "AdapterCheckpoint": CheckpointSchema,
                    "ModelCheckpoint": CheckpointSchema, "LearningRateMonitor": LRMonitorSchema}
LOGGER_SCHEMAS = {"MLFlowLogger": MLflowLoggerSchema, "TensorBoardLogger": TensorBoardSchema}


def schema_for_target(target: Any, table: dict[str, type]) -> type:
    name = str(target or "").rsplit(".", 1)[-1]
    return table.get(name, Target)


# ---------------------------------------------------------------------------------------- the rest of train.py
class PathsSchema(Group):
    root_dir: Text() = None
    data_dir: Text() = None
    log_dir: Text() = None
    output_dir: Text(nullable=True) = None


class ExtrasSchema(Group):
    print_config: Bool() = True
    ignore_warnings: Bool() = True
    flush_denormal: Bool() = True
    num_threads: Int(1, nullable=True, note="null: torch's default") = None


class GenerationSchema(Group):
    """Generation settings (eval.py's `generation`, the bilingual runner's `task.generation`)."""

    max_new_tokens: Int(1) = None
    repetition_penalty: Float(0, low_open=True, note="1.0: no penalty") = None
    length_penalty: Float() = None
    do_sample: Bool() = None
    num_beams: Int(1) = None


class TaskSchema(Group):
    name: Text()
    runner: Text(pattern=r"[A-Za-z_][\w.]*", what="a dotted function name")
    train_mle: Bool() = None
    mle_rank: Int(1, nullable=True, note="null: lora.r") = None
    theory: Choice("exact", "validation") = None
    generation: GenerationSchema | None = None


TASK_NAME = Text(pattern=r"[^/\\\x00]+", what="a text without / (it names logs/<task_name>/ and the MLflow experiment)")


class TrainTop(Group):
    """train.py's own top-level keys (the groups are validated one by one, see `loramcl.schema`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    task_name: TASK_NAME = "train"
    seed: SEED = 0
    ckpt_path: Text(nullable=True, what="a checkpoint, a train.py run folder or auto") = None
    optimized_metric: Text(nullable=True) = None
    num_candidates: Int(1, nullable=True, note="null: K") = None
