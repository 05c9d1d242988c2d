"""One schema for every config value of train.py, eval.py and scripts/reproduce.py (and the scripts' arguments).

    from loramcl.schema import validate_train, validate_eval, validate_reproduce
    settings = validate_train(cfg)          # TrainSettings, or ConfigError with one line
    settings.mcl.num_hypotheses, settings.trainer.max_steps, settings.callbacks["collapse"].action

The groups' models live in `loramcl.schema.groups` (train.py), `loramcl.schema.evaluation` (eval.py) and
`loramcl.schema.reproduce`; the leaf rules (type, range, choices, finite floats) in
`loramcl.schema.fields`; the values owned by Lightning, torch and transformers are judged by those
libraries themselves (`loramcl.schema.library`, `libraries=True`). Each check raises
`loramcl.errors.ConfigError` with one line that names the key, the value and what is allowed:
`lora.alpha must be a finite number > 0, got inf`.

The Hydra callback (`loramcl.hydra_checks`) runs these before Hydra creates or writes any run
folder; the runners run them again on configs composed outside Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from loramcl.errors import ConfigError
from loramcl.schema import groups as g
from loramcl.schema.errors import show, validate
from loramcl.schema.values import plain

__all__ = ["TrainSettings", "plain", "train_settings", "validate_train", "validate_eval", "validate_reproduce", "check_train_libraries"]

TRAIN_GROUPS = ("task", "data", "model", "mcl", "lora", "optim", "trainer", "logger", "callbacks", "paths", "extras")


def _group(values: dict, name: str) -> Any:
    value = values.get(name)
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{name} must be a group of keys, got {show(value)}")
    return value


@dataclass(frozen=True)
class TrainSettings:
    """A train.py config, validated: one typed object per group."""

    top: g.TrainTop
    mcl: g.MCLSchema
    lora: g.LoRASchema
    data: Optional[g.DataSchema] = None
    model: Optional[g.ModelSchema] = None
    task: Optional[g.TaskSchema] = None
    optim: Optional[g.OptimSchema] = None
    trainer: Optional[g.TrainerSchema] = None
    callbacks: dict[str, Any] = field(default_factory=dict)
    loggers: dict[str, Any] = field(default_factory=dict)
    paths: Optional[g.PathsSchema] = None
    extras: Optional[g.ExtrasSchema] = None
    raw: dict = field(default_factory=dict, repr=False)  # the resolved values the objects came from
    training: bool = True  # False: a run's config rebuilt for evaluation (model and data only)

    # ---------------------------------------------------------------- what the runners ask of it
    def node(self, group: str) -> dict:
        """A group's resolved values as given (`_target_` nodes: what `hydra.utils.instantiate` builds)."""
        value = self.raw.get(group)
        return value if isinstance(value, dict) else {}

    def mcl_config(self, num_hypotheses: Optional[int] = None) -> Any:
        """The core's MCLConfig (K = `num_hypotheses` when given)."""
        from loramcl.config import MCLConfig

        values = dict(self.node("mcl"))
        if num_hypotheses is not None:
            values["num_hypotheses"] = num_hypotheses
        validate(g.MCLSchema, values, "mcl")
        return MCLConfig(**values)

    def lora_config(self) -> Any:
        """The core's LoRAConfig."""
        from loramcl.config import LoRAConfig

        return LoRAConfig(**self.node("lora"))

    def replace(self, **groups: dict) -> "TrainSettings":
        """A validated copy with some keys of some groups replaced: `replace(lora={"r": 4})`."""
        values = {**self.raw}
        for name, update in groups.items():
            values[name] = {**self.node(name), **update} if isinstance(update, dict) else update
        return validate_train(values, training=self.training)

    @property
    def output_dir(self) -> Optional[Path]:
        """The job's run folder (created), or None for a config composed outside a Hydra run."""
        folder = self.paths.output_dir if self.paths is not None else None
        if not folder:
            return None
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        return path


def train_settings(cfg: Any, training: bool = True) -> TrainSettings:
    """`cfg` validated (a composed config or a plain dict), or `cfg` itself when it already is."""
    return cfg if isinstance(cfg, TrainSettings) else validate_train(cfg, training=training)


def _targets(values: Optional[dict], name: str, table: dict) -> dict[str, Any]:
    out = {}
    for key, node in (values or {}).items():
        if node is None:
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{name}.{key} must be a group of keys with a _target_, got {show(node)}")
        out[key] = validate(g.schema_for_target(node.get("_target_"), table), node, f"{name}.{key}")
    return out


def validate_train(cfg: Any, training: bool = True, libraries: bool = False, lenient: bool = False) -> TrainSettings:
    """Every value of a train.py config. `training=False` (a run's config rebuilt for evaluation):
    the model and data groups only. `libraries=True`: also ask Lightning, torch and transformers
    (`check_train_libraries`). `lenient=True`: interpolations that do not resolve are left out
    (scripts/plan_memory.py plans configs no run uses as they are)."""
    values = plain(cfg, lenient=lenient) if isinstance(cfg, DictConfig) else dict(cfg)
    values.pop("hydra", None)
    if training:  # top-level values first: groups interpolate them (data.seed: ${seed})
        top = validate(g.TrainTop, {k: v for k, v in values.items() if k not in TRAIN_GROUPS}, "")
    mcl = validate(g.MCLSchema, _group(values, "mcl") or {}, "mcl")
    lora = validate(g.LoRASchema, _group(values, "lora") or {}, "lora")
    # the model before the data: data.processor interpolates model.name_or_path, so a bad one is named as it was given
    model = validate(g.ModelSchema, _group(values, "model"), "model") if values.get("model") is not None else None
    data = validate(g.DataSchema, _group(values, "data"), "data") if values.get("data") is not None else None
    if not training:
        return TrainSettings(top=g.TrainTop(), mcl=mcl, lora=lora, data=data, model=model, raw=values, training=False)
    task = validate(g.TaskSchema, _group(values, "task"), "task") if values.get("task") is not None else None
    optim = validate(g.OptimSchema, _group(values, "optim"), "optim") if values.get("optim") is not None else None
    trainer = validate(g.TrainerSchema, _group(values, "trainer"), "trainer") if values.get("trainer") is not None else None
    settings = TrainSettings(
        top=top, mcl=mcl, lora=lora, data=data, model=model, task=task, optim=optim, trainer=trainer,
        callbacks=_targets(_group(values, "callbacks"), "callbacks", g.CALLBACK_SCHEMAS),
        loggers=_targets(_group(values, "logger"), "logger", g.LOGGER_SCHEMAS),
        paths=validate(g.PathsSchema, _group(values, "paths") or {}, "paths"),
        extras=validate(g.ExtrasSchema, _group(values, "extras") or {}, "extras"),
        raw=values)
    _train_relations(settings)
    if libraries:
        check_train_libraries(settings)
    return settings


def _train_relations(s: TrainSettings) -> None:
    """Relations between groups."""
    if s.trainer is not None and s.trainer.max_steps == -1 and s.trainer.max_epochs in (None, -1):
        raise ConfigError("trainer.max_steps=-1 and trainer.max_epochs="
                          f"{s.trainer.max_epochs} train forever: set one of them")


def check_train_libraries(s: TrainSettings, trainer: bool = True) -> None:
    """Ask the libraries: every `_target_` node's keys against its signature, then the Trainer
    (`trainer=False`: not constructed), the optimizer and scheduler, and the bilingual runner's
    generation values."""
    from loramcl.schema import library

    raw = s.raw
    for name in ("data", "model"):
        if isinstance(raw.get(name), dict):
            skip = ("auto_pretrain", "config_class", "model_class") if name == "model" else ()
            library.check_signature(raw[name], name, skip=skip)
    for group in ("callbacks", "logger"):
        for key, node in (raw.get(group) or {}).items():
            if isinstance(node, dict):
                library.check_signature(node, f"{group}.{key}")
    library.check_model_config(raw.get("model"))
    optim = raw.get("optim") or {}
    for key in ("optimizer", "scheduler"):
        if isinstance(optim.get(key), dict):
            library.check_signature(optim[key], f"optim.{key}")
    probe_trainer, trainer = trainer, raw.get("trainer")
    if isinstance(trainer, dict):
        library.check_signature(trainer, "trainer")
        if isinstance(trainer.get("strategy"), dict):
            library.check_signature(trainer["strategy"], "trainer.strategy")
        if probe_trainer:
            library.probe_trainer(trainer)
    library.probe_optimizer(optim)
    task = raw.get("task") or {}
    library.probe_generation(task.get("generation"), "task.generation")


def validate_eval(cfg: Any, libraries: bool = False) -> Any:
    from loramcl.schema.evaluation import validate_eval as run

    return run(cfg, libraries)


def validate_reproduce(cfg: Any) -> Any:
    from loramcl.schema.reproduce import validate_reproduce as run

    return run(cfg)
