"""Exact resumption: a run stopped (or killed) mid-epoch and resumed from its checkpoint ends with
the same adapter weights as an uninterrupted run; mismatched checkpoints are refused up front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import AUDIO_ASSETS, ROOT, run_train, timeout

TOY = ["task=finetune", "data.batch_size=8", "data.num_val_sequences=32", "logger=none",
       "callbacks=model_checkpoint", "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.monitor=null",
       "extras.print_config=false"]


def final_adapters(run_root: Path, model: str = "K2") -> dict[str, torch.Tensor]:
    ckpt = next(run_root.glob(f"runs/*/checkpoints/{model}/last.ckpt"))
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


@pytest.mark.slow  # the default suite's SIGKILL + resume case is tests/test_faults.py (a kill during a save)
def test_resume_after_kill_matches_uninterrupted(tmp_path):
    steps = ["trainer.max_steps=60", "trainer.val_check_interval=20", "callbacks.model_checkpoint.every_n_train_steps=5"]
    proc = run_train(*TOY, *steps, "task_name=full", log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the same run, killed (SIGKILL) as soon as its first mid-run checkpoint is on disk
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path}", *TOY, *steps, "task_name=killed"]
    victim = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout(600)
        while (not list(tmp_path.glob("killed/runs/*/checkpoints/K2/step*.ckpt")) and time.time() < deadline
               and victim.poll() is None):
            time.sleep(0.05)
    finally:
        if victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    ckpts = sorted(tmp_path.glob("killed/runs/*/checkpoints/K2/step*.ckpt"), key=lambda p: p.stat().st_mtime)
    assert ckpts, "the run was killed before writing a checkpoint"
    resume_from = next(p for p in ckpts if torch.load(p, weights_only=False)["global_step"] < 60)
    proc = run_train(*TOY, *steps, "task_name=resumed", f"ckpt_path={resume_from}", log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(final_adapters(tmp_path / "full"), final_adapters(tmp_path / "resumed"))


def test_resume_with_dropout_and_random_references(audio_assets, tmp_path):
    """Audio demo over 2 epochs, LoRA dropout 0.1 and a random reference per clip per step, resumed
    mid-epoch: RNG states and the data order are restored with the adapters. Data set and tiny base
    are the session's (`audio_assets`); 16 training clips in batches of 4 make 4 steps an epoch."""
    demo = ["experiment=demo_audio_mcl", *AUDIO_ASSETS, "data.max_train_items=16", "data.max_val_items=4",
            "data.batch_size=4", "trainer.max_epochs=2", "lora.dropout=0.1", "logger=none", "extras.print_config=false",
            "callbacks=model_checkpoint", "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.monitor=null",
            "callbacks.model_checkpoint.every_n_train_steps=3", f"paths.data_dir={audio_assets}"]
    proc = run_train(*demo, "task_name=full", log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step3 = next(tmp_path.glob("full/runs/*/checkpoints/K3/step3.ckpt"))  # inside the first epoch (4 batches)
    proc = run_train(*demo, "task_name=resumed", f"ckpt_path={step3}", log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(final_adapters(tmp_path / "full", "K3"), final_adapters(tmp_path / "resumed", "K3"))


@pytest.mark.slow  # suite time: test_bad_inputs refuses another K and another rank in the default run
def test_checkpoint_of_another_k_or_rank_is_refused(tmp_path):
    proc = run_train(*TOY, "trainer.max_steps=2", "trainer.val_check_interval=2", "task_name=k2", log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = next(tmp_path.glob("k2/runs/*/checkpoints/K2/last.ckpt"))
    for override, expected in (("mcl.num_hypotheses=3", "this run has K=3, r=64 (mcl.num_hypotheses, lora.r)"),
                               ("lora.r=8", "this run has K=2, r=8 (mcl.num_hypotheses, lora.r)")):
        proc = run_train(*TOY, "trainer.max_steps=4", override, f"ckpt_path={ckpt}", log_dir=tmp_path)
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ckpt_path ") and "holds K=2, r=64 adapters" in last and expected in last
        assert "adapted layers" not in proc.stdout + proc.stderr  # refused before building the model


def test_signal_inside_a_gradient_accumulation_stops_at_the_optimizer_step(tmp_path):
    """accumulate_grad_batches=2 (the ALMA experiments): a SIGTERM that arrives while the first batch
    of an accumulation runs is taken after the second (the optimizer step), so the checkpoint is a
    true resume point: resumed, the run ends with exactly the uninterrupted run's adapters."""
    from helpers import compose_train
    from loramcl.errors import StopRequested
    from loramcl.schema import validate_train
    from loramcl.training import run_finetune

    common = ["task=finetune", "data.batch_size=8", "data.num_train_batches=12", "data.num_val_sequences=16", "trainer.max_steps=6",
              "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=12", "logger=none",
              "callbacks=model_checkpoint", "callbacks.model_checkpoint.monitor=null", "extras.print_config=false",
              "extras.num_threads=1", "extras.flush_denormal=false"]

    def settings(folder: Path, *extra: str):
        return validate_train(compose_train(*common, f"paths.output_dir={folder}", f"paths.log_dir={tmp_path}",
                                            f"callbacks.model_checkpoint.dirpath={folder}/checkpoints", *extra))

    run_finetune(settings(tmp_path / "full"))
    stop = ["+callbacks.signal_at._target_=signal_callbacks.SignalAt", "+callbacks.signal_at.batch=4"]
    with pytest.raises(StopRequested, match="after step 3"):  # batches 4 and 5 make step 3
        run_finetune(settings(tmp_path / "stopped", *stop))
    last = tmp_path / "stopped" / "checkpoints" / "K2" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    batches = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    assert batches == 6, batches  # 2 batches a step: no half accumulation in the resume point
    run_finetune(settings(tmp_path / "resumed", f"ckpt_path={last}"))
    assert_same(final_adapters_at(tmp_path / "full"), final_adapters_at(tmp_path / "resumed"))


def final_adapters_at(run_folder: Path, model: str = "K2") -> dict[str, torch.Tensor]:
    return torch.load(run_folder / "checkpoints" / model / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
