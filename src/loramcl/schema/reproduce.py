"""The schema of scripts/reproduce.py's config (configs/reproduce.yaml, configs/table/, configs/scale/)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from pydantic import ConfigDict

from loramcl.schema.errors import validate
from loramcl.schema.fields import Anything, Bool, Choice, Int, Mapping, Text, TextList
from loramcl.schema.groups import Group, PathsSchema

SLURM_TIME = r"(\d+-)?\d+(:\d{1,2}){0,2}"  # minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]] (sbatch --time)


class SlurmSchema(Group):
    partition: Text(nullable=True) = None
    account: Text(nullable=True) = None
    qos: Text(nullable=True) = None
    gpus: Int(0) = 1
    cpus_per_task: Int(1) = 8
    mem_per_task_gb: Int(1) = 64  # times the processes of a node
    time_train: Text(pattern=SLURM_TIME, what="a time limit as sbatch takes it (HH:MM:SS, D-HH:MM:SS)") = "24:00:00"
    time_eval: Text(pattern=SLURM_TIME, what="a time limit as sbatch takes it (HH:MM:SS, D-HH:MM:SS)") = "08:00:00"
    time_collect: Text(pattern=SLURM_TIME, what="a time limit as sbatch takes it (HH:MM:SS, D-HH:MM:SS)") = "00:30:00"
    signal: Choice("USR1", "USR2") = "USR1"
    signal_delay_s: Int(10) = 300
    max_requeues: Int(0) = 20
    max_parallel: Int(1, nullable=True, note="null: no limit") = None
    extra: TextList(empty=True) = ()
    setup: TextList(empty=True) = ()  # shell lines every job runs first (module load, conda activate)


class TableSchema(Group):
    model_config = ConfigDict(extra="allow", frozen=True)  # table-specific keys (english, french, ...)
    name: Text()
    title: Text() = None
    kind: Text() = None
    layout: Choice("long", "pivot") = "long"
    rows: Mapping(nullable=False, what="a mapping {row name: row}")
    groups: Mapping() = None
    metrics: TextList(empty=True) = ()
    methods: TextList(empty=True) = ()
    mle_methods: TextList(empty=True) = ()
    mcl_methods: TextList(empty=True) = ()
    plot: Mapping() = None
    paper_note: Text(nullable=True) = None


class ScaleSchema(Group):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: Choice("paper", "demo")
    prefix: Text() = None
    task_prefix: Anything = None
    steps: Int(1) = None
    max_items: Int(1) = None
    data: Mapping() = None
    eval: TextList(empty=True) = ()
    slurm: Mapping() = None


class ReproduceSchema(Group):
    table: TableSchema
    scale: ScaleSchema
    paths: PathsSchema = PathsSchema()
    train_overrides: TextList(empty=True, what="a list of train.py overrides key=value") = ()
    eval_overrides: TextList(empty=True, what="a list of eval.py overrides key=value") = ()
    results_dir: Text() = None
    mlflow_uri: Text() = None
    retrain_other_code: Bool() = False
    slurm: SlurmSchema = SlurmSchema()
    local: Anything = None


def validate_reproduce(cfg: Any) -> ReproduceSchema:
    from loramcl.schema.values import plain

    values = plain(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    values.pop("hydra", None)
    settings = validate(ReproduceSchema, values)
    for key in ("train_overrides", "eval_overrides"):
        for item in getattr(settings, key):
            if "=" not in item and not item.startswith("~"):
                from loramcl.errors import ConfigError

                raise ConfigError(f"{key} must be a list of overrides key=value, got {item!r} in it")
    return settings
