"""The evaluation metrics against independent references and numbers computed by hand.

- Captioning: our oracle metrics (one PTB, one METEOR Java call for all K hypotheses) equal the
  per-item best of pycocoevalcap's own BLEU / METEOR / ROUGE-L, run hypothesis by hypothesis on its
  own PTB tokenisation, and of aac-metrics' `mult_cands_metric(cider_d, selection="max")`.
- Translation: equal to sacrebleu's corpus / sentence BLEU and chrF on the same input; pairwise and
  leave-one-out BLEU on examples whose values follow by hand.
- Diversity: mBLEU-4 against a direct pycocoevalcap computation (one `Bleu(4).compute_score` per
  candidate index, as the paper's `eval_div_stats`) and hand-computed examples; captioning diversity
  runs on the PTB tokens of the captioning metrics.
- Win rates: hand-computed examples (arithmetic in the comments).
"""

import math
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
import sacrebleu

from loramcl.metrics import (
    JavaError,
    best_per_item,
    caption_metrics,
    default_cache_dir,
    diversity_metrics,
    oracle_mean,
    stage_jars,
    translation_metrics,
    win_rates,
)
from loramcl.metrics import MetricResult, captioning, registry
from loramcl.metrics.diversity import tokenize
from loramcl.metrics.tasks import Task, score

# 4 items, K = 3 candidates, 5 references each (mixed case and punctuation, for the PTB tokenizer).
CANDS = [
    ["A dog barks loudly.", "a cat meows", "dog barking in the distance"],
    ["Rain falls on a tin roof.", "water drips slowly", "heavy rain on the roof"],
    ["a car passes by on a wet road", "Cars!", "a vehicle drives past quickly"],
    ["birds are chirping in the trees", "a bird sings", "people talk while birds chirp"],
]
REFS = [
    ["a dog is barking", "a dog barks loudly nearby", "dog barks repeatedly", "a large dog is barking", "barking of a dog"],
    ["rain falls on the roof", "heavy rain on a tin roof", "rain is falling", "water falls on a metal roof", "it rains hard"],
    ["a car drives past", "a car passes on a wet road", "traffic goes by", "a vehicle passes quickly", "cars driving by"],
    ["birds chirp in the trees", "many birds are singing", "a bird is chirping", "birds sing outside", "chirping birds"],
]
N, K = len(CANDS), len(CANDS[0])


# ----------------------------------------------------------------------------------------------------
# Captioning


@pytest.fixture(scope="module")
def caption_result(tmp_path_factory):
    cache = tmp_path_factory.mktemp("aac_cache")  # fresh: SPICE's CoreNLP 3.6.0 is certainly missing
    return caption_metrics(CANDS, REFS, cache_dir=cache, spice="auto", fense=False)


@pytest.fixture(scope="module")
def coco_reference() -> dict[str, np.ndarray]:
    """(N, K) sentence scores from pycocoevalcap (and aac-metrics' CIDEr-D), hypothesis by hypothesis."""
    from aac_metrics.functional.cider_d import cider_d
    from aac_metrics.functional.mult_cands import mult_cands_metric
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ptb, meteor = PTBTokenizer(), Meteor()
    gts = ptb.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(REFS)})
    columns: dict[str, list] = {}
    tok_cands = [[] for _ in range(N)]
    for k in range(K):
        res = ptb.tokenize({i: [{"caption": cands[k]}] for i, cands in enumerate(CANDS)})
        for i in range(N):
            tok_cands[i].append(res[i][0])
        _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
        for order in range(4):
            columns.setdefault(f"bleu_{order + 1}", []).append(bleu[order])
        columns.setdefault("meteor", []).append(meteor.compute_score(gts, res)[1])
        columns.setdefault("rouge_l", []).append(Rouge().compute_score(gts, res)[1])
    ref = {name: np.array(cols, dtype=np.float64).T for name, cols in columns.items()}  # (N, K)
    # aac-metrics' multiple-candidates oracle on the same tokenisation: CIDEr-D of position k vs all N reference sets
    corpus, sents = mult_cands_metric(
        cider_d, "cider_d", tok_cands, [gts[i] for i in range(N)], selection="max", return_all_cands_scores=True
    )
    ref["cider_d"] = sents["cider_d_all"].numpy()  # (N, K)
    ref["cider_d_max"] = float(corpus["cider_d_max"])
    ref["tokens"] = [[c.split() for c in item] for item in tok_cands]  # pycocoevalcap's PTB tokens
    return ref


@pytest.mark.parametrize("name", ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d"])
def test_caption_sentence_scores_match_pycocoevalcap(caption_result, coco_reference, name):
    np.testing.assert_allclose(caption_result.sentence[name], coco_reference[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d"])
def test_caption_oracle_is_per_item_max_x100(caption_result, coco_reference, name):
    expected = 100.0 * coco_reference[name].max(axis=1).mean()
    assert caption_result.corpus[f"oracle_{name}"] == pytest.approx(expected, rel=1e-9)
    for k in range(K):
        assert caption_result.corpus[f"{name}_hyp{k}"] == pytest.approx(100.0 * coco_reference[name][:, k].mean(), rel=1e-9)


def test_caption_tokens_are_pycocoevalcap_ptb_tokens(caption_result, coco_reference):
    # the diversity metrics of a captioning run reuse these (the paper's eval_div_stats PTB-tokenises too)
    assert caption_result.tokens == coco_reference["tokens"]
    assert caption_result.tokens[0][0] == ["a", "dog", "barks", "loudly"]  # lower-cased, "." removed


def test_caption_cider_d_oracle_equals_aac_mult_cands(caption_result, coco_reference):
    assert caption_result.corpus["oracle_cider_d"] == pytest.approx(100.0 * coco_reference["cider_d_max"], rel=1e-9)


def test_missing_spice_gives_exactly_one_note(caption_result):
    assert len(caption_result.notes) == 1
    (note,) = caption_result.notes
    assert "\n" not in note
    assert note.startswith("SPICE and SPIDEr skipped") and "stanford-corenlp-3.6.0" in note and "download_metrics" in note
    for name in ("spice", "spider", "fense"):
        assert f"oracle_{name}" not in caption_result.corpus and name not in caption_result.sentence


def test_caption_per_hypothesis_keys_are_not_table_columns(caption_result):
    per_hyp = [key for key in caption_result.corpus if not key.startswith("oracle_")]
    assert per_hyp and all(key.startswith(registry.PER_HYPOTHESIS_PREFIXES) for key in per_hyp)
    assert all(key in registry.METRICS for key in caption_result.corpus if key.startswith("oracle_"))


def test_caption_oracle_direction_comes_from_the_registry(monkeypatch):
    scores = {"meteor": np.array([[0.2, 0.5, 0.1], [0.9, 0.3, 0.4]])}
    assert captioning._corpus(scores)["oracle_meteor"] == pytest.approx(100 * (0.5 + 0.9) / 2)
    lower = registry.Metric("oracle_meteor", "METEOR", False, "quality")
    monkeypatch.setitem(registry.METRICS, "oracle_meteor", lower)
    assert captioning._corpus(scores)["oracle_meteor"] == pytest.approx(100 * (0.1 + 0.3) / 2)


def test_missing_java_fails_with_one_line(tmp_path):
    with pytest.raises(JavaError) as err:
        caption_metrics(CANDS, REFS, cache_dir=tmp_path, java=str(tmp_path / "no-java"))
    assert "\n" not in str(err.value) and "Java" in str(err.value)


def test_fense_without_weights_is_one_note(monkeypatch, tmp_path):
    monkeypatch.setenv("FENSE_DATA", str(tmp_path))  # no checkpoint there
    notes: list[str] = []
    assert captioning._fense(["a dog"], [["a dog barks"]], "auto", notes) is None
    assert len(notes) == 1 and notes[0].startswith("FENSE skipped") and "echecker_clotho_audiocaps_base.ckpt" in notes[0]
    with pytest.raises(FileNotFoundError):
        captioning._fense(["a dog"], [["a dog barks"]], True, [])


def test_default_cache_is_aac_metrics_default(monkeypatch):
    import aac_metrics

    monkeypatch.delenv("AAC_METRICS_CACHE_PATH", raising=False)
    assert default_cache_dir() == Path(aac_metrics.get_default_cache_path())
    cache = stage_jars()  # the default: staged where aac-metrics looks without any argument
    for rel in ("stanford_nlp/stanford-corenlp-3.4.1.jar", "meteor/meteor-1.5.jar", "meteor/data/paraphrase-en.gz"):
        assert (cache / "aac-metrics" / rel).is_file()


def test_caption_inputs_are_checked():
    with pytest.raises(ValueError, match="same number K"):
        caption_metrics([["a", "b"], ["c"]], [["a"], ["c"]])
    with pytest.raises(ValueError, match="item 1 has no reference"):
        caption_metrics([["a"], ["c"]], [["a"], []])


# ----------------------------------------------------------------------------------------------------
# Oracle selection and win rates


def test_oracle_takes_min_for_lower_is_better():
    scores = np.array([[3.0, 1.0, 2.0], [0.5, 0.7, 0.2]])
    assert registry.METRICS["oracle_nll"].higher is False
    assert oracle_mean(scores, "oracle_nll") == pytest.approx((1.0 + 0.2) / 2)  # row minima
    assert oracle_mean(scores, "oracle_cider_d") == pytest.approx((3.0 + 0.7) / 2)  # row maxima
    assert best_per_item(np.array([[1.0, 1.0, 0.0]]), higher=True)[1].tolist() == [0]  # tie: lowest index


def test_win_rates_hand_example():
    s = np.array([[0.1, 0.5, 0.5], [0.9, 0.2, 0.3], [0.2, 0.2, 0.1], [0.0, 0.3, 0.7]])
    # max: row 0 ties 1/2 (half each), row 1 -> 0, row 2 ties 0/1 (half each), row 3 -> 2
    #   hyp0 (0.5 + 1) / 4 = 0.375, hyp1 (0.5 + 0.5) / 4 = 0.25, hyp2 (0.5 + 1) / 4 = 0.375
    assert win_rates(s) == pytest.approx({"win_rate_hyp0": 0.375, "win_rate_hyp1": 0.25, "win_rate_hyp2": 0.375})
    # min: row winners 0, 1, 2, 0  -> hyp0 2/4, hyp1 1/4, hyp2 1/4
    assert win_rates(s, higher_is_better=False) == pytest.approx(
        {"win_rate_hyp0": 0.5, "win_rate_hyp1": 0.25, "win_rate_hyp2": 0.25})
    # a never-winning hypothesis shows 0; identical candidates share the item
    assert win_rates(np.array([[1.0, 0.0], [2.0, 1.0]])) == {"win_rate_hyp0": 1.0, "win_rate_hyp1": 0.0}
    assert win_rates(np.array([[3.0, 3.0, 3.0]])) == pytest.approx({f"win_rate_hyp{k}": 1 / 3 for k in range(3)})


# ----------------------------------------------------------------------------------------------------
# Translation

T_CANDS = [
    ["The cat sits on the mat.", "A cat is sitting on the mat.", "There is a cat on a mat."],
    ["He reads a book every evening.", "Every evening he is reading a book.", "He reads books at night."],
    ["It is raining heavily today.", "Today it rains a lot.", "Heavy rain falls today."],
]
T_REFS = [  # ragged: 2, 3 and 2 references
    ["The cat is sitting on the mat.", "A cat sits on the mat."],
    ["He reads a book each evening.", "Every evening, he reads a book.", "He is reading a book every night."],
    ["It rains heavily today.", "Today it is raining hard."],
]


def test_translation_matches_sacrebleu():
    result = translation_metrics(T_CANDS, T_REFS)
    streams = [[refs[r] if r < len(refs) else None for refs in T_REFS] for r in range(3)]
    for k in range(3):
        hyps = [cands[k] for cands in T_CANDS]
        assert result.corpus[f"bleu_hyp{k}"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
        assert result.corpus[f"chrf_hyp{k}"] == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score)
    sent_bleu = np.array([[sacrebleu.sentence_bleu(c, refs).score for c in cands] for cands, refs in zip(T_CANDS, T_REFS)])
    sent_chrf = np.array([[sacrebleu.sentence_chrf(c, refs).score for c in cands] for cands, refs in zip(T_CANDS, T_REFS)])
    np.testing.assert_allclose(result.sentence["bleu"], sent_bleu)
    np.testing.assert_allclose(result.sentence["chrf"], sent_chrf)
    assert result.corpus["oracle_bleu"] == pytest.approx(sent_bleu.max(axis=1).mean())
    assert result.corpus["oracle_chrf"] == pytest.approx(sent_chrf.max(axis=1).mean())
    assert result.corpus["bleu_mean"] == pytest.approx(np.mean([result.corpus[f"bleu_hyp{k}"] for k in range(3)]))
    assert result.corpus["chrf_mean"] == pytest.approx(np.mean([result.corpus[f"chrf_hyp{k}"] for k in range(3)]))
    pairs = [(h, r) for cands in T_CANDS for h, r in permutations(cands, 2)]  # 3 items x 6 ordered pairs
    expected_pairwise = sacrebleu.corpus_bleu([h for h, _ in pairs], [[r for _, r in pairs]]).score
    assert result.corpus["pairwise_bleu"] == pytest.approx(expected_pairwise)
    # ragged references: leave-one-out uses the first 2 of each item, and says so in one note
    assert len(result.notes) == 1 and "first 2 references" in result.notes[0]


def test_loo_bleu_hand_example():
    # One item, K = 2 identical candidates "a b c d", references R0 = "a b c d", R1 = "x y z w", R2 = "p q r s".
    # Held out R0: candidates vs {R1, R2} share nothing -> BLEU 0; held out R1 or R2: R0 is left, every
    # n-gram matches and lengths agree -> BLEU 100. loo_bleu = (0 + 100 + 100) / 3. Pairwise: identical -> 100.
    result = translation_metrics([["a b c d", "a b c d"]], [["a b c d", "x y z w", "p q r s"]])
    assert result.corpus["loo_bleu"] == pytest.approx(200.0 / 3.0)
    assert result.corpus["pairwise_bleu"] == pytest.approx(100.0)
    assert result.notes == []


def test_translation_k1_and_single_reference_skip_with_notes():
    result = translation_metrics([["a b c d"], ["e f g h"]], [["a b c d"], ["e f g h"]])
    assert "pairwise_bleu" not in result.corpus and "loo_bleu" not in result.corpus
    assert len(result.notes) == 2 and result.corpus["bleu_hyp0"] == pytest.approx(100.0)


# ----------------------------------------------------------------------------------------------------
# Diversity

D_CANDS = [
    ["a b c d e", "a b c d f", "a b c d e"],
    ["A b c d.", "a b c d e f g h", "A B C D E F G H!"],
    ["x y z w", "p q r s", "x y z w"],
]


def test_tokenization():
    assert tokenize("A dog, barking!") == ["a", "dog", "barking"]
    assert tokenize("Don't stop.") == ["don", "t", "stop"]


def coco_mbleu_4(tokens: list[list[list[str]]]) -> float:
    """The paper's mBLEU-4 written out with pycocoevalcap: per candidate index i, one Bleu(4).compute_score
    of candidate i of every item against that item's other K - 1 candidates; its corpus BLEU-4; mean over i."""
    from pycocoevalcap.bleu.bleu import Bleu

    texts = [[" ".join(c) for c in item] for item in tokens]
    scores = []
    for i in range(len(texts[0])):
        res = {n: [item[i]] for n, item in enumerate(texts)}
        gts = {n: item[:i] + item[i + 1 :] for n, item in enumerate(texts)}
        corpus, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.append(corpus[3])
    return float(np.mean(scores))


@pytest.mark.parametrize("cands", [D_CANDS, CANDS, T_CANDS], ids=["hand", "captions", "translations"])
def test_mbleu_4_matches_pycocoevalcap(cands):
    tokens = [[tokenize(c) for c in item] for item in cands]
    assert diversity_metrics(cands)["mbleu_4"] == pytest.approx(100 * coco_mbleu_4(tokens), rel=1e-12)


def test_diversity_hand_example():
    out = diversity_metrics(D_CANDS)
    # Div-1 = distinct unigrams / tokens per item: item 0 {a..f} 6/15, item 1 {a..h} 8/20, item 2 {x y z w p q r s} 8/12
    assert out["div_1"] == pytest.approx((6 / 15 + 8 / 20 + 8 / 12) / 3)  # 0.488889
    # Div-2: item 0 {ab bc cd de df} 5/15, item 1 {ab bc cd de ef fg gh} 7/20, item 2 {xy yz zw pq qr rs} 6/12
    assert out["div_2"] == pytest.approx((5 / 15 + 7 / 20 + 6 / 12) / 3)  # 0.394444
    # mBLEU-4: per candidate index i, ONE coco BLEU-4 over the 3 items (n-gram counts and lengths pooled).
    #   i = 0: "a b c d e" | "a b c d" | "x y z w" each fully matched by a reference: precisions 1;
    #          length 5 + 4 + 4 = 13, closest reference lengths 5 + 8 + 4 = 17 -> exp(1 - 17/13)
    #   i = 1: "a b c d f" matches 4/5, 3/4, 2/3, 1/2; "a b c d e f g h" 8/8 .. 5/5; "p q r s" 0/4 .. 0/1
    #          -> (12/17 * 10/14 * 8/11 * 6/8)^(1/4), lengths 17 = 17
    #   i = 2: every candidate has an identical reference -> 1
    expected = (math.exp(1 - 17 / 13) + (5760 / 20944) ** 0.25 + 1) / 3  # 0.819771, reported x100
    assert out["mbleu_4"] == pytest.approx(100 * expected, rel=1e-8)
    assert out["vocab"] == 16.0  # a..h and x y z w p q r s


def test_mbleu_4_sentence_is_the_mean_of_sentence_bleu():
    out = diversity_metrics(D_CANDS)
    # Sentence-level variant (the earlier definition): coco BLEU-4 of each of the 9 candidates vs the other two.
    #   item 0: c0, c2 have an identical reference -> 1; c1 "a b c d f" vs "a b c d e":
    #           precisions 4/5, 3/4, 2/3, 1/2 -> (1/5)^(1/4), brevity 1            -> 1, 0.2^0.25, 1
    #   item 1: c0 "a b c d" (4 tokens): all n-grams found, closest ref length 8 -> brevity exp(1 - 8/4);
    #           c1, c2 identical to each other -> 1                                 -> e^-1, 1, 1
    #   item 2: c1 "p q r s" shares nothing with "x y z w" -> ~0 (1e-15 smoothing)  -> 1, 0, 1
    expected = (1 + 0.2**0.25 + 1 + math.exp(-1) + 1 + 1 + 1 + 0 + 1) / 9  # 0.781847, reported x100
    assert out["mbleu_4_sentence"] == pytest.approx(100 * expected, rel=1e-8)
    # pooling counts before the precisions is not averaging sentence scores: 81.98 vs 78.18 here
    assert out["mbleu_4"] - out["mbleu_4_sentence"] == pytest.approx(100 * (0.819771 - 0.781847), abs=1e-3)
    sent = registry.METRICS["mbleu_4_sentence"]
    assert sent.family == "diversity" and not sent.higher  # lower = more diverse, like mbleu_4


def test_diversity_uses_given_tokens():
    # The tokens a task's metric computed (captioning: PTB) replace the plain-Python tokenisation.
    tokens = [[["do", "n't"], ["do", "not"]], [["a"], ["b"]]]
    out = diversity_metrics([["don't", "do not"], ["a", "b"]], tokens)
    assert out["vocab"] == 5.0  # do n't not a b (plain Python would give don t do not a b -> 6)
    assert out["div_1"] == pytest.approx((3 / 4 + 2 / 2) / 2)
    assert diversity_metrics([["don't", "do not"], ["a", "b"]])["vocab"] == 6.0
    with pytest.raises(ValueError, match="tokens must hold"):
        diversity_metrics([["a", "b"]], [[["a"]]])


def test_score_passes_the_task_tokens_to_diversity():
    tokens = [[["x"], ["x"]], [["y"], ["z"]]]
    task = Task("fake", lambda c, r, o: MetricResult({}, {"s": np.zeros((2, 2))}, [], tokens), primary="s")
    corpus, _, _ = score(task, [["a b", "c d"], ["e f", "g h"]], [["r"], ["r"]], {})
    assert corpus["vocab"] == 3.0 and corpus["div_1"] == pytest.approx((1 / 2 + 2 / 2) / 2)


def test_diversity_k1_has_no_mbleu():
    out = diversity_metrics([["a b a"], ["c"]])
    assert "mbleu_4" not in out and "mbleu_4_sentence" not in out
    assert out["div_1"] == pytest.approx((2 / 3 + 1 / 1) / 2) and out["vocab"] == 3.0


def test_spice_failure_is_one_note(tmp_path):
    # SPICE jars "present" (empty stand-ins for CoreNLP 3.6.0): the jar starts, fails, and auto mode
    # turns that into one note instead of failing the evaluation.
    from loramcl.metrics.jars import SPICE_CORENLP_JARS, accept_java

    cache = stage_jars(tmp_path)
    for name in SPICE_CORENLP_JARS:
        (cache / "aac-metrics" / "spice" / "lib" / name).write_bytes(b"")
    notes: list[str] = []
    with accept_java() as major:
        assert captioning._spice(["a dog"], [["a dog barks"]], cache, "java", major, "auto", notes) is None
    assert len(notes) == 1 and notes[0].startswith("SPICE and SPIDEr skipped: the SPICE jar failed")
