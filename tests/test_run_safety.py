"""The pieces that keep a run safe to stop, in-process on a tiny Llama with a real Lightning Trainer:
the non-finite guard (loss, gradients, weights), atomic checkpoint writes, stale temporary files,
and which checkpoint `ckpt_path` resolves to."""

from __future__ import annotations

import functools
import logging
import socket
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from helpers import ROOT, run_train
from loramcl.callbacks import AdapterCheckpoint, AtomicCheckpointIO, NonFiniteGuard, remove_stale_temp_files
from loramcl.checkpoints import Checkpoint
from loramcl.config import LoRAConfig, MCLConfig
from loramcl.errors import MissingResource, NonFiniteError
from loramcl.lit_module import MCLLitModule
from loramcl.resume import finished, newest_checkpoint, resolve_ckpt_path
from loramcl.utils.rich_config import config_tree
from tiny_models import tiny_llama

K = 3


def batches(n: int = 8, seq: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(3, 64, (seq,), generator=g)
        rows.append({"input_ids": ids, "attention_mask": torch.ones(seq, dtype=torch.long),
                     "labels": torch.cat([torch.full((2,), -100), ids[2:]])})
    return DataLoader(rows, batch_size=2)


def module() -> MCLLitModule:
    lora = LoRAConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"])
    return MCLLitModule(tiny_llama(), MCLConfig(num_hypotheses=K, mode="wta"), lora,
                        optimizer=functools.partial(torch.optim.SGD, lr=0.1))


def fit(folder: Path, *callbacks: Callback, max_steps: int = 3, model: MCLLitModule | None = None) -> MCLLitModule:
    model = model or module()
    checkpoint = AdapterCheckpoint(dirpath=str(folder), filename="step{step}", auto_insert_metric_name=False,
                                   monitor=None, save_top_k=-1, every_n_train_steps=1)
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", callbacks=[NonFiniteGuard(), *callbacks, checkpoint],
                        plugins=[AtomicCheckpointIO()], limit_val_batches=0)
    trainer.fit(model, train_dataloaders=batches())
    return model


def lora_param(model: MCLLitModule, which: str = "lora_B") -> tuple[str, torch.nn.Parameter]:
    return next((n, p) for n, p in model.named_parameters() if n.endswith(which))


class AtStep(Callback):
    """Runs `action(model)` at the end of training step `step` (before the checkpoint callback)."""

    def __init__(self, step: int, action):
        self.step, self.action = step, action

    def on_train_batch_end(self, trainer, pl_module, *args, **kwargs):
        if trainer.global_step == self.step:
            self.action(pl_module)


def test_nan_gradient_is_caught_before_the_step_and_names_the_hypothesis(tmp_path):
    model = module()
    name, param = lora_param(model)
    before = {}

    def poison(m):  # from step 3 on, hypothesis 2's gradient of one adapter is NaN
        before.update({n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad})
        param.register_hook(lambda g: g.index_fill(0, torch.tensor([2]), float("nan")))

    with pytest.raises(NonFiniteError) as err:
        fit(tmp_path, AtStep(2, poison), max_steps=5, model=model)
    message = str(err.value)
    assert f"non-finite gradient of model.{name.split('model.', 1)[1]} in step 3, hypothesis 2" in message
    assert f"last good checkpoint: {tmp_path / 'last.ckpt'} (step 2)" in message
    for n, p in model.named_parameters():  # the optimizer never applied it
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)
    assert Checkpoint.load(tmp_path / "last.ckpt").raw["global_step"] == 2
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt", "step1.ckpt", "step2.ckpt"]


def test_non_finite_weights_are_never_saved(tmp_path):
    model = module()
    _, param = lora_param(model, "lora_A")

    def poison(m):  # hypothesis 1's adapter weights become NaN right before the step-1 save
        with torch.no_grad():
            param[1].fill_(float("nan"))

    with pytest.raises(NonFiniteError) as err:
        fit(tmp_path, AtStep(1, poison), max_steps=4, model=model)
    # the weights check of the step-1 save comes first: never a NaN checkpoint
    assert "adapter weight" in str(err.value) and "(hypothesis 1) is not finite after step 1" in str(err.value)
    assert "step1.ckpt was not written, no checkpoint was written before it" in str(err.value)
    assert not list(tmp_path.glob("*.ckpt"))


def test_nan_loss_before_backward(tmp_path):
    """Hypothesis 1's value-projection adapter is NaN: its loss is NaN, caught before backward. (The value
    path: on some CPUs torch's fused attention turns an all-NaN query into finite outputs, so a NaN
    q_proj adapter shows up only in the gradients, where the gradient check catches it.)"""
    model = module()
    param = next(p for n, p in model.named_parameters() if n.endswith("v_proj.lora_A"))
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", callbacks=[NonFiniteGuard()], enable_checkpointing=False)
    with torch.no_grad():
        param[1].fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"non-finite training loss \(nan\) in step 1, hypothesis 1; stopped "
                                             r"before the optimizer step, no checkpoint was written before it"):
        trainer.fit(model, train_dataloaders=batches())


def test_atomic_writes_leave_nothing_in_tmpdir(tmp_path, monkeypatch):
    import tempfile

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    fit(tmp_path / "ckpts", max_steps=2)
    assert not list(tmpdir.iterdir())
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["last.ckpt", "step1.ckpt", "step2.ckpt"]


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".last.ckpt.tmp-{host}-{dead.pid}"
    alive = tmp_path / f".step4.ckpt.tmp-{host}-{subprocess.os.getpid()}"
    elsewhere = tmp_path / f".last.ckpt.tmp-otherhost-{dead.pid}"
    for path in (stale, alive, elsewhere):
        path.write_bytes(b"partial")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert not stale.exists() and alive.exists() and elsewhere.exists()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """<run>/checkpoints/K3/ with step1..3 and last (step 3) of a real fit."""
    root = tmp_path_factory.mktemp("run")
    fit(root / "checkpoints" / f"K{K}", max_steps=3)
    return root


def test_ckpt_path_resolution(run_folder, tmp_path, caplog):
    cfg = lambda value: value  # noqa: E731  (ckpt_path=value)
    folder = run_folder / "checkpoints" / f"K{K}"
    assert resolve_ckpt_path(cfg(None), f"K{K}", tmp_path) is None
    assert resolve_ckpt_path(cfg(str(folder / "step2.ckpt")), f"K{K}", tmp_path) == folder / "step2.ckpt"
    assert resolve_ckpt_path(cfg(str(run_folder)), f"K{K}", tmp_path) == folder / "last.ckpt"
    assert resolve_ckpt_path(cfg("auto"), f"K{K}", tmp_path) is None  # nothing saved in this run folder yet
    assert resolve_ckpt_path(cfg("auto"), f"K{K}", run_folder) == folder / "last.ckpt"
    with pytest.raises(MissingResource, match=r"has no readable checkpoint of this model in checkpoints/K2/ \(it has K3"):
        resolve_ckpt_path(cfg(str(run_folder)), "K2", tmp_path)
    with pytest.raises(MissingResource, match="does not exist"):
        resolve_ckpt_path(cfg(str(tmp_path / "nowhere")), f"K{K}", tmp_path)
    with pytest.raises(MissingResource, match="a folder without checkpoints/"):
        resolve_ckpt_path(cfg(str(tmp_path)), f"K{K}", tmp_path)

    # a truncated last.ckpt (killed mid-write by an older version) is skipped for the newest readable one
    copy = tmp_path / "copy" / "checkpoints" / f"K{K}"
    copy.mkdir(parents=True)
    for path in folder.glob("*.ckpt"):
        data = path.read_bytes()
        (copy / path.name).write_bytes(data[: len(data) // 2] if path.name == "last.ckpt" else data)
    with caplog.at_level(logging.WARNING):
        assert newest_checkpoint(copy) == copy / "step3.ckpt"
    assert "skipping" in caplog.text and "last.ckpt" in caplog.text


def test_finished_checkpoints_are_recognised(run_folder):
    last = Checkpoint.load(run_folder / "checkpoints" / f"K{K}" / "last.ckpt")
    assert finished(last, 3, 100) == "it is at step 3 of trainer.max_steps=3"
    assert finished(last, 4, 100) is None
    assert finished(last, -1, 100) is None  # 3 steps of an 8-item, 4-batch epoch
    assert finished(last, -1, 1) is None  # the first epoch is not complete yet


def test_config_tree_text_is_not_empty():
    text = config_tree(OmegaConf.create({"mcl": {"num_hypotheses": 3}, "seed": 0}), print_it=False)
    assert "mcl" in text and "num_hypotheses: 3" in text and "seed" in text


def test_two_model_runners_refuse_ckpt_path(tmp_path):
    proc = run_train("experiment=transition1", f"ckpt_path={ROOT / 'train.py'}", log_dir=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: task=toy_markov trains two models from scratch and does not resume: drop ckpt_path (resuming is "
        "for task=finetune runs)")


def test_bad_ckpt_path_values_fail_in_one_line(tmp_path):
    proc = run_train("task=finetune", f"ckpt_path={tmp_path}", log_dir=tmp_path / "logs", timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: ckpt_path {tmp_path} is a folder without checkpoints/: not a train.py run folder")
