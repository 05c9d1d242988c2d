"""Paper audio experiments fail fast without data or weights; the CPU audio demo runs end to end
(synthetic data and tiny base built on first use, reused afterwards) and logs to MLflow."""

from __future__ import annotations

import sqlite3
import time

from test_framework import run_train

DEMO = ["experiment=demo_audio_mcl", "model.auto_pretrain.steps=10", "trainer.max_epochs=1", "data.max_train_items=16",
        "data.max_val_items=4", "data.auto_prepare.sizes=[24,4,4]", "extras.print_config=false", "callbacks=none"]


def test_paper_experiments_fail_fast_naming_what_is_missing(tmp_path):
    for experiment, dataset, model in (("clotho_mcl5", "clotho", "Qwen/Qwen2-Audio-7B-Instruct"),
                                       ("audiocaps_mle", "audiocaps", "Qwen/Qwen2-Audio-7B-Instruct")):
        start = time.time()
        proc = run_train(f"experiment={experiment}", f"paths.data_dir={tmp_path}/data", log_dir=tmp_path / "logs")
        assert proc.returncode != 0
        assert time.time() - start < 60  # generous on a loaded machine; typically ~10 s
        err = proc.stderr.strip().splitlines()[-1]
        assert err.startswith("error: ") and f"dataset '{dataset}'" in err and "python scripts/prepare_data.py" in err
        assert f"model {model} is not in the local Hugging Face cache" in err and "huggingface-cli download" in err
        assert "Loading weights" not in proc.stderr + proc.stdout


def test_corrupt_split_is_named(tmp_path):
    data = tmp_path / "data" / "synthetic" / "audio"
    data.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (data / f"synth_audio_{split}.hdf5").write_bytes(b"not an hdf5 file" * 100)
    proc = run_train(*DEMO, f"paths.data_dir={tmp_path}/data", log_dir=tmp_path / "logs")
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()[-1]
    assert "synth_audio_train.hdf5" in err and "corrupt or truncated" in err
    assert (data / "synth_audio_train.hdf5").read_bytes() == b"not an hdf5 file" * 100  # left as it was


def test_audio_demo_end_to_end_and_cached(tmp_path):
    args = [*DEMO, f"paths.data_dir={tmp_path}/data"]
    proc = run_train(*args, log_dir=tmp_path / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = tmp_path / "data" / "tiny_bases" / "qwen2_audio"
    assert (base / "config.json").exists() and (base / "processor_config.json").exists()
    stamp = (base / "model.safetensors").stat().st_mtime
    with sqlite3.connect(tmp_path / "logs" / "mlflow.db") as db:
        metrics = dict(db.execute("select key, value from latest_metrics").fetchall())
        params = dict(db.execute("select key, value from params").fetchall())
    assert params["mcl.num_hypotheses"] == "3" and params["mcl.mode"] == "relaxed-wta"
    assert {"val/wta_loss", "val/hyp0_loss", "val/win_rate_hyp2", "train/loss_epoch"} <= set(metrics)
    # second run: data and tiny base are reused, not rebuilt
    proc = run_train(*args, log_dir=tmp_path / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (base / "model.safetensors").stat().st_mtime == stamp
    assert "preparing the synthetic dataset" not in proc.stdout + proc.stderr
