"""decoding=mcl_dbs: LoRA-MCL's hypothesis-grouped diverse beam search (one `decoding.dbs` call, group k
decoded by hypothesis k, candidate k = group k's best).

At lambda = 0 the groups do not interact, so candidate k must be what the `hypotheses` method (HF
`generate` beam search of hypothesis k, top-1) gives: the acceptance test checks it exactly, texts
and scores, on a tiny K = 3 model with left-padded prompts of four lengths, B = 2 and 3, with and
without repetition penalty. Two conventions had to be settled to get there (see the tests' docstrings):
the repetition penalty and the prompt's padding (settled: mcl_dbs follows `generate`), and when a
group stops early (a genuine convention difference, pinned by its own test).
"""

from unittest import mock

import pytest
import torch

from loramcl.checkpoints import Checkpoint, CheckpointMeta
from loramcl.decoding import dbs
from loramcl.decoding.methods import Decoder
from loramcl.errors import ConfigError, UnsuitedDecoding
from loramcl.evaluation.checks import check_compatibility
from test_decoding import eval_cfg, run_cfg, spec, trained_like, word_tokenizer

K, MAX_NEW = 3, 8
TEXTS = ["w5 w9 w12 w7 w33 w21", "w30 w4", "w8 w8 w40", "w17"]  # 6, 2, 3, 1 tokens: left padded to 6


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module")
def inputs(tok):
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _model(seed: int = 1, eos_scale: float = 1.0):
    """trained_like(K, seed): with seed 1, at its natural EOS rate, candidates finish with EOS and
    groups stop early; with seed 2, the pad token w0 competes in padded prompts, so the padding
    convention of the repetition penalty changes candidates (both asserted below); `eos_scale` scales
    EOS's row of `lm_head` up."""
    model = trained_like(K, seed=seed)
    with torch.no_grad():
        model.base_model.lm_head.weight[1] *= eos_scale
    return model


def _decode(model, tok, inputs, repetition_penalty=1.1, **kw):
    return Decoder(model, tok, spec(**kw), K, max_new_tokens=MAX_NEW,
                   repetition_penalty=repetition_penalty).decode(inputs, len(TEXTS))


def _texts(cands):
    return [[c.text for c in item] for item in cands]


def _scores(cands):
    return torch.tensor([[c.score for c in item] for item in cands])


@pytest.mark.parametrize("repetition_penalty", [1.1, None])
@pytest.mark.parametrize("beams", [2, 3])
def test_lambda_0_is_exactly_each_hypothesis_beam_search(tok, inputs, beams, repetition_penalty):
    """mcl_dbs at lambda = 0 == `hypotheses` with beam B (HF 5 `generate`), texts and scores.

    Padding: HF 5's `generate` leaves the prompt's left padding out of the repetition penalty
    (`prompt_ignore_length`), while transformers 4, whose group beam search our DBS reproduces, counted
    the pad tokens as seen. mcl_dbs decodes with `penalise_padding=False`, as `generate` does (with the
    4.x convention the pad token w0 is penalised in padded prompts only, which changes candidates
    where w0 competes: `test_padding_is_left_out_of_the_repetition_penalty`).

    Early stopping: a (prompt, hypothesis) stops once its B finished candidates all beat the best
    score still reachable, `best / t`, and the two implementations disagree on `best`: transformers
    4's BeamSearchScorer (our DBS) takes the best of the step's 2B candidates, EOS ones included;
    HF 5 (`_check_early_stop_heuristic`) takes the best running beam. Ours never stops earlier, and can
    go on to find a better-scoring candidate after HF has stopped; the test below pins that on an
    EOS-favoured model. On these models candidates do finish with EOS and groups do stop before
    MAX_NEW (asserted), but no later improvement occurs, so equality is exact here.
    """
    stopped_early = []
    is_done = dbs._Hypotheses.is_done

    def traced(self, best_sum_logprobs, gen_len):
        done = is_done(self, best_sum_logprobs, gen_len)
        stopped_early.append(done and gen_len < MAX_NEW)
        return done

    for seed in (1, 2):
        model = _model(seed)
        ref = _decode(model, tok, inputs, repetition_penalty, method="hypotheses", num_beams=beams)
        with mock.patch.object(dbs._Hypotheses, "is_done", traced):
            got = _decode(model, tok, inputs, repetition_penalty, method="mcl_dbs", num_beams=beams,
                          diversity_penalty=0.0)
        assert _texts(got) == _texts(ref)
        torch.testing.assert_close(_scores(got), _scores(ref), atol=1e-5, rtol=0)
        assert [[c.hypothesis for c in item] for item in got] == [list(range(K))] * len(TEXTS)
        assert any(len(set(item)) > 1 for item in _texts(got))  # the hypotheses differ
    assert any(stopped_early)  # the EOS and early-stop paths are part of the comparison


def test_padding_is_left_out_of_the_repetition_penalty(tok, inputs):
    """With transformers 4's convention (pad tokens of the prompt penalised) mcl_dbs would differ from
    `generate` on this model, where the pad token w0 competes in padded prompts. mcl_dbs leaves the
    padding out (the acceptance test above); this shows that it matters."""
    model = _model(seed=2)
    ref = _decode(model, tok, inputs, method="hypotheses", num_beams=2)
    search = dbs.diverse_beam_search
    with mock.patch.object(dbs, "diverse_beam_search", lambda *a, **kw: search(*a, **{**kw, "penalise_padding": True})):
        got = _decode(model, tok, inputs, method="mcl_dbs", num_beams=2, diversity_penalty=0.0)
    assert _texts(got) != _texts(ref)
    assert _texts(_decode(model, tok, inputs, method="mcl_dbs", num_beams=2, diversity_penalty=0.0)) == _texts(ref)


def test_early_stopping_follows_transformers_4_never_worse_than_generate(tok, inputs):
    """The one convention difference left (see above): on an EOS-favoured model HF 5 stops some
    hypotheses while the best candidate of the step is a finished one; our DBS goes on and finds a
    better-scoring candidate. Wherever they differ, ours scores higher; elsewhere they are equal."""
    model = _model(eos_scale=2.0)
    ref = _decode(model, tok, inputs, None, method="hypotheses", num_beams=2)
    got = _decode(model, tok, inputs, None, method="mcl_dbs", num_beams=2, diversity_penalty=0.0)
    gain = _scores(got) - _scores(ref)
    same = torch.tensor([[a == b for a, b in zip(x, y)] for x, y in zip(_texts(got), _texts(ref))])
    assert torch.all(gain[same].abs() <= 1e-5)
    assert torch.all(gain[~same] > 1e-4) and (~same).any()


def test_the_penalty_diversifies_hypotheses_and_never_touches_hypothesis_0(tok, inputs):
    """Group 0 is decoded first and never penalised: candidate 0 is lambda = 0's; others change."""
    model = _model()
    plain = _decode(model, tok, inputs, method="mcl_dbs", num_beams=2, diversity_penalty=0.0)
    diverse = _decode(model, tok, inputs, method="mcl_dbs", num_beams=2, diversity_penalty=0.5)
    assert [item[0].text for item in diverse] == [item[0].text for item in plain]
    assert [item[0].score for item in diverse] == pytest.approx([item[0].score for item in plain], abs=1e-6)
    assert _texts(diverse) != _texts(plain)
    assert [len(item) for item in diverse] == [K] * len(TEXTS)
    assert [[c.hypothesis for c in item] for item in diverse] == [list(range(K))] * len(TEXTS)


def test_spec_cost_label_and_checks(tok, inputs):
    method = spec(method="mcl_dbs", num_beams=2, diversity_penalty=0.5)
    assert method.forward_passes(5) == 10 == spec(method="hypotheses", num_beams=2).forward_passes(5)
    assert method.describe(5) == "Hypothesis DBS (B=2, lambda=0.5)"
    assert spec(method="mcl_dbs", num_beams="K").forward_passes(3) == 9
    with pytest.raises(ConfigError, match="diversity_penalty must be a finite number >= 0"):
        spec(method="mcl_dbs", diversity_penalty=-0.1)
    with pytest.raises(ConfigError, match="num_beam_groups must be K"):
        _decode(_model(), tok, inputs, method="mcl_dbs", num_beams=2, num_beam_groups=1)


def test_refused_on_runs_without_hypotheses(tmp_path):
    """Like `hypotheses`: an MCL-only method, one candidate per hypothesis."""
    ck = Checkpoint(tmp_path / "last.ckpt", CheckpointMeta(3, 8), {})
    mcl_dbs = spec(name="mcl_dbs", method="mcl_dbs", num_beams=2)
    check_compatibility(eval_cfg(), run_cfg(), ck, mcl_dbs)  # an MCL run: fine
    mle = Checkpoint(ck.path, CheckpointMeta(1, 8), {})
    with pytest.raises(UnsuitedDecoding, match="decoding=mcl_dbs decodes the K hypotheses of a LoRA-MCL run as the K "
                                               "groups of one diverse beam search; this LoRA-MLE run has K=1"):
        check_compatibility(eval_cfg(), run_cfg(K=1), mle, mcl_dbs)
    with pytest.raises(UnsuitedDecoding, match="LoRA-MoE"):
        check_compatibility(eval_cfg(), run_cfg(mode="moe"), Checkpoint(ck.path, CheckpointMeta(3, 8, mode="moe"), {}),
                            mcl_dbs)
    with pytest.raises(ConfigError, match="gives one candidate per adapter .* num_candidates=5 cannot hold"):
        check_compatibility(eval_cfg(num_candidates=5), run_cfg(), ck, mcl_dbs)
    with pytest.raises(UnsuitedDecoding, match="use mcl_beam1 / mcl_beam2 / mcl_beamK / mcl_dbs"):
        check_compatibility(eval_cfg(), run_cfg(), ck, spec(method="beam", num_beams="K"))
