"""Data parallelism without SLURM: Lightning's own launchers start 2 CPU processes (gloo).

Through the real train.py on the toy task (K = 2, no lr schedule so that runs of different lengths
share their first steps): 2 processes with batch 4 train exactly what 1 process trains with batch 8
(the same per-step losses, win rates and validation values in MLflow, the same adapters), only rank
0 writes run files and MLflow runs, and checkpoints resume on another process count with the same
global batch, ending with the adapters of an uninterrupted run. `eval.py devices=2` decodes half the
batches in each process and scores once: the predictions and metrics of one process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers import ROOT, run_eval, run_script, run_train

GLOBAL_BATCH, STEPS = 8, 6
# adapters of N processes against one: up to 8.6e-6 apart after 6 steps on a 2-core x86 machine (with the
# code before issue 21 as well; the logged losses agree to 1e-6): the all-reduce sums in another order
ADAM_NOISE = 2e-5
TOY = ["task=finetune", "data.num_val_sequences=32", "extras.print_config=false", "optim.scheduler=null",
       "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=1",
       f"data.num_train_batches={STEPS}"]


def processes(n: int) -> list[str]:
    """Overrides for n processes with the same global batch (the toy's stream: STEPS global batches)."""
    per = GLOBAL_BATCH // n
    extra = ["trainer=ddp_cpu", f"trainer.devices={n}"] if n > 1 else []
    return [f"data.batch_size={per}", f"data.num_train_batches={STEPS * n}", *extra]


def train(log_dir: Path, name: str, n: int, steps: int, *extra: str) -> Path:
    proc = run_train(*TOY, *processes(n), f"task_name={name}", f"trainer.max_steps={steps}", *extra,
                     log_dir=log_dir, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sorted((log_dir / name / "runs").iterdir())
    return run


def adapters(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "K2" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def history(log_dir: Path, experiment: str) -> dict[str, list[tuple[int, float]]]:
    """The metrics of the experiment's only MLflow run, (step, value) in step order."""
    client = MlflowClient(f"sqlite:///{log_dir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    log_dir = tmp_path_factory.mktemp("ddp")
    return {"log_dir": log_dir, "one": train(log_dir, "one", 1, STEPS), "two": train(log_dir, "two", 2, STEPS)}


def test_two_processes_train_as_one_with_the_doubled_batch(runs):
    log_dir = runs["log_dir"]
    one, two = history(log_dir, "one"), history(log_dir, "two")
    for key in ["train/loss", "train/hyp0_loss", "train/hyp1_loss", "train/win_rate_hyp0", "val/wta_loss",
                "val/hyp1_loss", "val/win_rate_hyp1"]:
        steps_one, values_one = zip(*one[key])
        steps_two, values_two = zip(*two[key])
        assert steps_one == steps_two, key
        assert values_two == pytest.approx(values_one, rel=1e-5, abs=1e-6), key
    assert len(one["train/loss"]) == STEPS and len(one["val/wta_loss"]) == 2
    a, b = adapters(runs["one"]), adapters(runs["two"])
    assert a.keys() == b.keys()
    for k in a:  # ADAM_NOISE: the float32 summation order of the all-reduce, amplified by Adam's 1 / sqrt(v)
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=ADAM_NOISE, msg=k)
    # rank 1 ran in the same run folder (Hydra's log only) and wrote nothing else
    assert (runs["two"] / "train_ddp_process_1.log").exists()
    listing = lambda run: sorted(p.name for p in (run / "checkpoints" / "K2").iterdir())  # noqa: E731
    assert listing(runs["two"]) == listing(runs["one"]) == ["last.ckpt", "step6.ckpt"]


def assert_resumes_across(runs: dict, tmp_path: Path, first: int, then: int) -> None:
    """3 steps on `first` processes, resumed to STEPS on `then`: the adapters of the uninterrupted run."""
    start = train(tmp_path, "first", first, 3)
    resumed = train(tmp_path, "resumed", then, STEPS, f"ckpt_path={start}")
    a, b = adapters(runs["one" if then == 1 else "two"]), adapters(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=ADAM_NOISE, msg=k)


def test_checkpoint_of_two_processes_resumes_on_one(runs, tmp_path):
    assert_resumes_across(runs, tmp_path, first=2, then=1)


@pytest.mark.slow
def test_checkpoint_of_one_process_resumes_on_two(runs, tmp_path):
    assert_resumes_across(runs, tmp_path, first=1, then=2)


def predictions(log_dir: Path) -> tuple[list[dict], dict]:
    (run,) = sorted((log_dir / "eval" / "runs").iterdir())
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    return rows, {k: v for k, v in metrics.items() if k != "decode_seconds"}


@pytest.mark.parametrize("scheme,decoding", [
    ("mle", "mle_sampling_nucleus"),  # sampling: batch b is seeded with seed + b on any process count
    pytest.param("mcl", "mcl_beam2", marks=pytest.mark.slow),
])
def test_data_parallel_evaluation_equals_one_process(translation_runs, tmp_path, scheme, decoding):
    """eval.py devices=2: each process decodes every other batch, rank 0 gathers and scores once;
    predictions.jsonl and the metrics are those of one process, item for item."""
    common = [f"ckpt_path={translation_runs[scheme]}", f"decoding={decoding}", "max_items=8", "batch_size=2"]
    results = {}
    for n in (1, 2):
        proc = run_eval(*common, f"devices={n}", "accelerator=cpu", log_dir=tmp_path / str(n), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[n] = predictions(tmp_path / str(n))
    rows_one, metrics_one = results[1]
    rows_two, metrics_two = results[2]
    assert len(rows_one) == 8
    assert [r["id"] for r in rows_two] == [r["id"] for r in rows_one]
    assert [[c["text"] for c in r["candidates"]] for r in rows_two] == [[c["text"] for c in r["candidates"]] for r in rows_one]
    assert metrics_two == pytest.approx(metrics_one, rel=1e-9)
    assert len(list((tmp_path / "2").glob("eval/runs/*/metrics.json"))) == 1


def test_a_non_finite_loss_on_one_process_stops_every_process_in_that_step(tmp_path):
    """Process 1 alone gets NaN adapters when its batch 3 starts (step 4): both processes stop before
    that optimizer step with one line each. Before, process 1 raised alone: process 0 failed with gloo's
    "Connection closed by peer" in the gradient all-reduce (across nodes, NCCL waits there until its
    timeout). The last checkpoint is the finite one of step 3."""
    nan = ["+callbacks.nan_at._target_=signal_callbacks.NonFiniteAt", "+callbacks.nan_at.batch=3",
           "+callbacks.nan_at.rank=1"]
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")])}
    proc = run_script([ROOT / "train.py", f"paths.log_dir={tmp_path}", *TOY, *processes(2), "task_name=nonfinite",
                       f"trainer.max_steps={STEPS}", *nan], seconds=240, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr
    assert "non-finite training loss (nan) in step 4 on rank 1, hypothesis 0" in err, err[-3000:]
    assert "non-finite training loss on another rank in step 4 (rank 0" in err, err[-3000:]
    assert "Traceback" not in err and "unexpected" not in err, err[-3000:]
    (run,) = (tmp_path / "nonfinite" / "runs").iterdir()
    saved = torch.load(run / "checkpoints" / "K2" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    assert all(bool(torch.isfinite(t).all()) for t in saved["state_dict"].values())


@pytest.mark.slow
def test_dropout_streams_of_every_rank_resume_exactly(tmp_path):
    """With LoRA dropout each rank draws its own masks; a 2-process checkpoint restores every rank's
    RNG stream, so 3 + 3 steps on 2 processes end with the adapters of 6 uninterrupted steps."""
    dropout = ["lora.dropout=0.2"]
    whole = train(tmp_path, "whole", 2, STEPS, *dropout)
    start = train(tmp_path, "first", 2, 3, *dropout)
    resumed = train(tmp_path, "resumed", 2, STEPS, *dropout, f"ckpt_path={start}")
    a, b = adapters(whole), adapters(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    saved = torch.load(start / "checkpoints" / "K2" / "last.ckpt", map_location="cpu", weights_only=False)
    per_rank = saved["rng_states"]["torch_per_rank"]
    assert per_rank.shape[0] == 2 and not torch.equal(per_rank[0], per_rank[1])
