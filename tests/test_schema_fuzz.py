"""Fuzzed bad values for the keys of every config (hypothesis): one line naming the key, nothing built, nothing touched.

The rules below (`TRAIN`, `EVAL`, `REPRODUCE`) are this test's own statement of what each key
accepts, written from what the code does with the value (not read from the schema): hypothesis
draws values that break them (wrong type, out of range, inf / nan, empty, unknown choice) and values
that keep them, for random keys.

- In process (hundreds of examples): the composed default config with one key changed goes through
  the project's up-front checks (`preflight.check_config`, eval.py's `check_eval_values`): a bad value
  must raise ConfigError naming the key, a good one must pass.
- Through the real command lines (a budgeted handful per run, `LORAMCL_FUZZ_CLI_EXAMPLES` or the
  `slow` marker for more): exit status non-zero, exactly one stderr line, `error: ...` naming the key,
  no model built, and no byte changed in a log folder that holds a finished run (sha256 of every file
  before and after), nor a new file in it.
- Coverage: every key the schema types is listed here (a key added to the schema without a rule
  here fails `test_every_schema_key_has_a_fuzz_rule`), and unknown keys are refused in every group.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from helpers import ROOT, compose_train, timeout

NAN_SAFE = dict(allow_nan=True, allow_infinity=True)


@dataclass(frozen=True)
class Rule:
    """What one key accepts: kind int / float / choice / bool, bounds, null, extra accepted values."""

    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    also: tuple = ()
    options: tuple = ()

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if any(type(value) is type(a) and value == a for a in self.also):
            return True
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return any(type(value) is type(o) and value == o for o in self.options)
        if isinstance(value, bool):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if self.kind == "float" and not (isinstance(value, (int, float)) and math.isfinite(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True


def Int(low=None, high=None, nullable=False, also=()):
    return Rule("int", low, high, nullable=nullable, also=also)


def Flt(low=None, high=None, low_open=False, high_open=False, nullable=False):
    return Rule("float", low, high, low_open, high_open, nullable)


def Choice(*options, nullable=False):
    return Rule("choice", options=options, nullable=nullable)


BOOL = Rule("bool")
SEED = Int(0, 2**32 - 1)

# train.py on the toy (transition1) and on a demo task (demo_translation_mcl): key -> rule
TRAIN = {
    "seed": SEED,
    "mcl.num_hypotheses": Int(1),
    "mcl.mode": Choice("wta", "relaxed-wta", "annealed-wta", "random-wta", "moe"),
    "mcl.epsilon": Flt(0, 1, high_open=True),
    "mcl.temperature_init": Flt(0, low_open=True),
    "mcl.temperature_min": Flt(0, low_open=True),
    "mcl.temperature_decay": Flt(0, 1, low_open=True),
    "mcl.schedule_unit": Choice("step", "epoch"),
    "lora.r": Int(1),
    "lora.alpha": Flt(0, low_open=True),
    "lora.dropout": Flt(0, 1, high_open=True),
    "lora.adapt_encoders": BOOL,
    "lora.implementation": Choice("fast", "reference"),
    "data.batch_size": Int(1),
    "data.val_batch_size": Int(1),
    "data.num_val_sequences": Int(1),
    "data.seq_len": Int(2),
    "optim.optimizer.lr": Flt(0, low_open=True),
    "optim.optimizer.weight_decay": Flt(0),
    "optim.scheduler.warmup_ratio": Flt(0, 1, high_open=True),
    "optim.scheduler.min_lr_ratio": Flt(0, 1),
    "trainer.max_steps": Int(1, also=(-1,)),
    "trainer.check_val_every_n_epoch": Int(1, nullable=True),
    "trainer.log_every_n_steps": Int(1),
    "trainer.accumulate_grad_batches": Int(1),
    "trainer.num_sanity_val_steps": Int(0, also=(-1,)),
    "trainer.gradient_clip_val": Flt(0, low_open=True, nullable=True),
    "trainer.enable_model_summary": BOOL,
    "callbacks.collapse.window": Int(1, nullable=True),
    "callbacks.collapse.min_share": Flt(0, 1, high_open=True, nullable=True),
    "callbacks.collapse.duplicate_tolerance": Flt(0, nullable=True),
    "callbacks.collapse.duplicate_growth": Flt(0),
    "callbacks.collapse.max_temperature": Flt(0, low_open=True),
    "callbacks.collapse.action": Choice("warn", "stop"),
    "callbacks.collapse.plot": BOOL,
    "callbacks.model_checkpoint.every_n_train_steps": Int(0, nullable=True),
    "callbacks.model_checkpoint.save_top_k": Int(-1),
    "callbacks.model_checkpoint.mode": Choice("min", "max"),
    "extras.num_threads": Int(1, nullable=True),
    "extras.print_config": BOOL,
    "task.train_mle": BOOL,
}
TRAIN_DEMO = {  # keys of the HDF5 tasks (demo_translation_mcl)
    "data.num_workers": Int(0),
    "data.max_train_items": Int(1, nullable=True),
    "data.max_val_items": Int(1, nullable=True),
    "data.max_source_tokens": Int(1),
    "data.max_target_tokens": Int(2),
    "data.references": Choice("random", "all", "first"),
    "data.val_references": Choice("random", "all", "first"),
    "model.gradient_checkpointing": BOOL,
    "model.dtype": Choice("fp32", "float32", "bf16", "bfloat16", "fp16", "float16", nullable=True),
}
TRAIN_TEXT = {  # keys of data=text (experiment=text)
    "data.chat_template": Choice("auto", True, False),
    "data.format": Choice("auto", "json", "csv", "parquet"),
}
EVAL = {
    "seed": SEED,
    "max_items": Int(1, nullable=True),
    "batch_size": Int(1, nullable=True),
    "num_candidates": Int(1, nullable=True),
    "num_hypotheses": Int(1, nullable=True),
    "devices": Int(1),
    "skip_unsuited": Choice("auto", True, False),
    "generation.max_new_tokens": Int(1),
    "generation.repetition_penalty": Flt(0, low_open=True),
    "generation.length_penalty": Flt(),
    "metrics.oracle_nll": BOOL,
    "metrics.semantic": Choice("auto", True, False),
    "metrics.spice": Choice("auto", True, False),
    "metrics.embedding_batch_size": Int(1),
    "mlflow.enabled": BOOL,
}
REPRODUCE = {
    "slurm.gpus": Int(0),
    "slurm.cpus_per_task": Int(1),
    "slurm.max_parallel": Int(1, nullable=True),
    "retrain_other_code": BOOL,
}


# ------------------------------------------------------------------------------------ values
def values_for(rule: Rule, good: bool) -> st.SearchStrategy:
    """Values that break `rule` (good=False) or keep it (good=True)."""
    if good:
        if rule.kind == "bool":
            return st.booleans()
        if rule.kind == "choice":
            return st.sampled_from(rule.options)
        low = rule.low if rule.low is not None else -1e3
        high = rule.high if rule.high is not None else (low + 1e3 if rule.kind == "float" else int(low) + 1000)
        if rule.kind == "int":
            return st.integers(int(math.ceil(low)), int(high)).filter(rule.accepts)
        return st.floats(low, high, exclude_min=rule.low_open, exclude_max=rule.high_open, allow_nan=False)
    anything = st.one_of(
        st.floats(**NAN_SAFE), st.integers(-10**6, 10**6), st.booleans(), st.none(),
        st.text(alphabet="abcxyz_-", min_size=0, max_size=6), st.sampled_from([[], [1], {"a": 1}]),
        st.sampled_from([math.inf, -math.inf, math.nan, 0, -1, 0.5, 1.5, 2**33]))
    return anything.filter(lambda v: not rule.accepts(v))


def set_key(values: dict, key: str, value: Any) -> dict:
    node = values
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return values


def plain(cfg) -> dict:
    out = OmegaConf.to_container(cfg, resolve=False)
    out.pop("hydra", None)
    return out


@pytest.fixture(scope="module")
def train_bases() -> dict:
    return {"toy": plain(compose_train()), "demo": plain(compose_train("experiment=demo_translation_mcl")),
            "text": plain(compose_train("experiment=text", "data.splits.train=/nowhere/train.jsonl",
                                        "data.splits.val=/nowhere/val.jsonl", "model.name_or_path=/nowhere/model"))}


def _table(base: str) -> dict:
    return TRAIN | (TRAIN_DEMO if base in ("demo", "text") else {}) | (TRAIN_TEXT if base == "text" else {})


@pytest.fixture(scope="module")
def eval_base() -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=["ckpt_path=/nowhere", "decoding=mcl_beam1"])
    return plain(cfg)


def check_train(values: dict) -> None:
    from loramcl.preflight import check_config

    cfg = OmegaConf.create(values)
    cfg.paths.output_dir = None  # no Hydra run here
    check_config(cfg)


def check_eval(values: dict) -> None:
    from loramcl.evaluation.main import check_eval_values

    check_eval_values(OmegaConf.create(values))


def assert_names(err: BaseException, key: str) -> None:
    message = str(err)
    assert "\n" not in message, message
    assert key in message, f"the error does not name {key}: {message}"


FUZZ = settings(max_examples=int(os.environ.get("LORAMCL_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much,
                                       HealthCheck.too_slow])


# ------------------------------------------------------------------------------------ in process
@FUZZ
@given(data=st.data())
def test_bad_train_values_are_refused_naming_the_key(train_bases, data):
    from loramcl.errors import ConfigError

    base = data.draw(st.sampled_from(["toy", "demo", "text"]))
    table = _table(base)
    key = data.draw(st.sampled_from(sorted(table)))
    if base != "toy" and key in ("data.num_val_sequences", "data.seq_len", "task.train_mle"):
        return  # keys of the toy only
    value = data.draw(values_for(table[key], good=False), label=key)
    values = set_key(OmegaConf.to_container(OmegaConf.create(train_bases[base])), key, value)
    with pytest.raises(ConfigError) as info:
        check_train(values)
    assert_names(info.value, key)


@FUZZ
@given(data=st.data())
def test_good_train_values_pass(train_bases, data):
    base = data.draw(st.sampled_from(["toy", "demo", "text"]))
    table = _table(base)
    key = data.draw(st.sampled_from(sorted(table)))
    if base != "toy" and key in ("data.num_val_sequences", "data.seq_len", "task.train_mle"):
        return
    value = data.draw(values_for(table[key], good=True), label=key)
    values = set_key(OmegaConf.to_container(OmegaConf.create(train_bases[base])), key, value)
    if key == "mcl.mode" and value == "moe":
        values["mcl"]["num_hypotheses"] = 2
    if key == "trainer.max_steps" and value == -1:
        values["trainer"]["max_epochs"] = 1
    if key == "mcl.num_hypotheses" and values["mcl"]["mode"] == "moe":
        assume(value >= 2)
    check_train(values)


@FUZZ
@given(data=st.data())
def test_bad_eval_values_are_refused_naming_the_key(eval_base, data):
    from loramcl.errors import ConfigError

    key = data.draw(st.sampled_from(sorted(EVAL)))
    value = data.draw(values_for(EVAL[key], good=False), label=key)
    values = set_key(OmegaConf.to_container(OmegaConf.create(eval_base)), key, value)
    with pytest.raises(ConfigError) as info:
        check_eval(values)
    assert_names(info.value, key)


@FUZZ
@given(data=st.data())
def test_good_eval_values_pass(eval_base, data):
    key = data.draw(st.sampled_from(sorted(EVAL)))
    value = data.draw(values_for(EVAL[key], good=True), label=key)
    check_eval(set_key(OmegaConf.to_container(OmegaConf.create(eval_base)), key, value))


IDENTIFIER = st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True)


@FUZZ
@given(data=st.data())
def test_unknown_keys_are_refused_in_every_group(train_bases, data):
    from loramcl.errors import ConfigError

    group = data.draw(st.sampled_from(["mcl", "lora", "data", "trainer", "optim.optimizer", "callbacks.collapse",
                                       "callbacks.model_checkpoint", "paths", "extras", "model.config", ""]))
    name = data.draw(IDENTIFIER)
    values = OmegaConf.to_container(OmegaConf.create(train_bases["toy"]))
    node = values
    for part in [p for p in group.split(".") if p]:
        node = node[part]
    assume(name not in node)
    node[name] = 1
    from loramcl.preflight import check_before_build

    cfg = OmegaConf.create(values)
    cfg.paths.output_dir = None
    with pytest.raises(ConfigError) as info:  # the schema's groups, the libraries' signatures, the meta model
        check_before_build(cfg)
    assert name in str(info.value), str(info.value)


def test_every_schema_key_has_a_fuzz_rule():
    """A key the schema types without a rule here is not fuzzed: list it (or say why not, below)."""
    from loramcl.schema import evaluation, groups

    not_fuzzed = {  # texts, mappings, paths and library-owned values, checked by other tests
        "target", "partial", "name", "root", "processor", "prompt", "src_lang", "tgt_lang", "prepare_hint",
        "auto_prepare", "splits", "init", "transitions", "weights", "name_or_path", "model_class", "config_class",
        "config", "seed", "accelerator", "devices", "num_nodes", "precision", "strategy", "plugins",
        "default_root_dir", "dirpath", "filename", "monitor", "train_time_interval", "runner", "generation",
        "root_dir", "data_dir", "log_dir", "output_dir", "task_name", "ckpt_path", "optimized_metric",
        "target_modules", "exclude_modules", "betas", "eps", "val_check_interval", "max_epochs", "min_steps",
        "min_epochs", "limit_train_batches", "limit_val_batches", "fast_dev_run", "deterministic", "benchmark",
        "enable_progress_bar", "enable_checkpointing", "use_distributed_sampler", "gradient_clip_algorithm",
        "save_last", "every_n_epochs", "auto_insert_metric_name", "save_weights_only", "verbose",
        "logging_interval", "experiment_name", "tracking_uri", "artifact_location", "log_model", "run_name",
        "save_dir", "default_hp_metric", "ignore_warnings", "flush_denormal", "mle_rank", "theory",
        "num_candidates", "do_sample", "num_beams", "max_new_tokens", "repetition_penalty", "length_penalty",
        "num_train_batches",  # the toy's is ${trainer.max_steps}: fuzzed through trainer.max_steps
        "auto_pretrain",
        # data=text's field names, Hub names and prompt texts (malformed files: tests/test_text_task.py)
        "hub_dataset", "hub_config", "input_field", "reference_field", "id_field", "system_prompt", "separator",
    }
    listed = {k.rsplit(".", 1)[-1] for k in [*TRAIN, *TRAIN_DEMO, *TRAIN_TEXT, *EVAL, *REPRODUCE]}
    models = [groups.MCLSchema, groups.LoRASchema, groups.DataSchema, groups.ModelSchema, groups.OptimizerSchema,
              groups.SchedulerSchema, groups.TrainerSchema, groups.CollapseSchema, groups.CheckpointSchema,
              groups.LRMonitorSchema, groups.MLflowLoggerSchema, groups.TensorBoardSchema, groups.PathsSchema,
              groups.ExtrasSchema, groups.TaskSchema, groups.TrainTop]
    missing = sorted({f"{m.__name__}.{name}" for m in models for name in m.model_fields
                      if name not in listed and name not in not_fuzzed})
    assert not missing, f"schema keys without a fuzz rule: {missing}"
    eval_fields = set(evaluation.EvalTop.model_fields) - {"generation", "metrics", "mlflow", "paths", "decoding",
                                                          "local", "task_name", "ckpt_path", "model_name",
                                                          "train_config", "backbone", "references_language",
                                                          "accelerator"}
    assert eval_fields <= {k.split(".")[0] for k in EVAL}, sorted(eval_fields - {k.split(".")[0] for k in EVAL})


# ------------------------------------------------------------------------------------ through the CLIs
def hydra_text(value: Any) -> str:
    """A value as a Hydra override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf else repr(value))
    if isinstance(value, str):
        return "''" if value == "" else f"'{value}'"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(hydra_text(v) for v in value) + "]"
    return str(value)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "dir"
            for f in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished_log_dir(tmp_path_factory) -> Path:
    """A log folder holding a finished toy run (4 steps), which no refused command may touch."""
    logs = tmp_path_factory.mktemp("fuzz_logs")
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), f"paths.log_dir={logs}", "logger=none",
                           "trainer.max_steps=4", "trainer.val_check_interval=2", "extras.print_config=false",
                           "hydra.run.dir=" + str(logs / "toy_run")], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout(600))
    assert done.returncode == 0, done.stderr[-2000:]
    return logs


CLI_EXAMPLES = int(os.environ.get("LORAMCL_FUZZ_CLI_EXAMPLES", "8"))  # each refused in about a second


def run_refused(script: str, args: list[str], key: str, logs: Path, cwd: Path) -> None:
    before = tree_digest(logs)
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout(240), env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, (args, done.stdout[-1000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr[-3000:])
    assert key in lines[0], (key, lines[0])
    for built in ("Loading weights", "adapted layers", "Traceback"):
        assert built not in done.stdout + done.stderr, (args, built)
    assert tree_digest(logs) == before, f"{args} changed {logs}"


def _cli_case(table: dict, data) -> tuple[str, Any]:
    key = data.draw(st.sampled_from(sorted(table)))
    value = data.draw(values_for(table[key], good=False).filter(
        lambda v: not isinstance(v, (dict, list)) and not (isinstance(v, str) and v.strip() in ("", "null"))), label=key)
    return key, value


@settings(max_examples=CLI_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(data=st.data())
def test_train_cli_refuses_fuzzed_values(finished_log_dir, tmp_path, data):
    key, value = _cli_case(TRAIN, data)
    run_refused("train.py", [f"paths.log_dir={finished_log_dir}", "logger=none", f"{key}={hydra_text(value)}"],
                key, finished_log_dir, tmp_path)


@settings(max_examples=CLI_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(data=st.data())
def test_eval_cli_refuses_fuzzed_values(finished_log_dir, tmp_path, data):
    key, value = _cli_case(EVAL, data)
    run_refused("eval.py", [f"paths.log_dir={finished_log_dir}", f"ckpt_path={finished_log_dir / 'toy_run'}",
                            "decoding=mcl_beam1", f"{key}={hydra_text(value)}"], key, finished_log_dir, tmp_path)


@pytest.mark.slow
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(data=st.data())
def test_train_cli_refuses_fuzzed_values_many(finished_log_dir, tmp_path, data):
    key, value = _cli_case(TRAIN | TRAIN_DEMO, data)
    demo = ["experiment=demo_translation_mcl"] if key in TRAIN_DEMO else []
    run_refused("train.py", [*demo, f"paths.log_dir={finished_log_dir}", "logger=none", f"{key}={hydra_text(value)}"],
                key, finished_log_dir, tmp_path)


@settings(max_examples=CLI_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(data=st.data())
def test_reproduce_cli_refuses_fuzzed_values(finished_log_dir, tmp_path, data):
    key, value = _cli_case(REPRODUCE, data)
    run_refused("scripts/reproduce.py", ["table=toy", "scale=demo", f"paths.log_dir={finished_log_dir}",
                                         f"{key}={hydra_text(value)}", "--dry-run"], key, finished_log_dir, tmp_path)
