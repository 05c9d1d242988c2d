"""A table config (configs/table/<name>.yaml) turned into the work it needs: trainings and evaluations.

Every row of a table is a training experiment plus overrides, and a list of evaluation methods
(decoding configs). `plan_table` composes each row's real training config through Hydra (the same
composition `train.py` does), identifies the training by its key (`loramcl.identity`: a hash of what
changes the trained adapters, so two rows, or two tables, that train the same thing share one run) and its evaluations by
(training, eval.py overrides, decoding). Rows with `groups` run once per group (dataset), with
"{data}" in the row's experiment replaced by the group's data name.

A scale (configs/scale/) maps the rows onto other settings: `paper` keeps them, `demo` puts every row
onto the CPU demo of its dataset (synthetic data, tiny bases, a few steps) for a rehearsal.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from loramcl.errors import ConfigError
from loramcl.identity import training_key

KINDS = ("eval", "toy", "bilingual")  # where a table's values come from (see loramcl.reproduce.results)
LAYOUTS = ("long", "pivot")


@dataclass(frozen=True)
class Training:
    """One train.py job: its overrides, its identity and where its run folder goes."""

    key: str
    overrides: tuple[str, ...]  # train.py overrides, experiment first
    task_name: str
    runner: str  # the config's task.name: finetune | toy_markov | bilingual
    data: str  # the data config's name (messages)

    @property
    def finished_marker(self) -> str:
        """The file a run writes last: metrics.json (finetune) or summary.json (toy, bilingual)."""
        return "metrics.json" if self.runner == "finetune" else "summary.json"

    @property
    def resumes(self) -> bool:
        """Whether its runner continues from a checkpoint (finetune) or always starts afresh."""
        return self.runner == "finetune"

    def run_dir(self, log_dir: Path) -> Path:
        return Path(log_dir) / self.task_name / "runs" / f"reproduce-{self.key}"

    def describe(self) -> str:
        return " ".join(self.overrides)


@dataclass(frozen=True)
class Evaluation:
    """One eval.py job: a decoding of one training's model with some eval.py overrides."""

    training: Training
    decoding: str
    overrides: tuple[str, ...]  # eval.py overrides other than ckpt_path / decoding (model_name, max_items, ...)
    key: str = ""  # its resolved decoding / generation settings (`loramcl.identity.evaluation_key`)

    @property
    def sweep(self) -> str:
        """The eval.py multirun it is part of, (training, eval.py overrides) hashed: the evaluations of
        one sweep run in one `eval.py -m` call and are found in MLflow by this value (tag `SWEEP_TAG`)
        plus their `eval.decoding` param."""
        text = json.dumps([self.training.key, sorted(self.overrides)])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Row:
    name: str  # the row's key in the table config
    label: str
    section: Optional[str]  # its dataset in tables with `groups`, else its `section` (LaTeX section, plot panel)
    training: Training
    evaluations: list[Evaluation]
    # the paper's figures: {metric: value}, or per method {decoding: {metric: value}} (both may mix)
    paper: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # plot fields (series, params, ...)

    @property
    def id(self) -> str:
        return f"{self.name}/{self.section}" if self.section else self.name

    def paper_values(self, decoding: str = "") -> dict[str, float]:
        """The paper's figures for this row and method (row-wide ones, overridden by the method's)."""
        values = {k: float(v) for k, v in self.paper.items() if not isinstance(v, dict)}
        values.update({k: float(v) for k, v in (self.paper.get(decoding) or {}).items()})
        return values


@dataclass
class Table:
    name: str
    title: str
    kind: str
    layout: str
    metrics: list[str]
    plot: dict[str, Any]
    rows: list[Row]
    scale: str
    experiment: str  # MLflow experiment of the evaluations
    results_dir: Path
    paper_note: Optional[str] = None
    configs: dict[str, DictConfig] = field(default_factory=dict)  # training key -> composed config

    def trainings(self) -> list[Training]:
        """Each distinct training once, in the order rows first need it."""
        seen: dict[str, Training] = {}
        for row in self.rows:
            seen.setdefault(row.training.key, row.training)
        return list(seen.values())

    def evaluations(self, training: Optional[Training] = None) -> list[Evaluation]:
        """Each distinct evaluation once (of one training, or of all)."""
        seen: dict[tuple, Evaluation] = {}
        for row in self.rows:
            for ev in row.evaluations:
                if training is None or ev.training.key == training.key:
                    seen.setdefault((ev.sweep, ev.decoding), ev)
        return list(seen.values())


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple, ListConfig)):
        raise ConfigError(f"{what} must be a list of strings, got {value!r}")
    return [str(v) for v in value]


def check_table_config(table: DictConfig) -> None:
    """The table file's own keys, before anything is composed."""
    name = table.get("name")
    if not name:
        raise ConfigError("table: every configs/table/*.yaml needs a name")
    if table.get("kind", "eval") not in KINDS:
        raise ConfigError(f"table {name}: kind must be one of {', '.join(KINDS)}, got {table.kind!r}")
    if table.get("layout", "long") not in LAYOUTS:
        raise ConfigError(f"table {name}: layout must be one of {', '.join(LAYOUTS)}, got {table.layout!r}")
    if not table.get("rows"):
        raise ConfigError(f"table {name} has no rows")
    if table.get("layout") == "pivot" and len(table.get("metrics") or []) != 1:
        raise ConfigError(f"table {name}: layout pivot shows exactly one metric, got metrics={list(table.metrics)}")
    from loramcl.metrics.registry import METRICS

    if table.get("kind", "eval") != "toy":
        unknown = [m for m in table.get("metrics") or [] if m not in METRICS]
        if unknown:
            raise ConfigError(f"table {name}: unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRICS)})")
    for row_name, row in table.rows.items():
        if not row.get("experiment"):
            raise ConfigError(f"table {name}, row {row_name}: no experiment")
        _strings(row.get("overrides"), f"table {name}, row {row_name}: overrides")


def compose_training(compose: Any, overrides: list[str]) -> tuple[DictConfig, str]:
    """(train.py's config for these overrides, the name of its data config). The config is what
    train.py saves as .hydra/config.yaml (no `hydra` node)."""
    cfg = compose("train", overrides=overrides, return_hydra_config=True)
    data_choice = str(cfg.hydra.runtime.choices.get("data"))
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, data_choice


def check_methods(table: DictConfig, known: set[str]) -> None:
    """Every method a row names is a decoding config (configs/decoding/<name>.yaml)."""
    for row_name, row in table.rows.items():
        methods = _strings(row.get("methods", table.get("methods")), f"table {table.name}, row {row_name}: methods")
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise ConfigError(f"table {table.name}, row {row_name}: unknown decoding(s) {', '.join(unknown)} "
                              f"(configs/decoding/ has: {', '.join(sorted(known))})")


def eval_key(compose: Any, decoding: str, overrides: tuple[str, ...], cache: dict) -> str:
    """The settings key of eval.py with these overrides (its config composed once per distinct call)."""
    from loramcl.identity import EVAL_KEYS, evaluation_key

    if (decoding, overrides) not in cache:
        try:
            cfg = compose("eval", overrides=["ckpt_path=.", f"decoding={decoding}", *overrides])
        except Exception as err:  # hydra's composition errors: one line
            raise ConfigError(f"cannot compose eval.py decoding={decoding} {' '.join(overrides)}: "
                              f"{str(err).splitlines()[0]}") from None
        values = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg.get(k)) else cfg.get(k)
                  for k in EVAL_KEYS}
        cache[(decoding, overrides)] = evaluation_key(values)
    return cache[(decoding, overrides)]


def plan_table(cfg: DictConfig, compose: Any, decodings: Optional[set[str]] = None) -> Table:
    """The table of `cfg.table` at `cfg.scale`, every row's training config composed with `compose`
    (hydra.compose inside an initialised config dir); `decodings`: the known decoding config names."""
    table = cfg.table
    check_table_config(table)
    if decodings is not None:
        check_methods(table, decodings)
    scale = cfg.scale
    scale_data = scale.get("data") or {}
    groups = table.get("groups") or {None: {}}
    default_methods = table.get("methods")
    experiment = f"{scale.prefix}_{table.name}"
    rows: list[Row] = []
    configs: dict[str, DictConfig] = {}
    eval_keys: dict[tuple, str] = {}
    extra_train = _strings(cfg.get("train_overrides"), "train_overrides")
    extra_eval = _strings(scale.get("eval"), "scale.eval") + _strings(cfg.get("eval_overrides"), "eval_overrides")
    for row_name, row in table.rows.items():
        for group, group_cfg in groups.items():
            where = f"table {table.name}, row {row_name}" + (f" ({group})" if group else "")
            experiment_name = str(row.experiment).format(**(group_cfg or {}))
            overrides = [f"experiment={experiment_name}", *_strings(row.get("overrides"), f"{where}: overrides")]
            try:
                base, data_name = compose_training(compose, overrides)
                scaled = _strings(scale_data.get(data_name), f"scale.data.{data_name}") if scale_data else []
                if scale_data and data_name not in scale_data:
                    raise ConfigError(f"scale {scale.name} has no overrides for data {data_name!r} "
                                      f"(known: {', '.join(scale_data)})")
                full = overrides + scaled + extra_train
                if scale.get("task_prefix"):
                    full.append(f"task_name={scale.task_prefix}{base.task_name}")
                train_cfg = compose_training(compose, full)[0] if full != overrides else base
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            except Exception as err:  # hydra's composition errors: one line naming the row
                raise ConfigError(f"{where}: cannot compose train.py {' '.join(overrides)}: "
                                  f"{str(err).splitlines()[0]}") from None
            # devices: auto counts slurm.gpus processes (the same key for --slurm, --status and --collect)
            training = Training(training_key(train_cfg, gpus=int(cfg.slurm.gpus)), tuple(full), str(train_cfg.task_name),
                                str(train_cfg.task.name), data_name)
            configs.setdefault(training.key, train_cfg)
            methods = row.get("methods", default_methods) or []
            eval_overrides = ([f"model_name={row.model_name}"] if row.get("model_name") else []) + \
                _strings(row.get("eval_overrides"), f"{where}: eval_overrides") + extra_eval
            if table.get("kind", "eval") == "toy":
                methods = []
            evaluations = [Evaluation(training, str(m), tuple(eval_overrides),
                                      eval_key(compose, str(m), tuple(eval_overrides), eval_keys)) for m in methods]
            paper = OmegaConf.to_container(row.paper) if row.get("paper") else {}
            if group is not None and paper:
                paper = paper.get(group) or {}
            fields = {k: row[k] for k in ("series", "params") if row.get(k) is not None}
            section = group if group is not None else row.get("section")  # a group without expansion
            rows.append(Row(str(row_name), str(row.get("label") or row_name), section, training, evaluations,
                            paper, fields))
    results_dir = Path(str(cfg.results_dir)) / (table.name if scale.prefix == "table" else experiment)
    return Table(str(table.name), str(table.get("title") or table.name), str(table.get("kind", "eval")),
                 str(table.get("layout", "long")), [str(m) for m in table.get("metrics") or []],
                 dict(table.get("plot") or {}), rows, str(scale.name), experiment, results_dir,
                 table.get("paper_note"), configs)
