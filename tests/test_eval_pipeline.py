"""eval.py end to end on tiny demo runs: predictions, metrics, MLflow, sweeps, fail-fast checks, collector."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from test_framework import ROOT, run_train

TRANSLATION = ["model.auto_pretrain.steps=10", "trainer.max_epochs=1", "data.auto_prepare.sizes=[64,8,8]",
               "callbacks=model_checkpoint", "extras.print_config=false", "logger=none"]
AUDIO = ["model.auto_pretrain.steps=10", "trainer.max_epochs=1", "data.max_train_items=16", "data.max_val_items=4",
         "data.auto_prepare.sizes=[24,4,4]", "callbacks=model_checkpoint", "extras.print_config=false", "logger=none"]


def run_eval(*overrides: str, log_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), *overrides, f"paths.log_dir={log_dir}",
                           "generation.max_new_tokens=12"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny translation runs (MCL K = 3, MLE, MoE 3 experts) sharing one data folder and base."""
    root = tmp_path_factory.mktemp("evalruns")
    out = {}
    for scheme in ("mcl", "mle", "moe"):
        proc = run_train(f"experiment=demo_translation_{scheme}", *TRANSLATION, f"paths.data_dir={root}/data",
                         log_dir=root / "train")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[scheme] = next((root / "train").glob(f"demo_translation_{scheme}/runs/*"))
    out["root"] = root
    return out


def predictions(log_dir) -> list[list[dict]]:
    files = sorted(log_dir.glob("eval/**/predictions.jsonl"))
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in files]


def test_mcl_eval_writes_K_candidates_metrics_and_mlflow(runs, tmp_path):
    import sacrebleu

    proc = run_eval(f"ckpt_path={runs['mcl']}", "decoding=mcl_beam2", log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = predictions(tmp_path)
    assert len(rows) == 8 and all(len(r["candidates"]) == 3 for r in rows)
    assert all([c["hypothesis"] for c in r["candidates"]] == [0, 1, 2] for r in rows)
    summary = json.loads(next(tmp_path.glob("eval/runs/*/metrics.json")).read_text())
    m = summary["metrics"]
    assert summary["scheme"] == "LoRA-MCL (relaxed-wta)" and summary["num_hypotheses"] == 3
    assert m["forward_passes"] == 6  # K hypotheses x beam 2
    # independent recomputation from the written predictions
    for k in range(3):
        hyps = [r["candidates"][k]["text"] for r in rows]
        refs = [[r["references"][0] for r in rows]]
        if all(len(r["references"]) == len(rows[0]["references"]) for r in rows):
            refs = [list(col) for col in zip(*[r["references"] for r in rows])]
            assert m[f"bleu_hyp{k}"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score, abs=1e-6)
    best = [max(sacrebleu.sentence_bleu(c["text"], r["references"]).score for c in r["candidates"]) for r in rows]
    assert m["oracle_bleu"] == pytest.approx(sum(best) / len(best), abs=1e-6)
    assert sum(m[f"win_rate_hyp{k}"] for k in range(3)) == pytest.approx(1.0)
    assert 0 < m["oracle_nll"] < 20
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tags = dict(db.execute("select key, value from tags where key='loramcl.kind'").fetchall())
        keys = {k for (k,) in db.execute("select key from latest_metrics")}
        params = dict(db.execute("select key, value from params where key like 'eval.%'").fetchall())
    assert tags == {"loramcl.kind": "eval"}
    assert {"oracle_bleu", "pairwise_bleu", "div_2", "oracle_nll", "forward_passes"} <= keys
    assert params["eval.decoding"] == "mcl_beam2" and params["eval.task_type"] == "translation"


def test_one_output_sweep_is_one_multirun(runs, tmp_path):
    """MLE: beam, DBS and a sampler in one `-m` call; every job gives K = 3 candidates per item."""
    proc = run_eval("-m", f"ckpt_path={runs['mle']}", "decoding=mle_beam,mle_dbs,mle_sampling_nucleus", log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = predictions(tmp_path)
    assert len(jobs) == 3
    for rows in jobs:
        assert len(rows) == 8 and all(len(r["candidates"]) == 3 for r in rows)
    # the collector turns the store into CSV / LaTeX / plot
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect_results.py"), "--tracking-uri",
                           f"sqlite:///{tmp_path}/mlflow.db", "--all", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    csv = next(out.glob("*.csv")).read_text().splitlines()
    assert len(csv) == 1 + 3 and all("LoRA-MLE" in line for line in csv[1:])
    assert next(out.glob("*.tex")).read_text().count("textbf") >= 1
    assert next(out.glob("*.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("decoding", ["moe_standard", "moe_sampled_expert", "moe_forced"])
def test_moe_variants_give_K_candidates(runs, tmp_path, decoding):
    proc = run_eval(f"ckpt_path={runs['moe']}", f"decoding={decoding}", "metrics.oracle_nll=false", log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = predictions(tmp_path)
    assert len(rows) == 8 and all(len(r["candidates"]) == 3 for r in rows)


@pytest.mark.parametrize("overrides,message", [
    (("num_hypotheses=5",), "num_hypotheses=5 but"),
    (("backbone=Qwen2-Audio-7B-Instruct",), "backbone=Qwen2-Audio-7B-Instruct but"),
    (("decoding=mle_beam",), "is for one-output models"),
])
def test_mismatches_fail_before_decoding(runs, tmp_path, overrides, message):
    args = [f"ckpt_path={runs['mcl']}", "decoding=mcl_beam1", *overrides]
    proc = run_eval(*args, log_dir=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, proc.stderr[-2000:]
    assert "decoding (" not in proc.stderr  # no progress bar: nothing was decoded
    assert not list(tmp_path.glob("eval/**/predictions.jsonl"))


def test_corrupt_checkpoint_is_named_and_kept(runs, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(runs["mcl"], run)
    ckpt = next(run.glob("checkpoints/K3/step*.ckpt"))
    for other in run.glob("checkpoints/K3/*.ckpt"):
        if other != ckpt:
            other.unlink()
    ckpt.write_bytes(b"garbage" * 10)
    proc = run_eval(f"ckpt_path={ckpt}", "decoding=mcl_beam1", log_dir=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("error: ") and "cannot be read as a checkpoint" in last
    assert ckpt.read_bytes() == b"garbage" * 10


def test_a_sweep_skips_methods_that_do_not_suit_the_run(runs, tmp_path):
    """The issue's one-multirun sweep on an MCL run: beam search / TTA are skipped with a warning."""
    proc = run_eval("-m", f"ckpt_path={runs['mcl']}", "decoding=mcl_beam1,mle_beam,tta_beam1", log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(predictions(tmp_path)) == 1
    out = proc.stdout + proc.stderr
    assert "skipped: decoding=mle_beam is for one-output models" in out
    assert "skipped: decoding=tta_beam1 is for one-output models" in out
    # outside a multirun the same mismatch is an error; TTA on text is refused for the MLE run too
    proc = run_eval(f"ckpt_path={runs['mle']}", "decoding=tta_beam1", log_dir=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "(test-time augmentation) is defined for audio and image inputs" in last


def test_mle_run_refuses_hypothesis_decoding(runs, tmp_path):
    proc = run_eval(f"ckpt_path={runs['mle']}", "decoding=mcl_beam1", log_dir=tmp_path)
    assert proc.returncode != 0 and "decodes each of the K hypotheses" in proc.stderr.strip().splitlines()[-1]


def test_audio_tta_masks_real_whisper_features(tmp_path):
    """TTA on the tiny Qwen2-Audio: K masked copies of each clip, each decoded with beam 2."""
    proc = run_train("experiment=demo_audio_mle", *AUDIO, f"paths.data_dir={tmp_path}/data", log_dir=tmp_path / "train")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "train").glob("demo_audio_mle/runs/*"))
    proc = run_eval(f"ckpt_path={run}", "decoding=tta_beam2", "decoding.tta.strength=strong", "mlflow.enabled=false",
                    log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = predictions(tmp_path)
    assert len(rows) == 4 and all(len(r["candidates"]) == 3 for r in rows)
    m = json.loads(next(tmp_path.glob("eval/runs/*/metrics.json")).read_text())["metrics"]
    assert {"oracle_bleu_4", "oracle_meteor", "oracle_cider_d", "div_1", "mbleu_4"} <= set(m)
    assert m["forward_passes"] == 6
