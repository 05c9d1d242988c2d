"""The results collector against a real MLflow sqlite store filled with fake evaluation runs.

One store per module (MLflow 3.17 takes seconds to create a sqlite schema): a captioning experiment
with 3 schemes x 2 decodings, an older duplicate and a newer unfinished re-run of one pair, a training
run; a translation experiment with 2 runs; an experiment without evaluation runs.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loramcl.metrics.registry import METRICS, diversity_keys, quality_keys
from loramcl.evaluation.collect import (MAX_MARKER_AREA, CollectError, collect, latex_table, quality_diversity_figure,
                             write_outputs)

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "eval_fake_caption"
TRANSLATION = "eval_fake_translation"
TRAIN_ONLY = "train_fake"

MCL, MLE, MOE = "LoRA-MCL (relaxed-wta)", "LoRA-MLE", "LoRA-MoE"
# (scheme, decoding, method) -> metrics; the newest finished run of each pair
CAPTION_RUNS = {
    (MLE, "mle_beam", "Beam search (B=3)"): dict(
        oracle_bleu_1=60.0, oracle_bleu_4=20.0, oracle_meteor=18.5, oracle_cider_d=50.0, oracle_spider=25.0,
        oracle_nll=2.50, div_1=0.30, div_2=0.40, mbleu_4=90.0, vocab=120.0, forward_passes=3.0),
    (MLE, "mle_dbs", "DBS (λ=0.5)"): dict(
        oracle_bleu_1=58.0, oracle_bleu_4=18.0, oracle_cider_d=48.0, oracle_spider=24.0,
        oracle_nll=2.40, div_1=0.55, div_2=0.70, mbleu_4=40.0, vocab=150.0, forward_passes=6.0),
    (MOE, "moe_forced", "Forced experts"): dict(
        oracle_bleu_1=59.0, oracle_bleu_4=19.0, oracle_cider_d=49.0, oracle_spider=24.5,
        oracle_nll=2.30, div_1=0.45, div_2=0.60, mbleu_4=60.0, vocab=130.0, forward_passes=5.0),
    (MOE, "moe_beam1", "Greedy, K experts"): dict(
        oracle_bleu_1=57.0, oracle_bleu_4=17.0, oracle_cider_d=47.0, oracle_spider=23.5,
        oracle_nll=2.35, div_1=0.40, div_2=0.55, mbleu_4=65.0, vocab=125.0, forward_passes=5.0),
    (MCL, "mcl_beam1", "Beam search (B=1)"): dict(
        oracle_bleu_1=65.0, oracle_bleu_4=24.0, oracle_cider_d=60.0, oracle_spider=30.0,
        oracle_nll=2.10, div_1=0.55, div_2=0.65, mbleu_4=55.0, vocab=160.0, forward_passes=5.0),
    (MCL, "mcl_beam3", "Beam search (B=3)"): dict(
        oracle_bleu_1=64.0, oracle_bleu_4=23.0, oracle_cider_d=58.0, oracle_spider=29.0,
        oracle_nll=2.05, div_1=0.50, div_2=0.62, mbleu_4=58.0, vocab=155.0, forward_passes=15.0),
}
# would win every quality column if the collector kept the wrong run
STALE = dict(oracle_bleu_1=99.0, oracle_bleu_4=99.0, oracle_cider_d=99.0, oracle_spider=99.0, oracle_nll=0.1,
             div_1=0.99, div_2=0.99, mbleu_4=1.0, vocab=999.0, forward_passes=5.0)
TRANSLATION_RUNS = {
    (MLE, "mle_beam", "Beam search (B=5)"): dict(bleu_mean=30.0, oracle_bleu=35.0, loo_bleu=31.0, chrf_mean=55.0,
                                               oracle_chrf=58.0, pairwise_bleu=80.0, div_1=0.2, div_2=0.3,
                                               vocab=900.0, oracle_nll=1.9, forward_passes=5.0),
    (MCL, "mcl_beam1", "Beam search (B=1)"): dict(bleu_mean=29.0, oracle_bleu=38.0, loo_bleu=33.0, chrf_mean=54.0,
                                                oracle_chrf=60.0, pairwise_bleu=50.0, div_1=0.3, div_2=0.4,
                                                vocab=1000.0, oracle_nll=1.8, forward_passes=5.0),
}


def _log_run(client, experiment_id, scheme, decoding, method, metrics, task_type, start_time,
             status="FINISHED", kind="eval"):
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id, start_time=start_time, tags={"loramcl.kind": kind})
    kind = "moe" if "MoE" in scheme else "mle" if "MLE" in scheme else "mcl" if "MCL" in scheme else "other"
    params = {"eval.scheme": scheme, "eval.scheme_kind": kind, "eval.decoding": decoding, "eval.method": method, "eval.num_hypotheses": "5",
              "eval.task_type": task_type, "eval.train_run": f"logs/train/{decoding}", "cfg.seed": "0"}
    per_hypothesis = {"bleu_hyp0": 11.0, "win_rate_hyp0": 0.2}
    client.log_batch(run.info.run_id,
                     metrics=[Metric(k, v, start_time, 0) for k, v in {**metrics, **per_hypothesis}.items()],
                     params=[Param(k, v) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status, end_time=start_time + 1000)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from loramcl.utils.mlflow_store import get_experiment_id

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    caption_id = get_experiment_id(uri, CAPTION, str(root / "artifacts" / CAPTION))
    translation_id = get_experiment_id(uri, TRANSLATION, str(root / "artifacts" / TRANSLATION))
    train_id = get_experiment_id(uri, TRAIN_ONLY, str(root / "artifacts" / TRAIN_ONLY))
    client = MlflowClient(uri)
    t0 = 1_700_000_000_000
    ids = {}
    # the stale duplicate first (older), then the six current runs, then a newer re-run still RUNNING
    stale = _log_run(client, caption_id, MCL, "mcl_beam1", "Beam search (B=1)", STALE, "captioning", t0)
    for i, ((scheme, decoding, method), metrics) in enumerate(CAPTION_RUNS.items()):
        ids[(scheme, decoding)] = _log_run(client, caption_id, scheme, decoding, method, metrics, "captioning",
                                           t0 + 10_000 * (i + 1))
    _log_run(client, caption_id, MCL, "mcl_beam1", "Beam search (B=1)", STALE, "captioning", t0 + 1_000_000,
             status="RUNNING")
    _log_run(client, caption_id, MCL, "mcl_beam1", "Beam search (B=1)", STALE, "captioning", t0 + 2_000_000,
             status="FAILED")
    _log_run(client, caption_id, MCL, "train", "train", STALE, "captioning", t0 + 3_000_000, kind="train")
    for i, ((scheme, decoding, method), metrics) in enumerate(TRANSLATION_RUNS.items()):
        _log_run(client, translation_id, scheme, decoding, method, metrics, "translation", t0 + 10_000 * i)
    _log_run(client, train_id, MCL, "train", "train", STALE, "captioning", t0, kind="train")
    return {"uri": uri, "root": root, "ids": ids, "stale": stale}


@pytest.fixture(scope="module")
def caption(store):
    return collect(store["uri"], [CAPTION])


def _row(rows, scheme, decoding):
    (row,) = [r for r in rows if r["scheme"] == scheme and r["decoding"] == decoding]
    return row


def test_collect_keeps_newest_finished_run_per_pair(store, caption, caplog):
    assert {(r["scheme"], r["decoding"]) for r in caption} == {(s, d) for s, d, _ in CAPTION_RUNS}
    assert len(caption) == 6
    mcl = _row(caption, MCL, "mcl_beam1")
    assert mcl["run_id"] == store["ids"][(MCL, "mcl_beam1")] != store["stale"]
    assert mcl["oracle_spider"] == 30.0
    # the duplicate is reported on a log line
    with caplog.at_level(logging.INFO, logger="loramcl.evaluation.collect"):
        collect(store["uri"], [CAPTION])
    assert any("keeping the newest" in m and store["stale"] in m for m in caplog.messages)
    assert any("not FINISHED" in m for m in caplog.messages)


def test_rows_carry_params_and_no_per_hypothesis_metrics(caption):
    row = _row(caption, MLE, "mle_dbs")
    assert (row["method"], row["K"], row["task_type"], row["experiment"]) == ("DBS (λ=0.5)", 5, "captioning", CAPTION)
    assert not any(k.startswith(("bleu_hyp", "win_rate_hyp")) for k in row)
    # grouped by scheme: baselines first, MCL last
    assert [r["scheme"] for r in caption] == [MLE, MLE, MOE, MOE, MCL, MCL]


def test_csv_equals_logged_values(store, caption, tmp_path):
    written = write_outputs(caption, tmp_path)
    csv_path = tmp_path / f"{CAPTION}.csv"
    assert csv_path in written[CAPTION]
    with open(csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6
    header = list(table[0])
    assert header[:8] == ["experiment", "scheme", "scheme_kind", "method", "decoding", "K", "task_type", "run_id"]
    logged_keys = {k for m in CAPTION_RUNS.values() for k in m}
    assert set(header[8:]) == logged_keys  # every metric present in any run, nothing else
    for (scheme, decoding, method), metrics in CAPTION_RUNS.items():
        (line,) = [r for r in table if r["scheme"] == scheme and r["decoding"] == decoding]
        assert line["method"] == method and line["run_id"] == store["ids"][(scheme, decoding)]
        for key in logged_keys:
            assert (float(line[key]) == metrics[key]) if key in metrics else (line[key] == "")
    assert _line(table, MLE, "mle_beam")["oracle_meteor"] == "18.5"
    assert _line(table, MCL, "mcl_beam1")["oracle_meteor"] == ""  # missing -> empty


def _line(table, scheme, decoding):
    (line,) = [r for r in table if r["scheme"] == scheme and r["decoding"] == decoding]
    return line


def _latex_body(tex):
    lines = tex.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("Scheme & Method"))
    header = [c.strip() for c in lines[header_at].removesuffix(r"\\").split(" & ")]
    body = [[c.strip() for c in line.removesuffix(r"\\").split(" & ")]
            for line in lines[header_at + 1:lines.index(r"\bottomrule")] if line != r"\midrule"]
    return header, body


def test_latex_headers_in_registry_order_quality_then_diversity(caption):
    header, body = _latex_body(latex_table(caption))
    present = {k for m in CAPTION_RUNS.values() for k in m}
    expected = [k for k in quality_keys() + diversity_keys() if k in present]
    assert "oracle_spice" not in expected and "forward_passes" not in expected
    arrows = {True: r"$\uparrow$", False: r"$\downarrow$"}
    assert header[2:] == [f"{METRICS[k].label} {arrows[METRICS[k].higher]}" for k in expected]
    assert header.index(r"mBLEU-4 $\downarrow$") > header.index(r"NLL $\downarrow$")  # diversity after quality
    assert len(body) == 6 and all(len(cells) == len(header) for cells in body)


def test_latex_bold_is_max_or_min_by_direction(caption):
    tex = latex_table(caption)
    header, body = _latex_body(tex)

    def column(label):
        return [row[header.index(label)] for row in body]

    def bold_rows(label):
        return [i for i, cell in enumerate(column(label)) if cell.startswith(r"\textbf{")]

    methods = [row[1] for row in body]
    assert bold_rows(r"SPIDEr $\uparrow$") == [4]  # 30.00, MCL beam 1 (the stale 99 is gone)
    assert column(r"SPIDEr $\uparrow$")[4] == r"\textbf{30.00}"
    assert bold_rows(r"mBLEU-4 $\downarrow$") == [1]  # the MIN, 40.00 (DBS), not the max 90
    assert column(r"mBLEU-4 $\downarrow$")[1] == r"\textbf{40.00}"
    assert bold_rows(r"NLL $\downarrow$") == [5]  # 2.05
    assert bold_rows(r"Div-1 $\uparrow$") == [1, 4]  # tie 0.55: both bold
    assert column(r"Vocab $\uparrow$")[4] == r"\textbf{160}" and column(r"Vocab $\uparrow$")[0] == "120"
    assert column(r"METEOR $\uparrow$") == [r"\textbf{18.50}", "--", "--", "--", "--", "--"]
    # scheme written once per group, LaTeX specials and Greek escaped
    assert [row[0] for row in body] == [MLE, "", MOE, "", MCL, ""]
    assert methods[1] == r"DBS ($\lambda$=0.5)"
    assert r"\toprule" in tex and r"\cmidrule(lr)" in tex and "eval\\_fake\\_caption" in tex


def test_plot_png_and_sizes_follow_forward_passes(caption, tmp_path):
    import matplotlib.image

    written = write_outputs(caption, tmp_path)[CAPTION]
    png = tmp_path / f"{CAPTION}_quality_diversity.png"
    assert png in written and (tmp_path / f"{CAPTION}_quality_diversity.pdf") in written
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert (tmp_path / f"{CAPTION}_quality_diversity.pdf").read_bytes()[:4] == b"%PDF"

    fig, points = quality_diversity_figure(caption, "oracle_spider", "mbleu_4")
    assert len(points) == 6
    by_xy = {(p.x, p.y): p for p in points}
    for metrics in CAPTION_RUNS.values():
        p = by_xy[(metrics["mbleu_4"], metrics["oracle_spider"])]
        assert p.forward_passes == metrics["forward_passes"]
        assert p.size == pytest.approx(MAX_MARKER_AREA * metrics["forward_passes"] / 15.0)
    # the drawn artists: one scatter per scheme, marker areas proportional to forward passes
    ax = fig.axes[0]
    assert len(ax.collections) == 3
    drawn = {}
    for collection in ax.collections:
        for (x, y), size in zip(collection.get_offsets(), collection.get_sizes()):
            drawn[(float(x), float(y))] = float(size)
    for metrics in CAPTION_RUNS.values():
        area = drawn[(metrics["mbleu_4"], metrics["oracle_spider"])]
        assert area / metrics["forward_passes"] == pytest.approx(MAX_MARKER_AREA / 15.0)
    assert "lower = more diverse" in ax.get_xlabel() and "mBLEU-4" in ax.get_xlabel()
    assert "SPIDEr" in ax.get_ylabel()
    assert "forward passes" in ax.get_legend().get_title().get_text()
    assert {t.get_text() for t in ax.texts} == {m for _, _, m in CAPTION_RUNS}


def test_default_axes_follow_the_task(store, tmp_path):
    rows = collect(store["uri"], [TRANSLATION])
    assert {r["task_type"] for r in rows} == {"translation"}
    fig, points = quality_diversity_figure(rows, "oracle_bleu", "pairwise_bleu")
    assert sorted((p.x, p.y) for p in points) == [(50.0, 38.0), (80.0, 35.0)]
    header, body = _latex_body(latex_table(rows))
    assert r"Pairwise BLEU $\downarrow$" in header and body[0][header.index(r"Pairwise BLEU $\downarrow$")] == "80.00"
    assert body[1][header.index(r"Pairwise BLEU $\downarrow$")] == r"\textbf{50.00}"


def test_errors(store, tmp_path):
    with pytest.raises(CollectError, match="no MLflow store"):
        collect(f"sqlite:///{tmp_path / 'absent.db'}", None)
    assert not (tmp_path / "absent.db").exists()  # not created by looking
    with pytest.raises(CollectError, match=f"not found: nope; the store has: .*{CAPTION}"):
        collect(store["uri"], ["nope"])
    with pytest.raises(CollectError, match=f"'{TRAIN_ONLY}' has no finished evaluation run"):
        collect(store["uri"], [TRAIN_ONLY])
    with pytest.raises(CollectError, match="no run has the quality metric 'oracle_fense'"):
        write_outputs(collect(store["uri"], [CAPTION]), tmp_path, quality="oracle_fense")


def test_all_skips_experiments_without_eval_runs(store):
    rows = collect(store["uri"], None)
    assert {r["experiment"] for r in rows} == {CAPTION, TRANSLATION}


def _load_cli():
    spec = importlib.util.spec_from_file_location("collect_results_cli", ROOT / "scripts" / "collect_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_subprocess_writes_everything(store, tmp_path, capsys):
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "scripts" / "collect_results.py"), "--tracking-uri", store["uri"], "--all",
           "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    for experiment in (CAPTION, TRANSLATION):
        for suffix in (".csv", ".tex", "_quality_diversity.png", "_quality_diversity.pdf"):
            path = out / f"{experiment}{suffix}"
            assert path.is_file() and f"wrote {path}" in done.stdout
    assert "Beam search (B=3)" in done.stdout and "mBLEU-4" in done.stdout  # the printed table
    assert "keeping the newest" in done.stderr
    # a second call (in-process: a subprocess pays for importing torch and mlflow) replaces the files and says so
    assert _load_cli().main(cmd[2:]) == 0
    assert f"{CAPTION}: replacing 4 earlier output file(s)" in capsys.readouterr().err


def test_cli_errors_are_one_line(store, tmp_path, capsys):
    cli = _load_cli()
    assert cli.main(["--tracking-uri", f"sqlite:///{tmp_path / 'absent.db'}", "--all"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no MLflow store") and "\n" not in err
    assert cli.main(["--tracking-uri", store["uri"], "--experiment", "nope", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "not found: nope" in err and CAPTION in err and TRAIN_ONLY in err and "\n" not in err
    assert cli.main(["--tracking-uri", store["uri"], "--experiment", TRAIN_ONLY, "--out", str(tmp_path)]) == 1
    assert "no finished evaluation run" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.csv"))


def test_same_method_under_two_decoding_names_is_one_row():
    from loramcl.evaluation.collect import _merge_same_method

    rows = [{"experiment": "e", "scheme": "LoRA-MLE", "method": "Beam search (B=4)", "decoding": "mle_beam_2K", "x": 1.0},
            {"experiment": "e", "scheme": "LoRA-MLE", "method": "Beam search (B=4)", "decoding": "mle_beam_K2", "x": 1.0},
            {"experiment": "e", "scheme": "LoRA-MLE", "method": "Beam search (B=2)", "decoding": "mle_beam", "x": 2.0}]
    merged = _merge_same_method(rows)
    assert [(r["method"], r["decoding"]) for r in merged] == [("Beam search (B=4)", "mle_beam_2K/mle_beam_K2"),
                                                              ("Beam search (B=2)", "mle_beam")]
