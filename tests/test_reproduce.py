"""scripts/reproduce.py: every table composes; without data it fails at once naming what is missing;
a tiny rehearsal (the translation table on the CPU demo) runs end to end, is interrupted and
finished without training or evaluating anything twice (counted in MLflow); the results layout
(pivot, paper column, plot) from real MLflow runs; the other tables' rehearsals (slow) and one on
the local SLURM cluster, with its dependencies (slow, slurm).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import AUDIO_ASSETS, ROOT, TRANSLATION_ASSETS, run_script, timeout

TABLES = sorted(p.stem for p in (ROOT / "configs" / "table").glob("*.yaml"))
# The translation table cut to one MLE row and the MCL row, one and two methods, 4 steps, 4 items
TINY_MT = ["table=mt_ende", "scale=demo", "scale.steps=4", "scale.max_items=4", "~table.rows.mle_r48",
           "table.mle_methods=[mle_beam]", "table.rows.mcl.methods=[mcl_beam1,test_loss]",
           "train_overrides=[" + ",".join(f'"{o}"' for o in TRANSLATION_ASSETS) + "]",
           'eval_overrides=["generation.max_new_tokens=8"]']


def reproduce_args(overrides: list[str], data_dir: Path, tmp_path: Path) -> list[str]:
    return [ROOT / "scripts" / "reproduce.py", *overrides, f"paths.data_dir={data_dir}",
            f"paths.log_dir={tmp_path / 'logs'}", f"results_dir={tmp_path / 'results'}"]


def finished_runs(log_dir: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{log_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"]


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------------
# Composition and the missing-data check (no training)


def test_every_table_composes_and_rows_share_trainings():
    from loramcl.reproduce.main import compose_all

    plans = {table: compose_all(ROOT, [f"table={table}"])[1] for table in TABLES}  # the paper scale
    counts = {key: (len(t.rows), len(t.trainings()), len(t.evaluations())) for key, t in plans.items()}
    assert counts["audio_loss_vs_k"] == (14, 14, 14)  # 7 rows x 2 datasets, one test loss each
    assert counts["audio_quality_diversity"] == (14, 14, 72)  # (13 + 3 + 5 x 4) x 2
    assert counts["textcaps_bilingual"] == (6, 1, 12)  # MLE (2 methods) and MCL (2) x (all, en, fr) of ONE run
    assert counts["textcaps"] == (4, 4, 16) and counts["mt_ende"] == (3, 3, 14)
    # a paper figure belongs to the method the paper used: none beside the methods it did not run (mcl_dbs)
    french = next(r for r in plans["textcaps_bilingual"].rows if r.name == "mcl_fr")
    assert french.paper_values("mcl_beam1") == {"oracle_spider": 46.4, "mbleu_4": 2.7}
    assert french.paper_values("mcl_dbs") == {}
    assert counts["toy"] == (2, 2, 0)
    # the same training in two tables is one run (LoRA-MLE r = 8 on AudioCaps)
    loss = {r.id: r.training.key for r in plans["audio_loss_vs_k"].rows}
    quality = {r.id: r.training.key for r in plans["audio_quality_diversity"].rows}
    assert loss["mle_r8/AudioCaps"] == quality["mle/AudioCaps"] != loss["mle_r8/Clotho"]
    assert loss["mcl_k5/Clotho"] == quality["mcl_relaxed/Clotho"]
    assert len({loss["mle_r8/Clotho"], loss["mle_r24/Clotho"], loss["mle_r40/Clotho"]}) == 3
    # every paper training's key is pinned: a change that would retrain them (hundreds of GPU hours)
    # fails here. A change that must change them: regenerate the file and say so in the commit
    pinned = json.loads((ROOT / "tests" / "fixtures" / "paper_training_keys.json").read_text())
    assert {table: {r.id: r.training.key for r in plan.rows} for table, plan in plans.items()} == pinned


def test_a_training_key_follows_what_is_trained_and_not_how_it_is_watched():
    """The key ignores callbacks, loggers, paths, the run name and the checkpoint / validation cadence;
    it follows the global batch (per-device batch x processes x accumulation), the precision, the
    schedule, the seed and a warm start."""
    from loramcl.identity import training_key

    from helpers import compose_train

    def key(*overrides: str, **kw) -> str:
        return training_key(compose_train("experiment=alma_ende_mcl3", *overrides), **kw)

    base = key()
    for unrelated in ("+callbacks.collapse_monitor.new_option=3", "callbacks.model_checkpoint.every_n_train_steps=7",
                      "trainer.val_check_interval=0.5", "trainer.log_every_n_steps=1", "task_name=other",
                      "logger=none", "extras.print_config=false", "data.num_workers=8", "data.val_batch_size=1",
                      "paths.log_dir=/elsewhere", "trainer=ddp", "model.gradient_checkpointing=true",
                      "lora.implementation=reference", "ckpt_path=auto"):
        assert key(unrelated) == base, unrelated
    assert key("trainer=ddp", gpus=4) != base  # 4 processes: 4 times the global batch
    assert key("trainer=ddp", "data.batch_size=1", gpus=2) == base  # 2 x 1 = 1 x 2
    assert key("trainer=ddp", "trainer.devices=2", "data.batch_size=1") == base
    assert key("trainer.accumulate_grad_batches=1", "data.batch_size=4") != base  # not the same steps
    for different in ("data.batch_size=4", "trainer.precision=32-true", "trainer.max_epochs=3", "seed=1",
                      "lora.r=32", "mcl.num_hypotheses=5", "optim.optimizer.lr=1e-3", "data.max_source_tokens=128",
                      "model.name_or_path=other/model", "ckpt_path=/runs/elsewhere/checkpoints/K3/last.ckpt"):
        assert key(different) != base, different


@pytest.mark.slow  # suite time (the default rehearsal composes mt_ende at the demo scale)
def test_the_demo_scale_keeps_every_rows_scheme():
    from loramcl.reproduce.main import compose_all

    demo = compose_all(ROOT, ["table=audio_quality_diversity", "scale=demo"])[1]
    # AudioCaps and Clotho rows train the same config on the demo: one training, one evaluation each
    assert (len(demo.rows), len(demo.trainings()), len(demo.evaluations())) == (14, 7, 36)
    cfgs = {r.name: demo.configs[r.training.key] for r in demo.rows}
    assert cfgs["mcl_annealed"].mcl.mode == "annealed-wta" and cfgs["random"].mcl.mode == "random-wta"
    assert cfgs["mcl_relaxed_small"].mcl.epsilon == 0.0005 and cfgs["moe"].mcl.mode == "moe"
    assert {str(c.data.name) for c in cfgs.values()} == {"synth_audio"}
    assert demo.configs[demo.rows[0].training.key].trainer.max_steps == 40


def test_a_bad_table_or_method_fails_in_one_line(tmp_path):
    proc = run_script([ROOT / "scripts" / "reproduce.py", "table=nope", "--dry-run"], seconds=120)
    assert proc.returncode == 2 and "no table 'nope'" in proc.stderr and "mt_ende" in proc.stderr
    proc = run_script([ROOT / "scripts" / "reproduce.py", "table=mt_ende", "table.rows.mcl.methods=[beam_me_up]",
                       "--dry-run"], seconds=120)
    assert proc.returncode == 2 and "row mcl: unknown decoding(s) beam_me_up" in proc.stderr


def test_without_data_or_weights_it_names_every_missing_thing_once_and_starts_nothing(tmp_path):
    """The paper table on a machine without Clotho, AudioCaps or Qwen2-Audio: one error listing each
    once, with the command that provides it; no run folder, no MLflow store."""
    start = time.monotonic()
    proc = run_script(reproduce_args(["table=audio_quality_diversity"], tmp_path / "no_data", tmp_path),
                      seconds=300, env={"HF_HUB_OFFLINE": "1"})
    seconds = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "needs 3 thing(s)" in err and "nothing was started" in err
    assert err.count("dataset 'clotho'") == 1 and err.count("dataset 'audiocaps'") == 1
    assert err.count("model Qwen/Qwen2-Audio-7B-Instruct") == 1
    assert "prepare_data.py clotho" in err and "prepare_data.py audiocaps" in err and "huggingface-cli download" in err
    logs = tmp_path / "logs"
    assert not (logs / "mlflow.db").exists() and not list(logs.glob("*/runs"))
    print(f"missing-data check: {seconds:.1f} s")  # reported, never asserted


def test_scores_per_language_keep_only_that_languages_references():
    from loramcl.evaluation.decoding_run import only_language

    records = [{"id": "a", "references": ["a dog", "un chien", "the dog"], "reference_languages": ["en", "fr", "en"]},
               {"id": "b", "references": ["a cat"], "reference_languages": ["en"]}]
    assert only_language(records, "fr") == [{**records[0], "references": ["un chien"]}]
    assert [r["references"] for r in only_language(records, "en")] == [["a dog", "the dog"], ["a cat"]]


def test_references_language_needs_references_in_that_language(translation_runs):
    """eval.py checks it on the test split before the model is built (monolingual data: refused)."""
    from hydra.utils import instantiate

    from loramcl.errors import ConfigError
    from loramcl.evaluation.decoding_run import check_reference_language
    from loramcl.runs import RunFolder

    datamodule = instantiate(RunFolder(translation_runs["mcl"]).config().data)
    datamodule.setup("test")
    with pytest.raises(ConfigError, match="references_language=fr: the test references of .* are in no recorded"):
        check_reference_language(datamodule, "fr")


# ----------------------------------------------------------------------------------------------------
# The results layout from real MLflow runs (no training)


def test_pivot_table_with_paper_column_from_mlflow_runs(tmp_path):
    """The loss table: evaluations logged to a real MLflow store as eval.py logs them are found by
    their group tag and land in the pivot CSV / LaTeX beside the paper's (unverified) figures."""
    from loramcl.reproduce.main import collect, compose_all
    from loramcl.identity import EVAL_KEY_TAG, METRICS_VERSION, METRICS_VERSION_TAG
    from loramcl.reproduce.state import SWEEP_TAG

    def current(ev) -> dict:  # computed now: the table's settings, today's metric definitions
        return {EVAL_KEY_TAG: ev.key, METRICS_VERSION_TAG: str(METRICS_VERSION)}
    from loramcl.utils.mlflow_store import MLflowRun

    log_dir = tmp_path / "logs"
    cfg, table = compose_all(ROOT, ["table=audio_loss_vs_k", f"paths.log_dir={log_dir}",
                                    f"results_dir={tmp_path / 'results'}"])
    uri = str(cfg.mlflow_uri)
    ours = {"mle_r8/Clotho": 2.9, "mcl_k5/Clotho": 2.5, "mcl_k5/AudioCaps": 2.1}
    for row in table.rows:
        if row.id in ours:
            (ev,) = row.evaluations
            run = MLflowRun(uri, table.experiment, str(log_dir / "mlartifacts"), row.id,
                            tags={SWEEP_TAG: ev.sweep, "loramcl.kind": "eval", **current(ev)})
            run.log_params({"eval.decoding": ev.decoding, "eval.method": "Test loss (teacher-forced)"})
            run.log_metrics({"oracle_nll": ours[row.id]})
            run.finish()
    written = collect(table, cfg, log_dir, echo=lambda *a: None)
    rows = {(r["row"], r["group"]): r for r in read_csv(tmp_path / "results" / "audio_loss_vs_k" / "audio_loss_vs_k.csv")}
    assert len(rows) == 14
    assert float(rows["mcl_k5", "Clotho"]["oracle_nll"]) == 2.5 and rows["mcl_k5", "Clotho"]["status"] == "done"
    assert float(rows["mcl_k5", "Clotho"]["paper_oracle_nll"]) == 2.643
    assert rows["mle_r40", "Clotho"]["oracle_nll"] == "" and rows["mle_r40", "Clotho"]["status"] == "missing"
    assert rows["mle_r40", "Clotho"]["paper_oracle_nll"] == ""  # not known
    tex = (tmp_path / "results" / "audio_loss_vs_k" / "audio_loss_vs_k.tex").read_text()
    # one line per row label, columns AudioCaps | paper | Clotho | paper; best of each column bold
    line = next(t for t in tex.splitlines() if t.startswith("LoRA-MCL, K = 5"))
    assert line == r"LoRA-MCL, K = 5 & \textbf{2.10} & 2.00$^\dagger$ & \textbf{2.50} & 2.64$^\dagger$ \\"
    assert r"NLL $\downarrow$ & AudioCaps & paper & Clotho & paper \\" in tex
    assert "secondary source" in tex
    assert {p.suffix for p in written} >= {".csv", ".tex", ".png", ".pdf"}


# ----------------------------------------------------------------------------------------------------
# A tiny rehearsal, interrupted and finished


def rehearsal_interrupted_and_rerun(tmp_path: Path, translation_assets: Path) -> list:
    """The cut-down translation rehearsal, interrupted and run again; returns its finished evaluation runs."""
    args = [sys.executable, *map(str, reproduce_args(TINY_MT, translation_assets, tmp_path))]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # 1. interrupted while the second training runs (Ctrl-C on the whole process group)
    # SIGINT back to its default in the child: a shell starts background jobs (`bash .ci/run &`) with SIGINT
    # ignored, which Python and its children would inherit, and Ctrl-C would then do nothing
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen, deadline = [], time.monotonic() + timeout(900)
    for line in proc.stdout:  # until the second training's train.py has started
        seen.append(line)
        if "training: running" in line and any(s.startswith("[2/2]") for s in seen):
            break
        assert time.monotonic() < deadline, "".join(seen)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=timeout(120))
    first = "".join(seen)
    assert "training: done in" in first and "evaluation (mle_beam): done" in first, first
    logs = tmp_path / "logs"
    assert len(finished_runs(logs, "rehearsal_mt_ende")) == 1  # the MLE row's evaluation only

    # 2. the same command finishes what is missing
    done = run_script(reproduce_args(TINY_MT, translation_assets, tmp_path), seconds=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert out.count("training: done before") == 1 and "evaluation: 1 method(s) done before" in out
    assert "evaluation (mcl_beam1,test_loss): done" in out and "3/3 lines complete" in out

    # 3. and a third time would do nothing at all: every training and evaluation is found done
    from loramcl.reproduce.main import compose_all
    from loramcl.reproduce.state import RunIndex, evaluation_done, finished_evaluations

    cfg, plan = compose_all(ROOT, [*TINY_MT, f"paths.data_dir={translation_assets}", f"paths.log_dir={tmp_path / 'logs'}"])
    index, finished = RunIndex(tmp_path / "logs"), finished_evaluations(str(cfg.mlflow_uri), plan.experiment)
    assert [index.state(t).status for t in plan.trainings()] == ["done", "done"]
    assert all(evaluation_done(e, finished) for e in plan.evaluations()) and len(plan.evaluations()) == 3

    # MLflow: each training finished once, each evaluation finished once
    for experiment in ("rehearsal_alma_ende_mle", "rehearsal_alma_ende_mcl3"):
        assert len(finished_runs(logs, experiment)) == 1, experiment
    evals = finished_runs(logs, "rehearsal_mt_ende")
    assert sorted(r.data.params["eval.decoding"] for r in evals) == ["mcl_beam1", "mle_beam", "test_loss"]

    # the run folders are named by the key of the config they saved (what reuse relies on), which
    # their identity.json records with the process count and the code version
    from loramcl.identity import code_version, read_identity, saved_key

    folders = sorted(logs.glob("rehearsal_*/runs/reproduce-*"))
    assert len(folders) == 2
    for folder in folders:
        assert folder.name == f"reproduce-{saved_key(folder)}"
        assert read_identity(folder) == {"key": saved_key(folder), "world_size": 1, "code_version": code_version()}

    # the table holds the evaluations' own numbers (their metrics.json), and the test loss of MCL
    rows = {r["decoding"]: r for r in read_csv(tmp_path / "results" / "rehearsal_mt_ende" / "mt_ende.csv")}
    assert set(rows) == {"mle_beam", "mcl_beam1", "test_loss"} and {r["status"] for r in rows.values()} == {"done"}
    for summary in logs.glob("eval/multiruns/*/*/metrics.json"):
        info = json.loads(summary.read_text())
        for key in ("oracle_bleu", "pairwise_bleu", "oracle_nll"):
            if key in info["metrics"]:
                assert float(rows[info["decoding"]][key]) == pytest.approx(info["metrics"][key], rel=1e-12)
    assert rows["test_loss"]["oracle_bleu"] == "" and float(rows["test_loss"]["oracle_nll"]) > 0
    assert float(rows["test_loss"]["oracle_nll"]) == pytest.approx(float(rows["mcl_beam1"]["oracle_nll"]), rel=1e-9)
    tex = (tmp_path / "results" / "rehearsal_mt_ende" / "mt_ende.tex").read_text()
    assert "LoRA-MLE, r = 16" in tex and "LoRA-MCL, K = 3" in tex and "LOO multi-ref BLEU" in tex
    assert (tmp_path / "results" / "rehearsal_mt_ende" / "mt_ende.png").stat().st_size > 10_000
    return evals


def test_rehearsal_interrupted_and_rerun_trains_and_evaluates_nothing_twice(tmp_path, translation_assets, browser):
    evals = rehearsal_interrupted_and_rerun(tmp_path, translation_assets)

    # the table's side-by-side page, opened in Chromium: each item shows every decoding method's
    # candidates (as many as its predictions.jsonl holds) and its source; each method's link opens
    # that item on the evaluation's own page
    from browser_driver import screenshot, side_by_side_rows

    from loramcl.utils.mlflow_store import artifact_dir

    page = tmp_path / "results" / "rehearsal_mt_ende" / "mt_ende_candidates.html"
    predictions = {}
    for run in evals:
        folder = artifact_dir(run)
        if (folder / "predictions.jsonl").is_file():
            predictions[run.data.params["eval.decoding"]] = [json.loads(x) for x in
                                                             (folder / "predictions.jsonl").read_text().splitlines()]
    assert sorted(predictions) == ["mcl_beam1", "mle_beam", "test_loss"]
    assert predictions.pop("test_loss") == []  # teacher-forced: no candidates, so not on the page
    browser.get(page.as_uri())
    rows = side_by_side_rows(browser)
    first = next(iter(predictions.values()))
    assert [r["id"] for r in rows] == [str(x["id"]) for x in first] and len(rows) == 4
    for r in rows:
        assert r["text"] and len(r["columns"]) == 2, r
        counts = sorted(len(c) for c in r["columns"])
        assert counts == sorted(len(next(x for x in recs if str(x["id"]) == r["id"])["candidates"])
                                for recs in predictions.values()), r
    screenshot(browser, "side_by_side_reproduce_mt_ende")
    link = rows[2]["links"][0]
    browser.get(link)
    assert browser.execute_script(f"return document.getElementById('{link.rsplit('#', 1)[1]}').dataset.id") == rows[2]["id"]


# ----------------------------------------------------------------------------------------------------
# Every other table's rehearsal (slow)

TINY = ["scale.steps=4", "scale.max_items=4", 'eval_overrides=["generation.max_new_tokens=8"]']
REHEARSALS = {
    "toy": [],
    "audio_loss_vs_k": "audio",
    "audio_quality_diversity": "audio",
    "textcaps": "bilingual",
    "textcaps_bilingual": "bilingual",
    "mt_ende": "translation",
}


@pytest.mark.slow
@pytest.mark.parametrize("table", [t for t in REHEARSALS])
def test_rehearsal_of_every_table_has_every_row_and_column(table, tmp_path, request):
    from loramcl.reproduce.main import compose_all

    assets = REHEARSALS[table]
    data_dir, extra = tmp_path / "data", []
    if assets:
        data_dir = request.getfixturevalue(f"{assets}_assets")
        asset_overrides = {"audio": AUDIO_ASSETS, "translation": TRANSLATION_ASSETS, "bilingual": []}[assets]
        if asset_overrides:
            extra = ["train_overrides=[" + ",".join(f'"{o}"' for o in asset_overrides) + "]"]
    overrides = [f"table={table}", "scale=demo", *TINY, *extra]
    proc = run_script(reproduce_args(overrides, data_dir, tmp_path), seconds=7200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    _, plan = compose_all(ROOT, [f"table={table}", "scale=demo"])
    out = tmp_path / "results" / f"rehearsal_{table}"
    rows = read_csv(out / f"{table}.csv")
    expected = sum(max(len(r.evaluations), 1) for r in plan.rows)
    assert len(rows) == expected and {r["status"] for r in rows} == {"done"}
    no_nll = {r.name for r in plan.rows if any(o == "metrics.oracle_nll=false" for e in r.evaluations
                                               for o in e.overrides)}  # scores per language
    for metric in plan.metrics:
        assert metric in rows[0], metric
        if metric in ("oracle_spice", "oracle_fense", "oracle_spider"):  # need jars / weights absent here
            continue
        expected = [r for r in rows if (r["decoding"] != "test_loss" or metric == "oracle_nll")
                    and not (metric == "oracle_nll" and r["row"] in no_nll)]
        assert expected and all(r[metric] != "" for r in expected), metric
    tex = (out / f"{table}.tex").read_text()
    assert all(r.label.split(",")[0] in tex for r in plan.rows)
    if plan.plot:
        assert list(out.glob("*.png")), list(out.iterdir())
    print(proc.stdout[-2500:])


# ----------------------------------------------------------------------------------------------------
# SLURM (slow, needs the local cluster)


def run_on_cluster(args: list, env: dict) -> subprocess.CompletedProcess:
    """scripts/reproduce.py with the test cluster's environment (its SLURM_CONF and PATH)."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=timeout(300))


@pytest.mark.slow
@pytest.mark.slurm
def test_rehearsal_on_slurm_respects_the_dependencies(slurm, tmp_path, translation_assets):
    from slurm_cluster import job_info, wait_for

    overrides = [*TINY_MT, "--slurm", "slurm.partition=debug"]
    proc = run_on_cluster(reproduce_args(overrides, translation_assets, tmp_path), slurm)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = json.loads((tmp_path / "logs" / "reproduce" / "rehearsal_mt_ende" / "jobs.json").read_text())
    assert len(jobs["trainings"]) == 2 and len(set(jobs["evaluations"].values())) == 2
    assert wait_for(jobs["collect"], slurm, timeout=1800, poll=2) == "COMPLETED"

    def info(job: str) -> dict:
        return job_info(job, slurm)

    # each evaluation job started after its training's array task ended (afterok), the collection
    # after every evaluation (afterany); SLURM's times have a one-second resolution
    for key, job in jobs["evaluation_jobs"].items():
        task = jobs["trainings"][key]
        assert info(task)["JobState"] == "COMPLETED" and info(job)["JobState"] == "COMPLETED"
        assert info(job)["StartTime"] >= info(task)["EndTime"], (info(task), info(job))
        assert info(job)["Dependency"] in ("(null)", "") or task in info(job)["Dependency"]
    assert info(jobs["collect"])["StartTime"] >= max(info(j)["EndTime"] for j in jobs["evaluation_jobs"].values())
    rows = read_csv(tmp_path / "results" / "rehearsal_mt_ende" / "mt_ende.csv")
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}
    status = run_on_cluster(reproduce_args([*TINY_MT, "--status"], translation_assets, tmp_path), slurm)
    assert status.returncode == 0 and status.stdout.count("training done") == 2, status.stdout
    assert "1 done" in status.stdout and "2 done" in status.stdout


def quoted_overrides_parse_back(args: list[str]) -> dict:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    return {o.key_or_group: o.value() for o in parser.parse_overrides([a for a in args if "=" in a])}


def test_evaluation_tags_stay_text_whatever_the_hash_looks_like(tmp_path):
    """A sweep hash of 12 hex digits may read as a number (12e345678901 is inf): eval.py must get it
    as the text it is, or the table never finds that evaluation again and reruns it for ever."""
    from types import SimpleNamespace

    from loramcl.reproduce.plan import Evaluation, Training
    from loramcl.reproduce.runner import eval_command
    from loramcl.reproduce.state import SWEEP_TAG, TABLE_TAG

    class NumericSweep(Evaluation):
        @property
        def sweep(self) -> str:
            return self.decoding.split(":")[1]

    training = Training("0123456789ab", ("experiment=demo_translation_mcl",), "t", "finetune", "demo")
    table = SimpleNamespace(name="1e5", experiment="rehearsal_mt_ende")  # what eval_command reads of a Table
    for sweep in ("12e345678901", "000000000012", "1234567890ab", "true", "null"):
        ev = NumericSweep(training, f"mcl_beam1:{sweep}", ())
        args = eval_command([ev], tmp_path, table, ROOT, {"log_dir": str(tmp_path)}, "sqlite:///x.db", "python")
        tags = quoted_overrides_parse_back([str(a) for a in args])["mlflow.tags"]
        assert tags == {SWEEP_TAG: sweep, TABLE_TAG: "1e5"}, (sweep, tags)


SBATCH_LIMIT = """#!/bin/bash
# the real sbatch until {limit} jobs were submitted, then refused as a QOS limit refuses them
count=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 ))
echo $count > {counter}
if (( count > {limit} )); then
    echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2
    echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy" >&2
    exit 1
fi
exec {sbatch} "$@"
"""


@pytest.mark.slurm
def test_a_second_submission_skips_what_is_in_flight_and_a_refused_one_is_recorded(slurm, tmp_path,
                                                                                   translation_assets):
    """Jobs held in the queue (sbatch --hold): a submission refused after two jobs (a QOS limit)
    records those two; the next call submits only the rest; a third submits nothing."""
    import shutil

    from slurm_cluster import job_info, run

    held = [*TINY_MT, "--slurm", "slurm.partition=debug", "slurm.extra=[--hold]"]
    limited = tmp_path / "bin"
    limited.mkdir()
    real = shutil.which("sbatch", path=slurm["PATH"])
    (limited / "sbatch").write_text(SBATCH_LIMIT.format(limit=2, counter=tmp_path / "count", sbatch=real))
    (limited / "sbatch").chmod(0o755)
    jobs_json = tmp_path / "logs" / "reproduce" / "rehearsal_mt_ende" / "jobs.json"
    ids: set[str] = set()
    try:
        first = run_on_cluster(reproduce_args(held, translation_assets, tmp_path),
                               {**slurm, "PATH": f"{limited}:{slurm['PATH']}"})
        assert first.returncode != 0
        lines = [line for line in first.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: sbatch eval-") and "QOSMaxSubmitJobPerUserLimit" in lines[0]
        assert "2 job(s) submitted before it are recorded" in lines[0], lines
        recorded = json.loads(jobs_json.read_text())
        assert len(recorded["trainings"]) == 2 and len(recorded["evaluation_jobs"]) == 1 and "collect" not in recorded
        ids |= {*recorded["trainings"].values(), *recorded["evaluation_jobs"].values()}
        assert {job_info(j, slurm)["JobState"] for j in ids} == {"PENDING"}

        second = run_on_cluster(reproduce_args(held, translation_assets, tmp_path), slurm)
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        assert "2 training(s) already queued or running, not submitted again" in second.stdout
        assert "training(s) as array job" not in second.stdout
        again = json.loads(jobs_json.read_text())
        assert again["trainings"] == recorded["trainings"]  # the same array tasks
        assert len(again["evaluation_jobs"]) == 2 and set(recorded["evaluation_jobs"].items()) < set(again["evaluation_jobs"].items())
        ids |= {*again["evaluation_jobs"].values(), again["collect"]}
        new_eval = (set(again["evaluation_jobs"].values()) - set(recorded["evaluation_jobs"].values())).pop()
        key = next(k for k, j in again["evaluation_jobs"].items() if j == new_eval)
        assert again["trainings"][key] in job_info(new_eval, slurm)["Dependency"]  # after its queued training
        collect_after = job_info(again["collect"], slurm)["Dependency"]
        assert all(j.split("_")[0] in collect_after for j in again["evaluation_jobs"].values())

        third = run_on_cluster(reproduce_args(held, translation_assets, tmp_path), slurm)
        assert third.returncode == 0 and "nothing to submit: " in third.stdout, third.stdout[-2000:]
        assert json.loads(jobs_json.read_text()) == again
    finally:
        for job in ids:
            run(["scancel", job.split("_")[0]], slurm)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_failing_row_is_reported_and_only_it_is_submitted_again(slurm, tmp_path, translation_assets):
    """Stock SLURM (no kill_invalid_depend): the MLE row's training fails (lr = 1e30: a NaN), its
    evaluation job is cancelled (--kill-on-invalid-dep), the other row finishes, the collection
    runs and reports the failure, --status shows it, and a second --slurm submits only that row."""
    from slurm_cluster import job_info, run, wait_for

    failing = [*TINY_MT, "slurm.partition=debug", '+table.rows.mle_r16.overrides=["optim.optimizer.weight_decay=1e30"]']
    proc = run_on_cluster(reproduce_args([*failing, "--slurm"], translation_assets, tmp_path), slurm)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs_json = tmp_path / "logs" / "reproduce" / "rehearsal_mt_ende" / "jobs.json"
    jobs = json.loads(jobs_json.read_text())
    assert wait_for(jobs["collect"], slurm, timeout=1800, poll=2) == "COMPLETED"
    states = {key: job_info(job, slurm)["JobState"] for key, job in jobs["trainings"].items()}
    assert sorted(states.values()) == ["COMPLETED", "FAILED"], states
    bad = next(key for key, state in states.items() if state == "FAILED")
    assert job_info(jobs["evaluation_jobs"][bad], slurm)["JobState"] == "CANCELLED"
    good = next(key for key in states if key != bad)
    assert job_info(jobs["evaluation_jobs"][good], slurm)["JobState"] == "COMPLETED"
    rows = read_csv(tmp_path / "results" / "rehearsal_mt_ende" / "mt_ende.csv")
    assert {r["row"]: r["status"] for r in rows if r["row"] == "mle_r16"} == {"mle_r16": "failed"}
    assert {r["status"] for r in rows if r["row"] == "mcl"} == {"done"}

    status = run_on_cluster(reproduce_args([*failing, "--status"], translation_assets, tmp_path), slurm)
    line = next(li for li in status.stdout.splitlines() if li.strip().startswith("mle_r16"))
    assert "training failed" in line, status.stdout

    again = run_on_cluster(reproduce_args([*failing, "--slurm", "slurm.extra=[--hold]"], translation_assets, tmp_path),
                           slurm)
    try:
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "submitted 1 training(s)" in again.stdout and again.stdout.count("evaluation(s) of") == 1
        record = json.loads(jobs_json.read_text())
        assert set(record["trainings"]) == {bad} and set(record["evaluation_jobs"]) == {bad}
    finally:
        record = json.loads(jobs_json.read_text())
        for job in {*record["trainings"].values(), *record["evaluation_jobs"].values(), record.get("collect")} - {None}:
            run(["scancel", job.split("_")[0]], slurm)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_ddp_row_runs_through_srun_and_a_warned_evaluation_continues_where_it_stopped(slurm, tmp_path,
                                                                                       translation_assets):
    """A row with trainer=ddp_cpu (2 devices) trains as one srun step of 2 tasks (before: one process
    with --ntasks=1); its evaluation job gets SLURM's warning (USR1) once a first method finished: the
    running eval.py stops, the job requeues itself and its second start runs only the methods not
    finished (each method has exactly one finished MLflow run)."""
    from slurm_cluster import job_info, run, wait_for, wait_until

    methods = ["mcl_beam1", "mcl_beam2", "mcl_beamK"]
    overrides = [*(o for o in TINY_MT if not o.startswith("train_overrides=")), "~table.rows.mle_r16",
                 f"table.rows.mcl.methods=[{','.join(methods)}]",
                 "train_overrides=[" + ",".join(f'"{o}"' for o in [*TRANSLATION_ASSETS, "trainer=ddp_cpu"]) + "]",
                 "slurm.partition=debug"]
    proc = run_on_cluster(reproduce_args([*overrides, "--slurm"], translation_assets, tmp_path), slurm)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(1 node(s) x 2 task(s) each, srun)" in proc.stdout, proc.stdout
    jobs = json.loads((tmp_path / "logs" / "reproduce" / "rehearsal_mt_ende" / "jobs.json").read_text())
    (task,) = jobs["trainings"].values()
    (evaluation,) = jobs["evaluation_jobs"].values()
    log_dir = tmp_path / "logs"
    wait_until(lambda: finished_runs(log_dir, "rehearsal_mt_ende"), timeout=900, poll=0.5,
               what="a first finished evaluation")
    run(["scancel", "--signal=USR1", "--batch", evaluation], slurm)
    assert wait_for(jobs["collect"], slurm, timeout=1800, poll=2) == "COMPLETED"

    trained = job_info(task, slurm)
    assert trained["JobState"] == "COMPLETED" and trained["NumTasks"] == "2", trained
    train_log = Path(trained["StdOut"]).read_text()  # both srun tasks built the model (ranks 0 and 1)
    assert train_log.count("adapted layers") == 2, train_log[-3000:]
    info = job_info(evaluation, slurm)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", info
    log = Path(info["StdOut"]).read_text()
    assert f"SLURM job {evaluation} requeued: it continues with the methods not finished yet" in log, log[-3000:]
    done_before = re.search(r"(\d) method\(s\) done before, running the rest", log)
    assert done_before and int(done_before.group(1)) >= 1, log[-3000:]
    runs = finished_runs(log_dir, "rehearsal_mt_ende")
    assert sorted(r.data.params["eval.decoding"] for r in runs) == sorted(methods)  # none decoded twice
    rows = read_csv(tmp_path / "results" / "rehearsal_mt_ende" / "mt_ende.csv")
    assert rows and {r["status"] for r in rows} == {"done"}


def test_an_evaluation_by_older_metrics_or_other_decoding_settings_is_stale(tmp_path):
    """An evaluation's settings key follows its resolved decoding config (an edited configs/decoding
    file changes it, not only the command-line overrides); a finished MLflow run with another key, an
    older METRICS_VERSION or none (runs from before the tags) is stale, reported with its values."""
    import shutil

    from hydra import compose, initialize_config_dir

    from loramcl.identity import EVAL_KEY_TAG, METRICS_VERSION, METRICS_VERSION_TAG
    from loramcl.reproduce.plan import Evaluation, Training, eval_key
    from loramcl.reproduce.state import SWEEP_TAG, evaluation_state, finished_evaluations

    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        before = eval_key(compose, "mcl_beam2", ("max_items=4",), {})
        assert eval_key(compose, "mcl_beam2", ("max_items=8",), {}) == before  # max_items: in the group, not here
        (configs / "decoding" / "mcl_beam2.yaml").write_text(
            (configs / "decoding" / "mcl_beam2.yaml").read_text().replace("num_beams: 2", "num_beams: 3"))
        after = eval_key(compose, "mcl_beam2", ("max_items=4",), {})
        assert after != before
    training = Training("0123456789ab", ("experiment=x",), "t", "finetune", "d")
    ev = Evaluation(training, "mcl_beam2", ("max_items=4",), after)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("table")

    def finished_run(**tags: str) -> None:
        run = client.create_run(experiment, tags={SWEEP_TAG: ev.sweep, **tags})
        client.log_param(run.info.run_id, "eval.decoding", "mcl_beam2")
        client.log_metric(run.info.run_id, "oracle_bleu", 12.5)
        client.set_terminated(run.info.run_id, "FINISHED")
        time.sleep(0.01)  # the newest finished run counts

    assert evaluation_state(ev, finished_evaluations(uri, "table")) == "missing"
    current = {METRICS_VERSION_TAG: str(METRICS_VERSION), EVAL_KEY_TAG: after}
    for tags, state in [({}, "stale"), ({**current, METRICS_VERSION_TAG: str(METRICS_VERSION - 1)}, "stale"),
                        ({**current, EVAL_KEY_TAG: before}, "stale"), (current, "done")]:
        finished_run(**tags)
        assert evaluation_state(ev, finished_evaluations(uri, "table")) == state, tags


def test_a_training_by_other_code_is_reused_with_a_warning_or_trained_again_on_request(tmp_path, capsys):
    """A finished training whose identity.json names another code version is reused with a warning;
    with retrain_other_code=true its folder is kept under another name (no longer counted), the
    training is missing again, and its evaluations' finished MLflow runs are stale (they run again)."""
    from omegaconf import OmegaConf

    from loramcl.identity import EVAL_KEY_TAG, METRICS_VERSION, METRICS_VERSION_TAG, code_version, saved_key
    from loramcl.reproduce.main import compose_all, main, retrain_other_code
    from loramcl.reproduce.state import SWEEP_TAG, RunIndex, evaluation_state, finished_evaluations
    from loramcl.utils.mlflow_store import MLflowRun

    log_dir = tmp_path / "logs"
    args = ["table=mt_ende", "scale=demo", f"paths.log_dir={log_dir}", f"results_dir={tmp_path / 'results'}"]
    cfg, table = compose_all(ROOT, args)
    training = table.trainings()[0]
    folder = training.run_dir(log_dir)
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    OmegaConf.save(table.configs[training.key], folder / ".hydra" / "config.yaml")
    (folder / "metrics.json").write_text("{}")
    (folder / "identity.json").write_text(json.dumps({"key": training.key, "world_size": 1,
                                                      "code_version": "0.0.1+gold"}))
    assert saved_key(folder) == training.key
    evaluation = table.evaluations(training)[0]
    run = MLflowRun(str(cfg.mlflow_uri), table.experiment, str(log_dir / "mlartifacts"), "old evaluation",
                    tags={SWEEP_TAG: evaluation.sweep, "loramcl.kind": "eval", EVAL_KEY_TAG: evaluation.key,
                          METRICS_VERSION_TAG: str(METRICS_VERSION)})
    run.log_params({"eval.decoding": evaluation.decoding})
    run.log_metrics({"oracle_bleu": 12.0})
    run.finish()
    assert evaluation_state(evaluation, finished_evaluations(str(cfg.mlflow_uri), table.experiment)) == "done"

    # by default: reused, and said so
    assert main([*args, "--dry-run"], root=ROOT) == 0
    said = capsys.readouterr().out
    assert "[done]" in said and f"trained by code 0.0.1+gold, this is {code_version()}: reused" in said
    assert RunIndex(log_dir).state(training).status == "done"

    # on request: trained again, its evaluations run again, nothing lost
    lines = []
    assert retrain_other_code(table, cfg, log_dir, echo=lines.append) == 1
    (kept,) = [p for p in folder.parent.iterdir() if p.name.startswith(folder.name + ".other-code-")]
    assert json.loads((kept / "identity.json").read_text())["code_version"] == "0.0.1+gold"
    assert (kept / "metrics.json").is_file() and not folder.exists()
    assert any(str(kept) in line for line in lines)
    assert RunIndex(log_dir).state(training).status == "missing"  # the kept folder is not counted
    finished = finished_evaluations(str(cfg.mlflow_uri), table.experiment)
    assert evaluation_state(evaluation, finished) == "stale"
    assert finished[(evaluation.sweep, evaluation.decoding)].data.metrics["oracle_bleu"] == 12.0  # kept
    assert retrain_other_code(table, cfg, log_dir, echo=lines.append) == 0  # nothing left to retrain
    assert main([*args, "retrain_other_code=true", "--dry-run"], root=ROOT) == 0  # a dry run moves nothing
    assert "[missing]" in capsys.readouterr().out
