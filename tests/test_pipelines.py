"""Paper audio experiments fail fast without data or weights; the CPU audio demo runs end to end
(synthetic data and tiny base built on first use, reused afterwards) and logs to MLflow.

`test_audio_demo_end_to_end_and_cached` is the test of the first-use build (its own data folder, small
sizes); the translation and bilingual demos train on the session's `demo_data`, whose data sets and
tiny bases conftest's `*_assets` fixtures build once.
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from loramcl.errors import MissingResource
from loramcl.preflight import preflight
from helpers import AUDIO_ASSETS, ROOT, TRANSLATION_ASSETS, compose_train, run_script, run_train, timeout

DEMO = ["experiment=demo_audio_mcl", *AUDIO_ASSETS, "trainer.max_epochs=1", "data.max_train_items=16",
        "data.max_val_items=4", "extras.print_config=false", "callbacks=none"]


PAPER = [("clotho_mcl5", "clotho", "Qwen/Qwen2-Audio-7B-Instruct"),
         ("clotho_mle", "clotho", "Qwen/Qwen2-Audio-7B-Instruct"),
         ("audiocaps_mcl5", "audiocaps", "Qwen/Qwen2-Audio-7B-Instruct"),
         ("audiocaps_mle", "audiocaps", "Qwen/Qwen2-Audio-7B-Instruct"),
         ("textcaps_mcl3", "textcaps", "llava-hf/llava-v1.6-vicuna-7b-hf"),
         ("textcaps_mle", "textcaps", "llava-hf/llava-v1.6-vicuna-7b-hf"),
         ("textcaps_bilingual_mcl2", "textcaps_bilingual", "llava-hf/llava-v1.6-vicuna-7b-hf"),
         ("textcaps_bilingual_mle", "textcaps_bilingual", "llava-hf/llava-v1.6-vicuna-7b-hf"),
         ("alma_ende_mcl3", "wmt_ende", "haoranxu/ALMA-7B-Pretrain"),
         ("alma_ende_mle", "wmt_ende", "haoranxu/ALMA-7B-Pretrain")]


@pytest.mark.parametrize("experiment,dataset,model", PAPER)
def test_every_paper_experiment_names_missing_data_and_weights(tmp_path, monkeypatch, experiment, dataset, model):
    """The preflight of each paper experiment (composed from the real configs) names both."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the Hub
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    cfg = compose_train(f"experiment={experiment}", f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs")
    with pytest.raises(MissingResource) as err:
        preflight(cfg)
    message = str(err.value)
    assert f"dataset '{dataset}'" in message and "python scripts/prepare_data.py" in message
    assert f"model {model} is not in the local Hugging Face cache" in message


def test_paper_experiments_fail_fast_naming_what_is_missing(tmp_path):
    # one experiment through the CLI (every paper experiment is checked in process by the test above)
    for experiment, dataset, model in (("clotho_mcl5", "clotho", "Qwen/Qwen2-Audio-7B-Instruct"),):
        start = time.time()
        proc = run_train(f"experiment={experiment}", f"paths.data_dir={tmp_path}/data", log_dir=tmp_path / "logs")
        assert proc.returncode != 0
        assert time.time() - start < timeout(120)  # typically ~10 s; loading a 7B model would take minutes
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


@pytest.mark.slow  # suite time: the audio demo trains by default in conftest's audio_mcl_run (test_golden)
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


@pytest.mark.slow  # 3 min (its tiny LLaVA-NeXT pre-trains for 600 steps): the default suite's time budget
def test_bilingual_demo_specialises_by_language(bilingual_assets, tmp_path):
    """The full demo (data and a tiny LLaVA-NeXT pre-trained for 600 steps, built once per session by
    `bilingual_assets`): each MCL hypothesis writes >= 90 % of its greedy captions in one language and
    the two differ; the MLE mix is reported."""
    proc = run_train("experiment=demo_bilingual_mcl", "callbacks=none", "extras.print_config=false",
                     f"paths.data_dir={bilingual_assets}", log_dir=tmp_path / "logs", timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "logs").glob("demo_bilingual_mcl/runs/*"))
    summary = json.loads((run / "summary.json").read_text())
    mcl, mle = summary["models"]["mcl"], summary["models"]["mle"]
    assert summary["mcl_specialised"], mcl["language_shares"]
    assert all(max(s["en"], s["fr"]) >= 0.9 for s in mcl["language_shares"])
    assert sorted(mcl["dominant_language"]) == ["en", "fr"]
    assert len(mle["language_shares"]) == 1 and abs(sum(mle["language_shares"][0].values()) - 1) < 1e-9
    wins = mcl["val_win_rates_by_reference_language"]  # each language's references won by one hypothesis
    assert max(wins["en"]) > 0.9 and max(wins["fr"]) > 0.9 and wins["en"].index(max(wins["en"])) != wins["fr"].index(max(wins["fr"]))
    refs = summary["reference_language_shares"]
    assert 0.3 < refs["fr"] < 0.7 and refs["unknown"] == 0  # half of the captions are French
    rows = [json.loads(line) for line in (run / "predictions_mcl.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and all(len(r["candidates"]) == 2 for r in rows)
    with sqlite3.connect(tmp_path / "logs" / "mlflow.db") as db:
        keys = {k for (k,) in db.execute("select key from latest_metrics")}
    assert {"mcl/hyp0_share_fr", "mcl/hyp1_share_en", "mle/hyp0_share_fr", "mcl/specialised"} <= keys
    # scripts/analyse_hypotheses.py on the run folder: the language of a caption identifies its hypothesis,
    # and each hypothesis' most distinctive words are words of its language only
    from loramcl.language_id import ONLY_EN, ONLY_FR

    proc = run_script([ROOT / "scripts" / "analyse_hypotheses.py", str(run), "--no-mlflow"], seconds=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "hypothesis_analysis_mcl" / "analysis.json").read_text())
    assert report["identifiability"]["accuracy"] >= 0.95 and report["identifiability"]["chance"] == 0.5
    for entry, language in zip(report["per_index"], mcl["dominant_language"]):
        own, other = (ONLY_EN, ONLY_FR) if language == "en" else (ONLY_FR, ONLY_EN)
        words = [w for w, _ in entry["distinctive_words"][:5]]
        assert not set(words) & other and len(set(words) & own) >= 3, (language, words)
        assert entry["language_shares"][language] >= 0.9
    mle_report = json.loads((run / "hypothesis_analysis_mle" / "analysis.json").read_text())
    assert mle_report["identifiability"] is None and "at least 2 distinct" in mle_report["note"]


@pytest.mark.slow  # suite time: the table rehearsal (test_reproduce) trains the translation demo by default
def test_translation_demo_pipeline(translation_assets, tmp_path):
    """The translation demo on the session's data set and tiny base: trains, logs to MLflow, rebuilds nothing."""
    base = translation_assets / "tiny_bases" / "alma"
    assert (base / "tokenizer.json").exists()
    stamp = (base / "model.safetensors").stat().st_mtime
    proc = run_train("experiment=demo_translation_mcl", *TRANSLATION_ASSETS, "trainer.max_epochs=1", "callbacks=none",
                     "extras.print_config=false", f"paths.data_dir={translation_assets}", log_dir=tmp_path / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (base / "model.safetensors").stat().st_mtime == stamp
    assert "preparing the synthetic dataset" not in proc.stdout + proc.stderr
    with sqlite3.connect(tmp_path / "logs" / "mlflow.db") as db:
        params = dict(db.execute("select key, value from params").fetchall())
    assert params["mcl.num_hypotheses"] == "3" and params["lora.target_modules"] == "all-linear"
