"""eval.py end to end on tiny demo runs: predictions, metrics, MLflow, sweeps, fail-fast checks, collector.

The translation runs (MCL K = 3, MLE, MoE) are conftest's session fixture `translation_runs`, trained
once per session on the shared `demo_data` folder.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from helpers import AUDIO_DEMO, ROOT, eval_predictions, run_eval, run_script, train_demo


def test_mcl_eval_writes_K_candidates_metrics_and_mlflow(translation_runs, tmp_path):
    import sacrebleu

    proc = run_eval(f"ckpt_path={translation_runs['mcl']}", "decoding=mcl_beam2", log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = eval_predictions(tmp_path)
    assert len(rows) == 8 and all(len(r["candidates"]) == 3 for r in rows)
    assert all([c["hypothesis"] for c in r["candidates"]] == [0, 1, 2] for r in rows)
    summary = json.loads(next(tmp_path.glob("eval/runs/*/metrics.json")).read_text())
    m = summary["metrics"]
    assert summary["scheme"] == "LoRA-MCL (relaxed-wta)" and summary["num_hypotheses"] == 3
    assert m["forward_passes"] == 6  # K hypotheses x beam 2
    # independent recomputation from the written predictions: corpus BLEU over all references of
    # every item; items may have different numbers of references, so reference stream r holds the
    # r-th reference of each item or None (sacrebleu 2.6 drops None, not "", from an item's references)
    depth = max(len(r["references"]) for r in rows)
    streams = [[r["references"][i] if i < len(r["references"]) else None for r in rows] for i in range(depth)]
    for k in range(3):
        hyps = [r["candidates"][k]["text"] for r in rows]
        assert m[f"bleu_hyp{k}"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams, tokenize="13a").score,
                                                  abs=1e-6)
    best = [max(sacrebleu.sentence_bleu(c["text"], r["references"]).score for c in r["candidates"]) for r in rows]
    assert m["oracle_bleu"] == pytest.approx(sum(best) / len(best), abs=1e-6)
    assert sum(m[f"win_rate_hyp{k}"] for k in range(3)) == pytest.approx(1.0)
    assert 0 < m["oracle_nll"] < 20
    # semantic metrics (metrics.semantic=auto, the packaged MiniLM): recomputed with sentence-transformers
    from sentence_transformers import SentenceTransformer, util

    from loramcl.metrics.semantic import model_source

    st = SentenceTransformer(model_source("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    sims, dists = [], []
    for r in rows:
        cands = st.encode([c["text"] for c in r["candidates"]], convert_to_tensor=True)
        sim = util.cos_sim(cands, st.encode(r["references"], convert_to_tensor=True)).mean(dim=1)
        sims.append(float(sim.max()))
        pair = util.cos_sim(cands, cands)
        dists.append(float(sum(0 if r["candidates"][i]["text"] == r["candidates"][j]["text"] else 1 - pair[i, j]
                               for i in range(3) for j in range(i + 1, 3)) / 3))
        for k, c in enumerate(r["candidates"]):
            assert c["metrics"]["semantic_similarity"] == pytest.approx(100 * float(sim[k]), abs=1e-3)
    assert m["oracle_semantic_similarity"] == pytest.approx(100 * sum(sims) / len(sims), abs=1e-3)
    assert m["semantic_diversity"] == pytest.approx(100 * sum(dists) / len(dists), abs=1e-3)
    run = json.loads(next(tmp_path.glob("eval/runs/*/mlflow_run.json")).read_text())
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tags = dict(db.execute("select key, value from tags where key='loramcl.kind'").fetchall())
        keys = {k for (k,) in db.execute("select key from latest_metrics")}
        params = dict(db.execute("select key, value from params where key like 'eval.%'").fetchall())
        run_ids = {i for (i,) in db.execute("select run_uuid from runs")}
    assert tags == {"loramcl.kind": "eval"}
    assert {"oracle_bleu", "pairwise_bleu", "div_2", "oracle_nll", "forward_passes", "semantic_diversity",
            "oracle_semantic_similarity"} <= keys
    assert run["run_id"] in run_ids and run["experiment"].startswith("eval_")
    assert params["eval.decoding"] == "mcl_beam2" and params["eval.task_type"] == "translation"


@pytest.mark.slow  # suite time: the table rehearsal (test_reproduce) runs eval.py -m and collects by default;
# test_golden pins beam / DBS / nucleus outputs, test_collect_results the collector's CLI
def test_one_output_sweep_is_one_multirun(translation_runs, tmp_path):
    """MLE: beam, DBS and a sampler in one `-m` call; every job gives K = 3 candidates per item."""
    proc = run_eval("-m", f"ckpt_path={translation_runs['mle']}", "decoding=mle_beam,mle_dbs,mle_sampling_nucleus",
                    log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = eval_predictions(tmp_path)
    assert len(jobs) == 3
    for rows in jobs:
        assert len(rows) == 8 and all(len(r["candidates"]) == 3 for r in rows)
    # the collector turns the store into CSV / LaTeX / plot
    out = tmp_path / "results"
    proc = run_script([ROOT / "scripts" / "collect_results.py", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                       "--all", "--out", out], seconds=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    csv = next(out.glob("*.csv")).read_text().splitlines()
    assert len(csv) == 1 + 3 and all("LoRA-MLE" in line for line in csv[1:])
    assert next(out.glob("*.tex")).read_text().count("textbf") >= 1
    assert next(out.glob("*.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("decoding", ["moe_standard",  # the other two are pinned by test_golden; slow for suite time
                                      pytest.param("moe_sampled_expert", marks=pytest.mark.slow),
                                      pytest.param("moe_forced", marks=pytest.mark.slow)])
def test_moe_variants_give_K_candidates(translation_runs, tmp_path, decoding):
    proc = run_eval(f"ckpt_path={translation_runs['moe']}", f"decoding={decoding}", "metrics.oracle_nll=false",
                    log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = eval_predictions(tmp_path)
    assert len(rows) == 8 and all(len(r["candidates"]) == 3 for r in rows)


@pytest.mark.parametrize("overrides,message", [
    (("num_hypotheses=5",), "num_hypotheses=5 but"),
    (("backbone=Qwen2-Audio-7B-Instruct",), "backbone=Qwen2-Audio-7B-Instruct but"),
    (("decoding=mle_beam",), "is for one-output models"),
])
def test_mismatches_fail_before_decoding(translation_runs, tmp_path, overrides, message):
    args = [f"ckpt_path={translation_runs['mcl']}", "decoding=mcl_beam1", *overrides]
    proc = run_eval(*args, log_dir=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, proc.stderr[-2000:]
    assert "decoding (" not in proc.stderr  # no progress bar: nothing was decoded
    assert not list(tmp_path.glob("eval/**/predictions.jsonl"))


def test_corrupt_checkpoint_is_named_and_kept(translation_runs, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(translation_runs["mcl"], run)
    ckpt = next(run.glob("checkpoints/K3/step*.ckpt"))
    for other in run.glob("checkpoints/K3/*.ckpt"):
        if other != ckpt:
            other.unlink()
    ckpt.write_bytes(b"garbage" * 10)
    proc = run_eval(f"ckpt_path={ckpt}", "decoding=mcl_beam1", log_dir=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("error: ") and "cannot be read as a checkpoint" in last
    assert ckpt.read_bytes() == b"garbage" * 10


def test_a_sweep_skips_methods_that_do_not_suit_the_run(translation_runs, tmp_path):
    """The issue's one-multirun sweep on an MCL run: beam search / TTA are skipped with a warning."""
    proc = run_eval("-m", f"ckpt_path={translation_runs['mcl']}", "decoding=mcl_beam1,mle_beam,tta_beam1",
                    log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(eval_predictions(tmp_path)) == 1
    out = proc.stdout + proc.stderr
    assert "skipped: decoding=mle_beam is for one-output models" in out
    assert "skipped: decoding=tta_beam1 is for one-output models" in out
    # outside a multirun the same mismatch is an error; TTA on text is refused for the MLE run too
    proc = run_eval(f"ckpt_path={translation_runs['mle']}", "decoding=tta_beam1", log_dir=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "(test-time augmentation) is defined for audio and image inputs" in last


def test_mle_run_refuses_hypothesis_decoding(translation_runs, tmp_path):
    proc = run_eval(f"ckpt_path={translation_runs['mle']}", "decoding=mcl_beam1", log_dir=tmp_path)
    assert proc.returncode != 0 and "decodes each of the K hypotheses" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # suite time; the audio table's rehearsal (test_reproduce, slow) decodes tta_beam1/2/K too
def test_audio_tta_masks_real_whisper_features(audio_assets, tmp_path):
    """TTA on the tiny Qwen2-Audio: K masked copies of each clip, each decoded with beam 2."""
    run = train_demo("demo_audio_mle", AUDIO_DEMO, audio_assets, tmp_path / "train")
    proc = run_eval(f"ckpt_path={run}", "decoding=tta_beam2", "decoding.tta.strength=strong", "mlflow.enabled=false",
                    log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = eval_predictions(tmp_path)
    assert len(rows) == 4 and all(len(r["candidates"]) == 3 for r in rows)
    m = json.loads(next(tmp_path.glob("eval/runs/*/metrics.json")).read_text())["metrics"]
    assert {"oracle_bleu_4", "oracle_meteor", "oracle_cider_d", "div_1", "mbleu_4"} <= set(m)
    assert m["forward_passes"] == 6
