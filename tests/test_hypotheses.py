"""scripts/analyse_hypotheses.py: identifiability of the producing index from sentence embeddings
(real all-MiniLM-L6-v2, real scikit-learn), distinctive words against a hand computation, language
shares, the report files and the MLflow run they are added to."""

import importlib.util
import json
import math
import random
import sqlite3
from collections import Counter

import numpy as np
import pytest

from helpers import ROOT

from loramcl.evaluation.hypotheses import distinctive_words, identifiability

SHAPES = [("circle", "cercle"), ("square", "carré"), ("triangle", "triangle"), ("star", "étoile")]
COLOURS = [("red", "rouge"), ("blue", "bleu"), ("green", "vert"), ("yellow", "jaune")]


def _script():
    spec = importlib.util.spec_from_file_location("analyse_hypotheses", ROOT / "scripts" / "analyse_hypotheses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bilingual_predictions(folder, n=32, shuffle_labels=False):
    """Item i: hypothesis 0 describes its shapes in English, hypothesis 1 in French."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    with open(folder / "predictions.jsonl", "w") as f:
        for i in range(n):
            (s1, f1), (c1, g1) = SHAPES[i % 4], COLOURS[(i // 4) % 4]
            (s2, f2), (c2, g2) = SHAPES[(i + 1) % 4], COLOURS[(i + 2) % 4]
            en = f"a {c1} {s1} next to a {c2} {s2}"
            fr = f"un {f1} {g1} à côté d'un {f2} {g2}"
            labels = [0, 1] if not shuffle_labels or rng.random() < 0.5 else [1, 0]
            f.write(json.dumps({"id": str(i), "references": [en, fr], "reference_languages": ["en", "fr"],
                                "candidates": [{"text": en, "hypothesis": labels[0]},
                                               {"text": fr, "hypothesis": labels[1]}]}, ensure_ascii=False) + "\n")
    (folder / "metrics.json").write_text(json.dumps({"scheme": "LoRA-MCL (wta)", "decoding": "mcl_beam1",
                                                     "metrics": {}}))
    return folder


def test_languages_are_identified_and_are_each_hypothesis_distinctive_words(tmp_path):
    run = _bilingual_predictions(tmp_path / "mcl")
    control = _bilingual_predictions(tmp_path / "shuffled", shuffle_labels=True)
    assert _script().main([str(run), str(control), "--out", str(tmp_path / "cmp"), "--no-mlflow"]) == 0
    report = json.loads((run / "hypothesis_analysis" / "analysis.json").read_text())
    ident = report["identifiability"]
    assert ident["accuracy"] == 1.0 and ident["chance"] == 0.5 and ident["ci"][0] == 1.0
    assert np.allclose(ident["confusion"], np.eye(2)) and ident["folds"] == 5 and ident["candidates"] == 64
    en, fr = report["per_index"]
    assert en["language_shares"]["en"] == 1.0 and fr["language_shares"]["fr"] == 1.0
    english = {w for shape, colour in zip(SHAPES, COLOURS) for w in (shape[0], colour[0])} | {"a", "next", "to"}
    french = {w for shape, colour in zip(SHAPES, COLOURS) for w in (shape[1], colour[1])} | {"un", "à", "côté", "d"}
    assert {w for w, _ in en["distinctive_words"]} <= english - french
    assert {w for w, _ in fr["distinctive_words"]} <= french - english
    assert en["mean_length"] == 8.0 and fr["mean_length"] == 9.0  # "d'un" is two words
    shuffled = json.loads((control / "hypothesis_analysis" / "analysis.json").read_text())["identifiability"]
    assert shuffled["accuracy"] < 0.75 and shuffled["ci"][0] < 0.5 + 0.2  # labels carry no signal
    for name in ("report.md", "confusion.png", "projection.png"):
        assert (run / "hypothesis_analysis" / name).stat().st_size > 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "100.0%" in table and "50.0%" in table


def test_distinctive_words_match_a_hand_computation():
    counts = [Counter({"dog": 3, "barks": 1}), Counter({"cat": 2, "barks": 2})]
    words = dict(distinctive_words(counts, top=3)[0])
    # "dog" in index 0: y_k = 3, y_rest = 0, prior a = 3 (pooled), n_k = 4, n_rest = 4, a0 = 8
    delta = math.log((3 + 3) / (4 + 8 - 3 - 3)) - math.log((0 + 3) / (4 + 8 - 0 - 3))
    assert words["dog"] == pytest.approx(delta / math.sqrt(1 / 6 + 1 / 3), abs=0.01)
    assert words["dog"] > words["barks"] > words["cat"]


def test_probe_is_at_chance_without_signal_and_needs_two_indices():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    labels = np.tile([0, 1, 2], 100)
    items = np.repeat(np.arange(100), 3)
    result = identifiability(x, labels, items)
    assert result["chance"] == pytest.approx(1 / 3) and result["ci"][0] < 1 / 3 < result["ci"][1]
    x[:, 0] += 3 * labels  # one feature that encodes the index
    assert identifiability(x, labels, items)["accuracy"] > 0.9
    with pytest.raises(ValueError, match="at least 2 distinct"):
        identifiability(x, np.zeros(300, dtype=int), items)


def test_report_goes_into_the_evaluation_mlflow_run_and_bad_inputs_fail_first(tmp_path, capsys):
    from loramcl.utils.mlflow_store import MLflowRun

    run = _bilingual_predictions(tmp_path / "mcl", n=10)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ml = MLflowRun(uri, "eval_x", str(tmp_path / "artifacts"), "LoRA-MCL / mcl_beam1", tags={"loramcl.kind": "eval"})
    ml.finish()
    (run / "mlflow_run.json").write_text(json.dumps({"tracking_uri": uri, "experiment": "eval_x", "run_id": ml.run_id}))
    script = _script()
    assert script.main([str(run)]) == 0
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        metrics = dict(db.execute("select key, value from latest_metrics").fetchall())
    assert metrics["identifiability_accuracy"] == 100.0 and metrics["identifiability_chance"] == 50.0
    logged = {p.name for p in (tmp_path / "artifacts").rglob("*") if p.is_file()}
    assert {"report.md", "analysis.json", "confusion.png", "projection.png"} <= logged
    assert script.main([str(tmp_path / "nothing_here")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "predictions.jsonl").write_text("{not json\n")
    assert script.main([str(tmp_path / "bad")]) == 2
    assert "line 1 is not JSON" in capsys.readouterr().err
