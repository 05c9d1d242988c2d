"""Bad input through the real command lines: one `error: ...` line, a non-zero exit, nothing built, nothing touched.

Every case of `CASES` runs one command (train.py, eval.py or a script, from a folder outside the
repository) and must
- exit with a non-zero status, printing exactly one non-empty line on stderr, `error: ...`, that
  contains the expected words (no traceback);
- stop before any model is built (no "Loading weights" / "adapted layers" in its output, no
  checkpoint written) and within a generous time bound;
- leave every file that existed before it (data folder, the run folder given as ckpt_path, the
  log folder, an export folder) byte for byte as it was (sha256).

The cases run two at a time in one module fixture (each is a short process that fails in seconds),
then one parametrized test per case checks its result. The table of the closing note (case, exit
code, seconds to the error, the line shown) is printed and written to `battery_table.md` in the
fixture's temporary folder, and to the file LORAMCL_BATTERY_TABLE names:

    LORAMCL_BATTERY_TABLE=/tmp/battery_table.md .venv/bin/python -m pytest tests/test_bad_inputs.py -q -s

The tests after the battery check the behaviours behind some cases that are not errors: a missing
synthetic split is prepared alone, the toy backbone's vocabulary follows the chains, a truncated
last.ckpt falls back to the newest readable checkpoint, exported adapters name an absolute base.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

from helpers import ROOT, TRANSLATION_ASSETS, compose_train, timeout

BUILT = ("Loading weights", "adapted layers", "Traceback")  # a backbone was loaded / adapters injected
SECONDS = 120  # per case, before timeout(): they fail in 5-15 s on 2 idle cores, a model build takes longer


@dataclass(frozen=True)
class Case:
    id: str
    script: str  # train.py, eval.py or scripts/<name>.py, relative to the repository
    args: Callable[[SimpleNamespace], list]  # the command line, from the fixture's paths
    expect: str  # words the error line must contain
    watch: tuple[str, ...] = ("data",)  # folders (attributes of the paths) whose files must not change
    needs: tuple[str, ...] = field(default=())  # attributes that must be set (e.g. a read-only folder)


def train(*overrides: str, demo: bool = True) -> Callable[[SimpleNamespace], list]:
    """train.py on the translation demo (the session's data and tiny base), or on the toy."""
    def args(p: SimpleNamespace) -> list:
        base = ["experiment=demo_translation_mcl", *TRANSLATION_ASSETS, f"paths.data_dir={p.data}"] if demo else []
        return [*base, "logger=none", "extras.print_config=false", f"paths.log_dir={p.logs}",
                *[o.format(p=p) for o in overrides]]
    return args


def evaluate(*overrides: str) -> Callable[[SimpleNamespace], list]:
    return lambda p: [f"paths.log_dir={p.logs}", "mlflow.enabled=false", "generation.max_new_tokens=4",
                      *[o.format(p=p) for o in overrides]]


def script(*args: str) -> Callable[[SimpleNamespace], list]:
    return lambda p: [a.format(p=p) for a in args]


TOY_3_STATES = "data.transitions=[[[0.1,0.9,0.0],[0.2,0.3,0.5],[0.3,0.3,0.4]],[[0.5,0.5,0.0],[0.1,0.1,0.8],[0.3,0.3,0.4]]]"

CASES = [
    # ------------------------------------------------------------ train.py: MCL / LoRA values
    Case("mcl_mode_unknown", "train.py", train("mcl.mode=best-of"), "mcl.mode must be one of"),
    Case("num_hypotheses_zero", "train.py", train("mcl.num_hypotheses=0"), "mcl.num_hypotheses must be an integer >= 1, got 0"),
    Case("lora_r_zero", "train.py", train("lora.r=0"), "lora.r must be an integer >= 1, got 0"),
    Case("lora_dropout_1.5", "train.py", train("lora.dropout=1.5"), "lora.dropout must be a finite number in [0, 1), got 1.5"),
    Case("target_modules_no_match", "train.py", train("lora.target_modules=[no_such_proj]"),
         "lora.target_modules=['no_such_proj'] matches no module of LlamaForCausalLM"),
    Case("target_modules_bad_regex", "train.py", train("lora.target_modules='(q_proj'"),
         "lora.target_modules must be a non-empty list of module-name suffixes, a valid regular expression"),
    # ------------------------------------------------------------ train.py: data, trainer, optimizer, model
    Case("batch_size_zero", "train.py", train("data.batch_size=0"), "data.batch_size must be an integer >= 1, got 0"),
    Case("data_unknown_key", "train.py", train("+data.shuffle=true"), "data has no key 'shuffle'"),
    Case("max_steps_zero", "train.py", train("trainer.max_steps=0"), "trainer.max_steps must be an integer >= 1 or -1"),
    Case("val_check_interval_zero", "train.py", train("trainer.val_check_interval=0"), "trainer.val_check_interval must be"),
    Case("val_check_interval_past_epoch", "train.py", train("trainer.val_check_interval=1000"),
         "trainer.val_check_interval=1000 steps but an epoch has only 2 training batches"),
    Case("lr_negative", "train.py", train("optim.optimizer.lr=-0.001"), "optim.optimizer.lr must be a finite number > 0"),
    # ------------------------------------------------------------ train.py: folders, files, resume
    Case("log_dir_read_only", "train.py", train("paths.log_dir={p.read_only}/logs"), "is not writable",
         watch=("data", "read_only"), needs=("read_only",)),
    Case("log_dir_under_a_file", "train.py", train("paths.log_dir={p.a_file}/logs"), "is a file, not a folder",
         watch=("data", "a_file_folder")),
    Case("data_split_missing", "train.py", train("paths.data_dir={p.data_without_val}", "data.auto_prepare=null"),
         "missing split file(s) val", watch=("data_without_val",)),
    Case("data_split_missing_autoprepare_conflict", "train.py", train("paths.data_dir={p.data_without_test}"),
         "cannot prepare the missing split(s) test", watch=("data_without_test",)),
    Case("tiny_base_missing_no_autopretrain", "train.py",
         train("model.auto_pretrain=null", "model.name_or_path={p.tmp}/no_base"), "does not exist or has no config.json"),
    Case("resume_other_k", "train.py", train("ckpt_path={p.mcl_ckpt}", "mcl.num_hypotheses=2"), "holds K=3",
         watch=("data", "mcl_run")),
    Case("resume_other_rank", "train.py", train("ckpt_path={p.mcl_ckpt}", "lora.r=4"),
         "holds K=3, r=8 adapters", watch=("data", "mcl_run")),
    Case("resume_folder_without_checkpoints", "train.py", train("ckpt_path={p.empty}"),
         "is a folder without checkpoints/: not a train.py run folder", watch=("data", "empty")),
    Case("resume_run_of_another_k", "train.py", train("ckpt_path={p.mcl_run}", "mcl.num_hypotheses=2"),
         "has no readable checkpoint of this model in checkpoints/K2/ (it has K3", watch=("data", "mcl_run")),
    Case("task_name_not_text", "train.py", train("task_name=nan"), "task_name must be a text", watch=("data",)),
    # ------------------------------------------------------------ train.py: the toy
    Case("toy_resume", "train.py", train("ckpt_path={p.mcl_ckpt}", demo=False),
         "task=toy_markov trains two models from scratch and does not resume", watch=("data", "mcl_run")),
    Case("toy_vocab_smaller_than_states", "train.py", train(TOY_3_STATES, "model.config.vocab_size=2", demo=False),
         "data.transitions have 3 states but model.config.vocab_size=2", watch=()),
    Case("toy_rows_not_stochastic", "train.py", train("data.transitions=[[[0.5,0.4],[0.2,0.8]]]", demo=False),
         "must sum to 1", watch=()),
    Case("toy_no_step_limit", "train.py", train("trainer.max_steps=-1", demo=False), "data.num_train_batches", watch=()),
    # ------------------------------------------------------------ eval.py
    Case("eval_folder_without_checkpoints", "eval.py", evaluate("ckpt_path={p.empty}"),
         "is neither a checkpoint file nor a train.py run folder"),
    Case("eval_run_without_checkpoints", "eval.py", evaluate("ckpt_path={p.run_no_ckpt}", "decoding=mcl_beam1"),
         "no checkpoint under", watch=("data", "run_no_ckpt")),
    Case("eval_unknown_decoding_key", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1", "+decoding.num_beam=3"),
         "decoding has no key 'num_beam' (did you mean num_beams?)", watch=("data", "mcl_run")),
    Case("eval_decoding_unsuited_model", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mle_beam"),
         "decoding=mle_beam is for one-output models", watch=("data", "mcl_run")),
    Case("eval_moe_decoding_on_mcl_run", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=moe_forced"),
         "decoding=moe_forced forces each of the K experts of a LoRA-MoE run; this LoRA-MCL", watch=("data", "mcl_run")),
    Case("eval_truncated_only", "eval.py", evaluate("ckpt_path={p.truncated_run}", "decoding=mcl_beam1"),
         "no readable checkpoint", watch=("data", "truncated_run")),
    Case("eval_not_a_checkpoint", "eval.py", evaluate("ckpt_path={p.not_a_ckpt}", "decoding=mcl_beam1"),
         "cannot be read as a checkpoint", watch=("data", "a_file_folder")),
    Case("eval_num_hypotheses_mismatch", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1", "num_hypotheses=2"),
         "num_hypotheses=2 but", watch=("data", "mcl_run")),
    Case("eval_max_items_zero", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1", "max_items=0"),
         "max_items must be an integer >= 1 or null", watch=("data", "mcl_run")),
    Case("eval_log_dir_read_only", "eval.py", lambda p: [f"paths.log_dir={p.read_only}/logs", f"ckpt_path={p.mcl_run}"],
         "is not writable", watch=("data", "mcl_run", "read_only"), needs=("read_only",)),
    # ------------------------------------------------------------ scripts
    Case("export_missing_path", "scripts/export_peft.py", script("{p.tmp}/nowhere", "--out", "{p.tmp}/export_a"),
         "does not exist"),
    Case("export_hypothesis_out_of_range", "scripts/export_peft.py",
         script("{p.mcl_run}", "--out", "{p.tmp}/export_b", "--hypotheses", "5"),
         "--hypotheses must be distinct indices in [0, 2]", watch=("data", "mcl_run")),
    Case("export_moe_without_hypotheses", "scripts/export_peft.py", script("{p.moe_run}", "--out", "{p.tmp}/export_c"),
         "LoRA-MoE model, which cannot be exported", watch=("data", "moe_run")),
    Case("export_out_not_empty", "scripts/export_peft.py", script("{p.mcl_run}", "--out", "{p.export_full}"),
         "is not empty; pass --overwrite", watch=("data", "mcl_run", "export_full")),
    Case("prepare_check_empty", "scripts/prepare_data.py", script("check", "--root", "{p.empty}", "--name", "synth_en_de"),
         "missing split file(s) train"),
    Case("prepare_check_corrupt", "scripts/prepare_data.py", script("check", "--root", "{p.corrupt}", "--name", "synth_en_de"),
         "not a readable HDF5 file", watch=("corrupt",)),
    Case("prepare_existing_files", "scripts/prepare_data.py",
         script("synthetic-translation", "--out", "{p.data}/synthetic/translation", "--train", "4", "--val", "2", "--test", "2"),
         "already exists"),
    Case("pretrain_existing_base", "scripts/pretrain_tiny_base.py",
         script("alma", "--data", "{p.data}/synthetic/translation", "--out", "{p.data}/tiny_bases/alma"),
         "already holds a model"),
    Case("collect_results_empty_folder", "scripts/collect_results.py",
         script("--tracking-uri", "sqlite:///{p.empty}/mlflow.db", "--all", "--out", "{p.tmp}/results"), "no MLflow store at"),
    Case("toy_report_empty_folder", "scripts/toy_report.py", script("{p.empty}"), "no summary.json found"),
]

# Issue 21: careless errors the cases above did not list, across every entry point: non-finite
# numbers, values owned by Lightning / torch / transformers, typos in keys and group options, run
# folders that hold a run, broken run files, and the scripts' arguments.
CASES_21 = [
    # ------------------------------------------------------------ train.py: numbers that pass a "> 0" test
    Case("alpha_inf", "train.py", train("lora.alpha=inf"), "lora.alpha must be a finite number > 0, got inf"),
    Case("temperature_init_inf", "train.py", train("mcl.mode=annealed-wta", "mcl.temperature_init=inf"),
         "mcl.temperature_init must be a finite number > 0, got inf"),
    Case("epsilon_nan", "train.py", train("mcl.mode=relaxed-wta", "mcl.epsilon=nan"), "mcl.epsilon must be a finite number"),
    Case("lr_inf", "train.py", train("optim.optimizer.lr=inf"), "optim.optimizer.lr must be a finite number > 0, got inf"),
    Case("lr_text", "train.py", train("optim.optimizer.lr=fast"), "optim.optimizer.lr must be a finite number > 0, got 'fast'"),
    Case("dropout_negative_inf", "train.py", train("lora.dropout=-inf"), "lora.dropout must be a finite number in [0, 1)"),
    Case("warmup_ratio_one", "train.py", train("optim.scheduler.warmup_ratio=1.0"), "optim.scheduler.warmup_ratio must be"),
    # ------------------------------------------------------------ train.py: values the libraries own
    Case("precision_unknown", "train.py", train("trainer.precision=abc"), "trainer.precision=abc: Lightning refuses it"),
    Case("devices_zero", "train.py", train("trainer.devices=0"), "trainer.devices must be"),
    Case("fsdp_on_cpu", "train.py", train("trainer=fsdp", "trainer.accelerator=cpu"), "trainer.strategy="),
    Case("weight_decay_negative", "train.py", train("optim.optimizer.weight_decay=-0.1"),
         "optim.optimizer.weight_decay must be a finite number >= 0, got -0.1"),
    Case("betas_out_of_range", "train.py", train("+optim.optimizer.betas=[0.9,1.5]"), "optim.optimizer.betas must be"),
    Case("collapse_action_unknown", "train.py", train("callbacks.collapse.action=halt"),
         "callbacks.collapse.action must be one of warn, stop, got 'halt'"),
    Case("collapse_min_share_one", "train.py", train("callbacks.collapse.min_share=1"), "callbacks.collapse.min_share must be"),
    Case("seed_negative", "train.py", train("seed=-1"), "seed must be an integer in [0, 4294967295], got -1"),
    Case("seed_text", "train.py", train("seed=abc"), "seed must be an integer in [0, 4294967295], got 'abc'"),
    # ------------------------------------------------------------ train.py: values that were silently accepted
    Case("max_target_tokens_zero", "train.py", train("data.max_target_tokens=0"), "data.max_target_tokens must be"),
    Case("checkpoint_every_negative", "train.py", train("callbacks.model_checkpoint.every_n_train_steps=-5"),
         "callbacks.model_checkpoint.every_n_train_steps must be"),
    Case("gradient_clip_negative", "train.py", train("trainer.gradient_clip_val=-1"), "trainer.gradient_clip_val must be"),
    Case("num_workers_negative", "train.py", train("data.num_workers=-2"), "data.num_workers must be an integer >= 0"),
    Case("references_unknown", "train.py", train("data.references=best"), "data.references must be one of random, all, first"),
    Case("dtype_unknown", "train.py", train("model.dtype=fp64"), "model.dtype must be one of"),
    Case("accumulate_zero", "train.py", train("trainer.accumulate_grad_batches=0"), "trainer.accumulate_grad_batches must be"),
    Case("moe_one_expert", "train.py", train("mcl.mode=moe", "mcl.num_hypotheses=1"), "mcl.mode=moe mixes mcl.num_hypotheses >= 2"),
    Case("annealed_min_above_init", "train.py", train("mcl.mode=annealed-wta", "mcl.temperature_min=2"),
         "mcl.temperature_min=2 must be below mcl.temperature_init=1"),
    Case("task_name_with_slash", "train.py", train("task_name=my/run"), "task_name must be a text without /"),
    Case("toy_config_typo", "train.py", train("+model.config.hiden_size=128", demo=False),
         "model.config has no key 'hiden_size' (did you mean hidden_size?)", watch=()),
    Case("toy_heads_do_not_divide", "train.py", train("model.config.num_heads=3", demo=False), "model.config:", watch=()),
    Case("toy_train_forever", "train.py", train("trainer.max_steps=-1", "trainer.max_epochs=-1", demo=False),
         "data.num_train_batches must be", watch=()),
    # ------------------------------------------------------------ train.py: keys, group options, override syntax
    Case("key_typo", "train.py", train("mcl.num_hypothesis=3"), "mcl.num_hypothesis is not a key of this config"),
    Case("trainer_key_typo", "train.py", train("+trainer.max_step=5"), "trainer has no key 'max_step' (did you mean max_steps?)"),
    Case("callback_key_typo", "train.py", train("+callbacks.model_checkpoint.every_n_step=5"),
         "callbacks.model_checkpoint has no key 'every_n_step'"),
    Case("unknown_top_key", "train.py", train("+num_hypotheses=3"), "the config has no key 'num_hypotheses'"),
    Case("group_option_unknown", "train.py", train("mcl=soft"), "mcl=soft is not an option of mcl/"),
    Case("experiment_unknown", "train.py", train("experiment=clotho", demo=False), "experiment=clotho is not an option of experiment/",
         watch=()),
    Case("override_syntax", "train.py", train("lora.r=["), "cannot parse the override 'lora.r=['"),
    # ------------------------------------------------------------ train.py: run folders that hold a run
    Case("run_dir_holds_a_run", "train.py", train("hydra.run.dir={p.mcl_run}"), "already holds a run",
         watch=("data", "mcl_run")),
    Case("run_dir_other_k", "train.py", train("hydra.run.dir={p.mcl_run}", "mcl.num_hypotheses=2"), "already holds a run",
         watch=("data", "mcl_run")),
    Case("resume_with_other_alpha", "train.py", train("hydra.run.dir={p.resume_copy}", "ckpt_path=auto", "lora.alpha=512"),
         "holds a run trained with lora.alpha=", watch=("data", "resume_copy")),
    Case("toy_into_a_run", "train.py", train("hydra.run.dir={p.mcl_run}", "ckpt_path=auto", demo=False),
         "does not resume", watch=("mcl_run",)),
    # ------------------------------------------------------------ eval.py
    Case("eval_repetition_penalty_zero", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1",
         "generation.repetition_penalty=0"), "generation.repetition_penalty must be a finite number > 0", watch=("data", "mcl_run")),
    Case("eval_length_penalty_text", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1",
         "generation.length_penalty=abc"), "generation.length_penalty must be a finite number, got 'abc'", watch=("data", "mcl_run")),
    Case("eval_seed_negative", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1", "seed=-1"),
         "seed must be an integer in [0, 4294967295], got -1", watch=("data", "mcl_run")),
    Case("eval_devices_zero", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1", "devices=0"),
         "devices must be an integer >= 1, got 0", watch=("data", "mcl_run")),
    Case("eval_semantic_maybe", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1", "metrics.semantic=maybe"),
         "metrics.semantic must be one of auto, true, false", watch=("data", "mcl_run")),
    Case("eval_diversity_penalty_negative", "eval.py", evaluate("ckpt_path={p.mle_run}", "decoding=mle_dbs",
         "decoding.diversity_penalty=-1"), "decoding.diversity_penalty must be a finite number >= 0", watch=("data", "mle_run")),
    Case("eval_tta_crop_inf", "eval.py", evaluate("ckpt_path={p.mle_run}", "decoding=tta_beam1", "decoding.tta.crop_scale=inf"),
         "decoding.tta.crop_scale must be a finite number in (0, 1], got inf", watch=("data", "mle_run")),
    Case("eval_decoding_unknown", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=beam_search"),
         "decoding=beam_search is not an option of decoding/", watch=("data", "mcl_run")),
    Case("eval_key_typo", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1", "max_item=5"),
         "max_item is not a key of this config", watch=("data", "mcl_run")),
    Case("eval_without_ckpt_path", "eval.py", evaluate("decoding=mcl_beam1"), "ckpt_path is missing"),
    Case("eval_into_a_training_run", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1", "hydra.run.dir={p.mcl_run}"),
         "already holds a training run", watch=("data", "mcl_run")),
    Case("eval_into_an_earlier_eval", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1",
         "hydra.run.dir={p.earlier_eval}"), "already holds an earlier evaluation", watch=("data", "mcl_run", "earlier_eval")),
    Case("eval_broken_run_config", "eval.py", evaluate("ckpt_path={p.broken_yaml_run}", "decoding=mcl_beam1"),
         "cannot be read as the run's config", watch=("data", "broken_yaml_run")),
    Case("eval_train_config_missing", "eval.py", evaluate("ckpt_path={p.mcl_run}", "decoding=mcl_beam1",
         "train_config={p.tmp}/nowhere.yaml"), "train_config=", watch=("data", "mcl_run")),
    # ------------------------------------------------------------ scripts/reproduce.py
    Case("reproduce_slurm_time_text", "scripts/reproduce.py", script("table=toy", "scale=demo", "paths.log_dir={p.logs}",
         "slurm.time_train=tomorrow", "--dry-run"), "slurm.time_train must be a time limit as sbatch takes it"),
    Case("reproduce_gpus_negative", "scripts/reproduce.py", script("table=toy", "paths.log_dir={p.logs}", "slurm.gpus=-1",
         "--dry-run"), "slurm.gpus must be an integer >= 0, got -1"),
    Case("reproduce_row_value_inf", "scripts/reproduce.py", script("table=toy", "scale=demo", "paths.log_dir={p.logs}",
         "train_overrides=['lora.alpha=inf']", "--dry-run"), "row transition1: lora.alpha must be a finite number > 0"),
    Case("reproduce_unknown_flag", "scripts/reproduce.py", script("table=toy", "--colect"), "unrecognized arguments: --colect"),
    # ------------------------------------------------------------ the other scripts
    Case("plan_memory_unknown_experiment", "scripts/plan_memory.py", script("experiment=clotho"),
         "experiment=clotho is not an option of experiment/"),
    Case("plan_memory_gpu_gb_negative", "scripts/plan_memory.py", script("experiment=demo_translation_mcl", "--gpu-gb", "-1"),
         "--gpu-gb must be a finite number > 0, got -1"),
    Case("plan_memory_devices_zero", "scripts/plan_memory.py", script("experiment=demo_translation_mcl", "--devices", "0"),
         "--devices must be an integer >= 1, got 0"),
    Case("analyse_batch_size_zero", "scripts/analyse_hypotheses.py", script("{p.empty}", "--batch-size", "0"),
         "--batch-size must be an integer >= 1, got 0"),
    Case("analyse_missing_path", "scripts/analyse_hypotheses.py", script("{p.tmp}/nowhere"), "does not exist"),
    Case("prepare_zero_items", "scripts/prepare_data.py", script("synthetic-translation", "--out", "{p.tmp}/new_data",
         "--train", "0"), "--train must be an integer >= 1, got 0"),
    Case("prepare_fraction_above_one", "scripts/prepare_data.py", script("bilingual", "--images", "{p.empty}", "--captions",
         "{p.a_file}", "--second-captions", "{p.a_file}", "--out", "{p.tmp}/bi", "--fraction", "1.5"),
         "--fraction must be a finite number in [0, 1], got 1.5", watch=("data", "a_file_folder")),
    Case("export_negative_hypothesis", "scripts/export_peft.py", script("{p.mcl_run}", "--out", "{p.tmp}/export_d",
         "--hypotheses", "-1"), "--hypotheses must be an integer >= 0, got -1", watch=("data", "mcl_run")),
    Case("pretrain_unknown_backbone", "scripts/pretrain_tiny_base.py", script("gpt5"), "backbone invalid choice: 'gpt5'"),
    Case("toy_recovery_bad_seeds", "scripts/toy_recovery.py", script("--seeds", "one"), "--seeds must be an integer in [0, 4294967295], got one"),
    Case("toy_report_unknown_flag", "scripts/toy_report.py", script("{p.empty}", "--frobnicate"),
         "unrecognized arguments: --frobnicate"),
    Case("collect_results_no_experiment", "scripts/collect_results.py", script("--out", "{p.tmp}/results_x"),
         "one of the arguments --experiment --all is required"),
]
CASES = CASES + CASES_21


# ------------------------------------------------------------------------------------ fixtures
def checksums(folder: Path) -> dict[str, str]:
    if folder.is_file():
        folder = folder.parent
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def truncate(path: Path, keep: int = 3000) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def make_read_only(folder: Path) -> bool:
    """Make `folder` unwritable, also for root (immutable flag); True when that worked."""
    folder.chmod(0o555)
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    return not os.access(folder, os.W_OK)


def make_writable(folder: Path) -> None:
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


@pytest.fixture(scope="module")
def paths(translation_assets, tmp_path_factory):
    """The inputs of the cases: the session's data, and broken copies made here (`add_runs` adds
    the session's trained runs and copies of them)."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    p = SimpleNamespace(tmp=tmp, data=translation_assets)
    p.empty = tmp / "empty"
    p.empty.mkdir()
    p.a_file_folder = tmp / "a_file_folder"
    p.a_file_folder.mkdir()
    p.a_file = p.a_file_folder / "notes.txt"
    p.a_file.write_text("a file where a folder is expected\n")
    p.not_a_ckpt = p.a_file_folder / "model.ckpt"
    p.not_a_ckpt.write_text("not a checkpoint\n")
    translation = Path("synthetic") / "translation"
    p.data_without_val = tmp / "data_without_val"
    shutil.copytree(translation_assets, p.data_without_val)
    (p.data_without_val / translation / "synth_en_de_val.hdf5").unlink()
    p.data_without_test = tmp / "data_without_test"  # its multi-reference test text stays
    shutil.copytree(translation_assets, p.data_without_test)
    (p.data_without_test / translation / "synth_en_de_test.hdf5").unlink()
    p.corrupt = tmp / "corrupt"
    p.corrupt.mkdir()
    for split in ("train", "val", "test"):
        (p.corrupt / f"synth_en_de_{split}.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"cut short" * 40)
    p.earlier_eval = tmp / "earlier_eval"  # what an evaluation leaves: never written into again
    p.earlier_eval.mkdir()
    (p.earlier_eval / "predictions.jsonl").write_text('{"id": 0, "candidates": []}\n')
    (p.earlier_eval / "metrics.json").write_text('{"oracle_bleu": 12.5}\n')
    p.export_full = tmp / "export_full"
    (p.export_full / "hyp_0").mkdir(parents=True)
    (p.export_full / "hyp_0" / "adapter_config.json").write_text('{"r": 8}\n')
    read_only = tmp / "read_only"
    read_only.mkdir()
    (read_only / "kept.txt").write_text("kept\n")
    p.read_only = read_only if make_read_only(read_only) else None
    yield p
    make_writable(read_only)


def add_runs(p: SimpleNamespace, runs: dict) -> None:
    """The session's tiny translation runs, a copy without checkpoints and one with every checkpoint cut short."""
    p.mcl_run, p.mle_run, p.moe_run = runs["mcl"], runs["mle"], runs["moe"]
    p.mcl_ckpt = p.mcl_run / "checkpoints" / "K3" / "last.ckpt"
    p.run_no_ckpt = p.tmp / "run_without_checkpoints"
    shutil.copytree(p.mcl_run / ".hydra", p.run_no_ckpt / ".hydra")
    (p.run_no_ckpt / "checkpoints" / "K3").mkdir(parents=True)
    p.truncated_run = p.tmp / "truncated_run"
    shutil.copytree(p.mcl_run, p.truncated_run)
    for ckpt in (p.truncated_run / "checkpoints" / "K3").glob("*.ckpt"):
        truncate(ckpt)
    p.resume_copy = p.tmp / "resume_copy"  # a run to resume (with other model values: refused)
    shutil.copytree(p.mcl_run, p.resume_copy)
    p.broken_yaml_run = p.tmp / "broken_yaml_run"
    shutil.copytree(p.mcl_run, p.broken_yaml_run)
    (p.broken_yaml_run / ".hydra" / "config.yaml").write_text("mcl: [num_hypotheses: 3\nlora: {r: 8\n")


def uses_runs(case: Case, p: SimpleNamespace) -> bool:
    """Whether the case needs the trained runs (its command names one)."""
    try:
        case.args(SimpleNamespace(**vars(p), logs=p.tmp))
    except AttributeError:
        return True
    return any(not hasattr(p, name) for name in case.watch)


def run_case(case: Case, p: SimpleNamespace) -> dict:
    logs = p.tmp / "logs" / case.id
    logs.mkdir(parents=True)
    (logs / "existing.txt").write_text(f"{case.id}\n")  # a file of the log folder that must survive
    cp = SimpleNamespace(**vars(p), logs=logs)
    watched = {name: Path(getattr(cp, name)) for name in (*case.watch, "logs")}
    before = {name: checksums(folder) for name, folder in watched.items()}
    cmd = [sys.executable, str(ROOT / case.script), *map(str, case.args(cp))]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PROJECT_ROOT", None)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=p.tmp, env=env, capture_output=True, text=True, timeout=timeout(600))
    seconds = time.perf_counter() - start
    after = {name: checksums(folder) for name, folder in watched.items()}
    changed = {name: sorted(k for k, v in before[name].items() if after[name].get(k) != v) for name in watched}
    return {"proc": proc, "seconds": seconds, "changed": {k: v for k, v in changed.items() if v},
            "checkpoints": sorted(str(c) for c in logs.rglob("*.ckpt")), "cmd": cmd}


def _table(cases: list[Case], results: dict) -> str:
    lines = ["| case | command | exit | seconds to error | line shown |", "|---|---|---|---|---|"]
    for case in cases:
        r = results[case.id]
        err = [line for line in r["proc"].stderr.splitlines() if line.strip()]
        shown = (err[-1] if err else "(nothing on stderr)").replace("|", "\\|")
        lines.append(f"| {case.id} | `{case.script}` | {r['proc'].returncode} | {r['seconds']:.1f} | `{shown}` |")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def results(paths, request) -> dict:
    """Every selected case, two at a time; those that need no trained run start while the session's
    runs are trained. The table is written once they are all done."""
    chosen = {item.callspec.params["case"].id for item in request.session.items
              if getattr(item, "originalname", "") == "test_bad_input" and hasattr(item, "callspec")}
    cases = [c for c in CASES if c.id in chosen and all(getattr(paths, n, None) is not None for n in c.needs)]
    early = [c for c in cases if not uses_runs(c, paths)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c.id: pool.submit(run_case, c, paths) for c in early}
        late = [c for c in cases if c not in early]
        if late:
            add_runs(paths, request.getfixturevalue("translation_runs"))
            futures.update({c.id: pool.submit(run_case, c, paths) for c in late})
        done = {case_id: future.result() for case_id, future in futures.items()}
    table = _table(cases, done)
    print("\n" + table)
    (paths.tmp / "battery_table.md").write_text(table)
    if os.environ.get("LORAMCL_BATTERY_TABLE"):
        Path(os.environ["LORAMCL_BATTERY_TABLE"]).write_text(table)
    return done


def test_the_battery_is_large_enough():
    assert len(CASES_21) >= 60 and {c.script for c in CASES_21} >= {
        "train.py", "eval.py", "scripts/reproduce.py", "scripts/plan_memory.py", "scripts/analyse_hypotheses.py",
        "scripts/prepare_data.py", "scripts/export_peft.py", "scripts/pretrain_tiny_base.py", "scripts/toy_recovery.py",
        "scripts/toy_report.py", "scripts/collect_results.py"}
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert {c.script for c in CASES} >= {"train.py", "eval.py", "scripts/export_peft.py", "scripts/prepare_data.py",
                                         "scripts/collect_results.py"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, results, paths):
    if case.id not in results:
        pytest.skip(f"needs {', '.join(case.needs)} (not possible on this machine)")
    r = results[case.id]
    proc = r["proc"]
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{case.id} exited 0:\n{output[-3000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{case.id}: stderr has {len(lines)} lines, not one:\n{proc.stderr[-3000:]}"
    assert lines[0].startswith("error: "), lines[0]
    assert case.expect in lines[0], f"{case.id}: {case.expect!r} not in {lines[0]!r}"
    assert not [m for m in BUILT if m in output], f"{case.id} built a model first:\n{output[-3000:]}"
    assert not r["checkpoints"], r["checkpoints"]
    assert r["seconds"] < timeout(SECONDS), f"{case.id} took {r['seconds']:.0f} s"
    assert not r["changed"], f"{case.id} changed pre-existing files: {r['changed']}"


# ------------------------------------------------------------------------------------ more values, in process
DEMO = ["experiment=demo_translation_mcl", *TRANSLATION_ASSETS]
MORE_VALUES = [  # the same check_config as the command lines above (where each mechanism runs once)
    (DEMO + ["+lora.rank=4"], "lora has no key 'rank' (known: r, alpha"),
    (DEMO + ["lora.exclude_modules='[a-'"], "lora.exclude_modules must be null, a list of module-name suffixes or a valid regular expression, got '[a-'"),
    (DEMO + ["mcl=moe", "mcl.num_hypotheses=1"], "mcl.mode=moe mixes mcl.num_hypotheses >= 2"),
    (DEMO + ["data.val_batch_size=0"], "data.val_batch_size must be an integer >= 1, got 0"),
    (DEMO + ["data.max_train_items=0"], "data.max_train_items must be an integer >= 1 or null (null: every item), got 0"),
    (DEMO + ["data.references=longest"], "data.references must be one of random, all, first, got 'longest'"),
    (DEMO + ["trainer.max_epochs=0"], "trainer.max_epochs must be an integer >= 1 or -1 or null (-1: no limit), got 0"),
    (DEMO + ["trainer.val_check_interval=1.5"], "trainer.val_check_interval must be a number of training steps >= 1 or a fraction of an epoch in (0, 1], got 1.5"),
    (DEMO + ["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches must be an integer >= 1"),
    (DEMO + ["optim.scheduler.warmup_ratio=1.0"], "optim.scheduler.warmup_ratio must be a finite number in [0, 1), got 1.0"),
    (DEMO + ["model.dtype=fp8"], "model.dtype must be one of fp32"),
    (["data.seq_len=1"], "data.seq_len must be an integer >= 2 (the first token is never scored), got 1"),
    (["data.weights=[0.5,0.6]"], "data: weights"),
]


@pytest.mark.parametrize("overrides,message", MORE_VALUES, ids=[o[-1] for o, _ in MORE_VALUES])
def test_more_bad_values_are_refused_by_the_config_check(overrides, message, tmp_path):
    from loramcl.errors import ConfigError
    from loramcl.preflight import check_config

    cfg = compose_train(*overrides, f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs")
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ the behaviours behind
def test_missing_synthetic_split_is_prepared_alone(translation_assets, tmp_path):
    """A demo's val file deleted, the others kept: only val is generated again, byte for byte."""
    from hydra.utils import instantiate

    data = tmp_path / "data"
    shutil.copytree(translation_assets, data)
    folder = data / "synthetic" / "translation"
    before = checksums(folder)
    (folder / "synth_en_de_val.hdf5").unlink()
    cfg = compose_train("experiment=demo_translation_mcl", *TRANSLATION_ASSETS, f"paths.data_dir={data}",
                        f"paths.log_dir={tmp_path}/logs")
    instantiate(cfg.data).check()
    assert checksums(folder) == before


def test_toy_vocabulary_follows_the_chains():
    """3 x 3 chains: the toy backbone gets 3 tokens, and a training batch goes through it."""
    import torch
    from hydra.utils import instantiate

    from loramcl.config import validated_configs
    from loramcl.model import build_model

    cfg = compose_train(TOY_3_STATES, "trainer.max_steps=1", "data.batch_size=4", "data.num_val_sequences=4")
    backbone = instantiate(cfg.model)
    assert backbone.config.vocab_size == 3
    data = instantiate(cfg.data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert int(batch["input_ids"].max()) == 2
    with torch.no_grad():
        out = build_model(backbone, *validated_configs(cfg))(**batch)
    assert torch.isfinite(out.loss)


@pytest.fixture
def run_with_truncated_last(translation_runs, tmp_path) -> Path:
    """A copy of the MCL run whose last.ckpt was cut short (e.g. by a kill) beside a readable step2.ckpt."""
    run = tmp_path / "run"
    shutil.copytree(translation_runs["mcl"], run)
    folder = run / "checkpoints" / "K3"
    if not (folder / "step2.ckpt").is_file():  # the readable checkpoint beside it: last.ckpt as it was
        shutil.copy2(folder / "last.ckpt", folder / "step2.ckpt")
    truncate(folder / "last.ckpt")
    return run


def test_eval_falls_back_from_a_truncated_last_checkpoint(run_with_truncated_last, tmp_path):
    run = run_with_truncated_last
    before = checksums(run)
    env = {k: v for k, v in os.environ.items() if k != "PROJECT_ROOT"}
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt_path={run}", "decoding=mcl_beam1", "max_items=2",
                           "generation.max_new_tokens=4", "mlflow.enabled=false", f"paths.log_dir={tmp_path}/logs"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout(600))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [line for line in (proc.stdout + proc.stderr).splitlines() if "cannot be read" in line]
    assert len(warning) == 1 and "last.ckpt" in warning[0] and "step2.ckpt" in warning[0], warning
    assert checksums(run) == before


def test_export_from_another_folder_falls_back_and_names_an_absolute_base(run_with_truncated_last, tmp_path):
    """Run from outside the repository, with the run's data folder given relative to where it runs:
    the truncated last.ckpt is passed over with a warning, and adapter_config.json names the
    tiny base by its absolute folder."""
    import json

    run = run_with_truncated_last
    config = run / ".hydra" / "config.yaml"
    data_dir = next(line.split(":", 1)[1].strip() for line in config.read_text().splitlines()
                    if line.strip().startswith("data_dir:"))
    (tmp_path / "data_link").symlink_to(data_dir)
    config.write_text(config.read_text().replace(f"data_dir: {data_dir}", "data_dir: data_link"))
    env = {k: v for k, v in os.environ.items() if k != "PROJECT_ROOT"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_peft.py"), str(run), "--out", "export"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout(600))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [line for line in proc.stderr.splitlines() if "cannot be read" in line]
    assert len(warning) == 1 and "last.ckpt" in warning[0] and "step2.ckpt" in warning[0], proc.stderr
    base = json.loads((tmp_path / "export" / "hyp_0" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and Path(base) == (Path(data_dir) / "tiny_bases" / "alma").resolve()


def test_run_config_paths_do_not_depend_on_the_current_folder(translation_runs, tmp_path, monkeypatch):
    """A run config whose data folder follows ${paths.root_dir} (the default) resolves it against the
    project, not against the folder a script runs from."""
    from loramcl.runs import CHECKOUT, RunFolder

    run = tmp_path / "run"
    shutil.copytree(translation_runs["mcl"] / ".hydra", run / ".hydra")
    config = run / ".hydra" / "config.yaml"
    lines = [("  data_dir: ${paths.root_dir}/data" if line.startswith("  data_dir:") else
              "  root_dir: ${oc.env:PROJECT_ROOT,.}" if line.startswith("  root_dir:") else line)
             for line in config.read_text().splitlines()]
    config.write_text("\n".join(lines) + "\n")
    monkeypatch.delenv("PROJECT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = RunFolder(run).config()
    assert cfg.paths.data_dir == str(CHECKOUT / "data")
    assert cfg.model.name_or_path == str(CHECKOUT / "data" / "tiny_bases" / "alma")
