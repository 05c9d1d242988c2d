"""Decoding methods of the evaluation sweep: K candidates each, batched == separate, TTA masks, checks.

The hypothesis-grouped DBS (`mcl_dbs`) has its own file, tests/test_mcl_dbs.py.
"""

import pytest
import torch
from omegaconf import OmegaConf

from loramcl import LoRAConfig, MCLConfig, MCLModel
from loramcl.checkpoints import Checkpoint, CheckpointMeta
from loramcl.config import LoRAConfig as _LoRA, MCLConfig as _MCL
from loramcl.decoding.methods import Decoder, DecodingSpec, resolve_count
from loramcl.decoding.tta import STRENGTHS, TTAConfig, augment_audio_batch, augment_image_items, mask_features
from loramcl.errors import ConfigError
from loramcl.evaluation.checks import check_compatibility, num_candidates, select_checkpoint
from tiny_models import tiny_llama

VOCAB = 64
EOS, PAD = 1, 0


def word_tokenizer():
    """A real fast tokenizer over the tiny model's 64 ids: token i is the word `w<i>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="w2"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="w1", pad_token="w0", unk_token="w2",
                                   padding_side="left")


def trained_like(K: int, mode: str = "wta", seed: int = 0) -> MCLModel:
    """A tiny MCL model whose K adapters differ (B random instead of zero), in eval mode."""
    model = MCLModel(tiny_llama(seed=seed), MCLConfig(num_hypotheses=K, mode=mode),
                     LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model._layers:
            layer.lora_B.normal_(0, 0.6)
    return model.eval()


def prompts(tokenizer):
    batch = tokenizer(["w5 w9 w12 w7", "w30 w4", "w8 w8 w40"], return_tensors="pt", padding=True)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def spec(**kw) -> DecodingSpec:
    return DecodingSpec(name=kw.pop("name", "test"), **kw)


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.mark.parametrize("beams", [1, 2, "K"])
def test_batched_hypotheses_equal_separate_calls(tok, beams):
    K = 3
    model = trained_like(K)
    inputs = prompts(tok)
    out = {}
    for batched in (True, False):
        decoder = Decoder(model, tok, spec(method="hypotheses", num_beams=beams, batched=batched), K,
                          max_new_tokens=8, repetition_penalty=1.1)
        out[batched] = decoder.decode(inputs, 3)
    texts = {b: [[c.text for c in item] for item in out[b]] for b in out}
    assert texts[True] == texts[False]
    for a, b in zip(out[True], out[False]):
        assert [c.hypothesis for c in a] == [0, 1, 2]
        assert [c.score for c in a] == pytest.approx([c.score for c in b], abs=1e-4)
    # the hypotheses really differ (otherwise the check above proves little)
    assert any(len(set(item)) > 1 for item in texts[True])


def test_batched_hypotheses_equal_plain_generate_of_each_hypothesis(tok):
    """Candidate k is what `generate(hypothesis_idx=k)` gives for that prompt alone."""
    K = 2
    model = trained_like(K, seed=3)
    inputs = prompts(tok)
    cands = Decoder(model, tok, spec(method="hypotheses", num_beams=2), K, max_new_tokens=6,
                    repetition_penalty=None).decode(inputs, 3)
    for i in range(3):
        row = {k: v[i:i + 1] for k, v in inputs.items()}
        for k in range(K):
            ids = model.generate(**row, hypothesis_idx=k, num_beams=2, max_new_tokens=6, do_sample=False,
                                 eos_token_id=EOS, pad_token_id=PAD)
            text = tok.decode(ids[0, row["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            assert cands[i][k].text == text


ONE_OUTPUT = [
    dict(method="beam", num_beams="K"),
    dict(method="beam", num_beams="2K"),
    dict(method="beam", num_beams="K^2"),
    dict(method="dbs", num_beams="K", diversity_penalty=0.5),
    dict(method="dbs", num_beams="K", diversity_penalty=0.8),
    dict(method="dbs", num_beams="K", diversity_penalty=1.0),
    dict(method="sample", sampler="top_k"),
    dict(method="sample", sampler="nucleus"),
    dict(method="sample", sampler="typical"),
    dict(method="sample", sampler="ancestral"),
]


@pytest.mark.parametrize("kw", ONE_OUTPUT, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_one_output_methods_give_exactly_K_candidates(tok, kw):
    K = 3
    model = trained_like(1)
    torch.manual_seed(0)
    cands = Decoder(model, tok, spec(**kw), K, max_new_tokens=6).decode(prompts(tok), 3)
    assert len(cands) == 3 and all(len(item) == K for item in cands)
    assert all(isinstance(c.text, str) and c.score == c.score for item in cands for c in item)
    if kw["method"] in ("beam", "dbs"):  # best first
        for item in cands:
            scores = [c.score for c in item]
            assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("beams", ["K", "2K"])
def test_dbs_candidates_are_best_first_and_name_their_group(tok, beams):
    """Candidate j of `dbs` is the j-th best of all groups; `hypothesis` says which group produced it
    (K groups of one beam: each group gives one candidate, so the labels are a permutation)."""
    from loramcl.decoding.dbs import diverse_beam_search

    K = 3
    model = trained_like(1)
    inputs = prompts(tok)
    decoding = spec(method="dbs", num_beams=beams, diversity_penalty=0.5)
    cands = Decoder(model, tok, decoding, K, max_new_tokens=6, repetition_penalty=1.1).decode(inputs, 3)
    with model.route(model.default_routing):
        sequences, scores, groups = diverse_beam_search(
            model.base_model, inputs["input_ids"], inputs["attention_mask"], num_beams=decoding.beams(K),
            num_beam_groups=K, diversity_penalty=0.5, num_return_sequences=K, max_new_tokens=6, eos_token_id=EOS,
            pad_token_id=PAD, repetition_penalty=1.1, return_groups=True)
    texts = [t.strip() for t in tok.batch_decode(sequences, skip_special_tokens=True)]
    assert [c.text for item in cands for c in item] == texts
    assert [c.score for item in cands for c in item] == pytest.approx(scores.tolist(), abs=1e-6)
    assert [[c.hypothesis for c in item] for item in cands] == groups.view(3, K).tolist()
    if beams == "K":
        assert all(sorted(c.hypothesis for c in item) == list(range(K)) for item in cands)
    assert any([c.hypothesis for c in item] != list(range(K)) for item in cands)  # not the ranks


@pytest.mark.parametrize("beams", [1, 2, "K"])
def test_mcl_and_tta_give_exactly_K_candidates(tok, beams):
    K = 3
    inputs = prompts(tok)
    cands = Decoder(trained_like(K), tok, spec(method="hypotheses", num_beams=beams), K, max_new_tokens=5).decode(inputs, 3)
    assert [len(c) for c in cands] == [K] * 3
    copies = {k: v.repeat(K, 1) for k, v in inputs.items()}  # K (here identical) copies, copy-major
    cands = Decoder(trained_like(1), tok, spec(method="tta", num_beams=beams), K, max_new_tokens=5).decode(copies, 3)
    assert [len(c) for c in cands] == [K] * 3
    assert [c.hypothesis for c in cands[0]] == list(range(K))


def test_beam_returns_the_K_best_of_transformers_beam_search(tok):
    K = 3
    model = trained_like(1)
    inputs = prompts(tok)
    cands = Decoder(model, tok, spec(method="beam", num_beams="2K"), K, max_new_tokens=6, repetition_penalty=1.1).decode(inputs, 3)
    out = model.generate(**inputs, hypothesis_idx=0, num_beams=6, num_return_sequences=K, max_new_tokens=6,
                         do_sample=False, eos_token_id=EOS, pad_token_id=PAD, repetition_penalty=1.1,
                         return_dict_in_generate=True, output_scores=True, early_stopping=False)
    texts = [t.strip() for t in tok.batch_decode(out.sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    assert [c.text for item in cands for c in item] == texts
    assert [c.score for item in cands for c in item] == pytest.approx(out.sequences_scores.tolist(), abs=1e-5)


def test_sampling_is_seeded(tok):
    model = trained_like(1)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append([[c.text for c in item] for item in Decoder(model, tok, spec(method="sample", sampler="ancestral"), 4,
                                                                 max_new_tokens=6).decode(prompts(tok), 3)])
    assert runs[0] == runs[1]
    assert any(len(set(item)) > 1 for item in runs[0])  # K samples differ


def test_counts_and_forward_passes():
    assert [resolve_count(v, 5, "x") for v in (1, 2, "K", "2K", "K^2", "K**2", "7")] == [1, 2, 5, 10, 25, 25, 7]
    with pytest.raises(ConfigError, match="one of K, 2K, K\\^2"):
        resolve_count("3K", 5, "decoding.num_beams")
    assert spec(method="hypotheses", num_beams=2).forward_passes(5) == 10
    assert spec(method="mcl_dbs", num_beams=2).forward_passes(5) == 10  # K groups of B beams
    assert spec(method="beam", num_beams="K^2").forward_passes(5) == 25
    assert spec(method="sample", sampler="nucleus").forward_passes(5) == 5
    with pytest.raises(ConfigError, match="decoding.sampler"):
        spec(method="sample", sampler="beamish")
    with pytest.raises(ConfigError, match="decoding.method"):
        spec(method="greedy")


# ---------------------------------------------------------------------------- TTA
@pytest.mark.parametrize("strength", list(STRENGTHS))
def test_audio_masks_cover_the_configured_fractions(strength):
    t_frac, f_frac = STRENGTHS[strength]
    feats = torch.arange(128 * 300, dtype=torch.float32).reshape(128, 300) / 1000.0 + 1.0
    valid = 200
    out = mask_features(feats, valid, t_frac, f_frac, torch.Generator().manual_seed(0))
    fill = feats[:, :valid].mean()
    changed = out != feats
    cols = changed[:, :valid].all(dim=0).sum().item()  # fully masked frames
    rows = changed[:, :valid].all(dim=1).sum().item()  # fully masked bins
    assert cols == round(t_frac * valid) and rows == round(f_frac * 128)
    assert torch.all(out[changed] == fill)
    assert torch.equal(out[:, valid:], feats[:, valid:])  # padding frames untouched


def test_audio_batch_copies_are_copy_major_and_reproducible():
    K, n = 3, 2
    batch = {"input_ids": torch.ones(n, 4, dtype=torch.long), "input_features": torch.randn(n, 16, 50),
             "feature_attention_mask": torch.ones(n, 50, dtype=torch.long)}
    cfg = TTAConfig(strength="medium", seed=1)
    a = augment_audio_batch(batch, ["x", "y"], K, cfg)
    b = augment_audio_batch({**batch, "input_features": batch["input_features"][[1, 0]]}, ["y", "x"], K, cfg)
    assert a["input_features"].shape == (K * n, 16, 50) and a["input_ids"].shape == (K * n, 4)
    assert torch.equal(a["input_features"][0], b["input_features"][1])  # same (item, copy) -> same mask
    assert not torch.equal(a["input_features"][0], a["input_features"][n])  # copies differ


def test_image_copies_are_light_crops():
    from PIL import Image

    image = Image.new("RGB", (64, 48), (200, 10, 10))
    items = [{"id": "a", "image": image, "captions": ["c"]}, {"id": "b", "image": image, "captions": ["d"]}]
    copies = augment_image_items(items, 3, TTAConfig(crop_scale=0.85))
    assert len(copies) == 6 and [c["id"] for c in copies] == ["a", "b"] * 3
    assert all(c["image"].size == (64, 48) for c in copies)
    with pytest.raises(ConfigError, match="strength"):
        TTAConfig(strength="extreme")


# ---------------------------------------------------------------------------- checks before decoding
def run_cfg(K=3, mode="wta", r=8, backbone="data/tiny_bases/alma", num_candidates=None):
    return OmegaConf.create({"mcl": {"num_hypotheses": K, "mode": mode}, "lora": {"r": r},
                             "model": {"name_or_path": backbone}, "num_candidates": num_candidates})


def eval_cfg(**kw):
    return OmegaConf.create({"num_hypotheses": None, "backbone": None, "num_candidates": None, **kw})


def test_mismatches_fail_before_decoding(tmp_path):
    ck = Checkpoint(tmp_path / "last.ckpt", CheckpointMeta(3, 8), {})
    mcl_spec, beam_spec = spec(method="hypotheses"), spec(method="beam", num_beams="K")
    check_compatibility(eval_cfg(), run_cfg(), ck, mcl_spec)  # fine
    with pytest.raises(ConfigError, match="num_hypotheses=5 but .* K=3"):
        check_compatibility(eval_cfg(num_hypotheses=5), run_cfg(), ck, mcl_spec)
    with pytest.raises(ConfigError, match="backbone=qwen2_audio but .* trained on data/tiny_bases/alma"):
        check_compatibility(eval_cfg(backbone="qwen2_audio"), run_cfg(), ck, mcl_spec)
    check_compatibility(eval_cfg(backbone="alma"), run_cfg(), ck, mcl_spec)
    with pytest.raises(ConfigError, match="one-output models .* use mcl_beam1"):
        check_compatibility(eval_cfg(), run_cfg(), ck, beam_spec)
    with pytest.raises(ConfigError, match="decodes each of the K hypotheses"):
        check_compatibility(eval_cfg(), run_cfg(K=1), Checkpoint(ck.path, CheckpointMeta(1, 8), {}), mcl_spec)
    with pytest.raises(ConfigError, match="forces each of the K experts of a LoRA-MoE run; this LoRA-MCL"):
        check_compatibility(eval_cfg(), run_cfg(), ck, spec(method="forced_expert"))


def test_checkpoint_meta_is_checked_against_the_config(tmp_path):
    """The one place of the K / rank / scheme mismatch messages (`CheckpointMeta.check`)."""
    mcl, lora = _MCL(num_hypotheses=3), _LoRA(r=8)
    CheckpointMeta(3, 8).check(mcl, lora, "ck")
    with pytest.raises(ConfigError, match=r"ck holds K=2, r=8 adapters; its config has K=3, r=8"):
        CheckpointMeta(2, 8).check(mcl, lora, "ck", own="its config")
    with pytest.raises(ConfigError, match=r"ck holds K=3, r=4 adapters; this run has K=3, r=8"):
        CheckpointMeta(3, 4).check(mcl, lora, "ck")
    with pytest.raises(ConfigError, match="ck holds LoRA-MoE experts with token routers .* this run has LoRA-MCL"):
        CheckpointMeta(3, 8, mode="moe").check(mcl, lora, "ck")
    with pytest.raises(ConfigError, match="not written by loramcl"):
        CheckpointMeta.from_dict({}, "ck")
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ConfigError, match="foreign.ckpt was not written by loramcl"):
        Checkpoint.load(path)
    path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="foreign.ckpt cannot be read as a checkpoint"):
        Checkpoint.load(path)


def test_multi_model_run_folder_gives_the_model_that_suits_the_decoding(tmp_path):
    for name, K in (("mle", 1), ("mcl", 2)):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        torch.save({"loramcl": {"num_hypotheses": K, "r": 4}}, tmp_path / "checkpoints" / name / "last.ckpt")
    cfg = OmegaConf.create({"ckpt_path": str(tmp_path), "model_name": None})

    def chosen(cfg, decoding):
        return select_checkpoint(cfg, decoding).path.parent.name

    assert chosen(cfg, spec(method="hypotheses")) == "mcl"
    assert chosen(cfg, spec(method="mcl_dbs")) == "mcl"
    assert chosen(cfg, spec(method="beam", num_beams="K")) == "mle"
    assert chosen(OmegaConf.merge(cfg, {"model_name": "mle"}), spec(method="hypotheses")) == "mle"
    with pytest.raises(ConfigError, match="several models .* model_name"):
        select_checkpoint(cfg, spec(method="moe_sample"))
    with pytest.raises(ConfigError, match="model_name=moe is not in"):
        select_checkpoint(OmegaConf.merge(cfg, {"model_name": "moe"}), spec(method="hypotheses"))


def test_number_of_candidates():
    assert num_candidates(eval_cfg(), run_cfg(K=3)) == 3
    assert num_candidates(eval_cfg(), run_cfg(K=1, num_candidates=5)) == 5
    assert num_candidates(eval_cfg(num_candidates=4), run_cfg(K=1, num_candidates=5)) == 4
    with pytest.raises(ConfigError, match="set num_candidates=K"):
        num_candidates(eval_cfg(), run_cfg(K=1))
