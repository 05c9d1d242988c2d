"""The public `MCLModel` API end to end on a tiny Llama saved to disk.

Loading through the real `from_pretrained` path, the forward's (K, B) losses, generation per
hypothesis, adapter files, and training with the plain `transformers.Trainer` and `MCLTrainer`.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from tiny_models import tiny_llama
from loramcl import LoRAConfig, MCLConfig, MCLModel, mcl_loss
from loramcl.hf_trainer import MCLTrainer
from loramcl.layers import lora_layers
from loramcl.adapters import ADAPTER_FILE, CONFIG_FILE

TARGETS = ["q_proj", "v_proj", "up_proj"]


@pytest.fixture
def saved_llama(tmp_path):
    """A tiny Llama saved with `save_pretrained`, and its own logits on a probe batch."""
    base = tiny_llama()
    path = tmp_path / "tiny-llama"
    base.save_pretrained(path)
    ids = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = base(input_ids=ids).logits
    return path, ids, logits


def make_model(path, K=3, r=4, mode="wta", seed=0, randomise_b=True, **mcl_kwargs):
    torch.manual_seed(seed)
    model = MCLModel.from_pretrained(
        path, mcl=MCLConfig(num_hypotheses=K, mode=mode, **mcl_kwargs), lora=LoRAConfig(r=r, alpha=8, target_modules=TARGETS)
    )
    if randomise_b:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for layer in lora_layers(model):
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)
    return model


def ref_nll(logits, labels):
    logp = logits[:, :-1].float().log_softmax(-1)
    target = labels[:, 1:]
    keep = target != -100
    token = -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (token * keep).sum(1) / keep.sum(1)


# ------------------------------------------------------------------------ loading, forward
def test_from_pretrained_local_dir_starts_at_the_base(saved_llama):
    path, ids, base_logits = saved_llama
    model = make_model(path, K=3, randomise_b=False)
    assert model.num_hypotheses == 3
    assert model.target_names == [f"model.layers.{i}.{m}" for i in range(2)
                                  for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj")]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (3, 2, 7, 64)
    for k in range(3):  # B = 0 at init: every hypothesis is the saved backbone
        torch.testing.assert_close(logits[k], base_logits, atol=1e-5, rtol=1e-5)


def test_forward_losses_and_mcl_loss(saved_llama):
    path, ids, _ = saved_llama
    model = make_model(path, K=3, mode="relaxed-wta", epsilon=0.1)
    labels = ids.clone()
    labels[:, :2] = -100
    model.train()
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert out.hypothesis_losses.shape == (3, 2)
    expected_L = torch.stack([ref_nll(out.logits[k], labels) for k in range(3)])
    torch.testing.assert_close(out.hypothesis_losses, expected_L, atol=1e-5, rtol=1e-5)
    ref = mcl_loss(expected_L.detach(), model.mcl_config)
    assert out.loss.item() == pytest.approx(ref.loss.item(), abs=1e-6)
    torch.testing.assert_close(out.weights, ref.weights)
    assert out.winners.tolist() == expected_L.argmin(0).tolist()
    assert out.loss.requires_grad

    model.eval()  # evaluation: plain wta, min over hypotheses
    with torch.no_grad():
        ev = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert ev.loss.item() == pytest.approx(expected_L.min(0).values.mean().item(), abs=1e-5)

    one = model(input_ids=ids, labels=labels, hypothesis_idx=1)
    assert one.logits.shape == (2, 7, 64)
    torch.testing.assert_close(one.hypothesis_losses[0], expected_L[1].detach(), atol=1e-5, rtol=1e-5)
    assert one.loss.item() == pytest.approx(expected_L[1].mean().item(), abs=1e-5)


def test_forward_excludes_rows_without_supervised_tokens(saved_llama):
    path, ids, _ = saved_llama
    model = make_model(path, K=2).train()
    labels = ids.clone()
    labels[1] = -100  # row 1 scores nothing: its NLL is 0 and must not pull the mean down
    mask = torch.ones_like(ids)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.hypothesis_losses[:, 1].tolist() == [0.0, 0.0]
    row0 = torch.stack([ref_nll(out.logits[k, :1], labels[:1]) for k in range(2)])[:, 0]
    assert out.loss.item() == pytest.approx(row0.min().item(), abs=1e-5)


# ------------------------------------------------------------------------ generation
def test_generate_with_hypothesis_idx_is_greedy_decoding_of_that_hypothesis(saved_llama):
    path, ids, _ = saved_llama
    model = make_model(path, K=3).eval()
    new = 5
    out = model.generate(ids, attention_mask=torch.ones_like(ids), hypothesis_idx=1, max_new_tokens=new,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    seq = ids.clone()
    with torch.no_grad():  # greedy loop without cache, through forward(hypothesis_idx=1)
        for _ in range(new):
            nxt = model(input_ids=seq, hypothesis_idx=1).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert out.tolist() == seq.tolist()
    out0 = model.generate(ids, attention_mask=torch.ones_like(ids), hypothesis_idx=0, max_new_tokens=new,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out0.tolist() != out.tolist()  # the hypothesis index matters


def test_generate_without_hypothesis_idx(saved_llama):
    path, ids, _ = saved_llama
    model = make_model(path, K=3).eval()
    with pytest.raises(ValueError, match=r"this model has 3 hypotheses: pass hypothesis_idx=k \(0\.\.2\)"):
        model.generate(ids, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"hypothesis_idx must be in \[0, 2\], got 3"):
        model.generate(ids, hypothesis_idx=3, max_new_tokens=2)
    single = make_model(path, K=1).eval()  # K = 1 needs no index
    kw = dict(max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert single.generate(ids, **kw).tolist() == single.generate(ids, hypothesis_idx=0, **kw).tolist()


# ------------------------------------------------------------------------ adapter files
def test_save_and_load_adapters_round_trip(saved_llama, tmp_path):
    path, ids, _ = saved_llama
    model = make_model(path, K=3, seed=0)
    folder = model.save_adapters(tmp_path / "adapters")
    assert sorted(p.name for p in folder.iterdir()) == sorted([ADAPTER_FILE, CONFIG_FILE])
    tensors = load_file(str(folder / ADAPTER_FILE))
    assert len(tensors) == 2 * len(model.target_names)  # adapters only, never the backbone
    assert all(name.endswith(("lora_A", "lora_B")) for name in tensors)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["mcl"]["num_hypotheses"] == 3 and meta["lora"]["r"] == 4

    other = make_model(path, K=3, seed=7)  # different A and B
    with torch.no_grad():
        assert not torch.equal(other(input_ids=ids).logits, model(input_ids=ids).logits)
        other.load_adapters(folder)
        torch.testing.assert_close(other(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    for name, value in model.adapter_state_dict().items():
        assert torch.equal(other.adapter_state_dict()[name], value)


@pytest.mark.parametrize("K, r", [(2, 4), (3, 2)])
def test_load_adapters_refuses_another_shape(saved_llama, tmp_path, K, r):
    path, _, _ = saved_llama
    folder = make_model(path, K=3, r=4).save_adapters(tmp_path / "adapters")
    with pytest.raises(ValueError) as info:
        make_model(path, K=K, r=r).load_adapters(folder)
    message = str(info.value)
    assert "holds K=3, r=4 adapters" in message
    assert f"this model has K={K}, r={r}" in message


# ------------------------------------------------------------------------ training
def tiny_dataset(n=8, seq=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(3, 64, (seq,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * seq, "labels": [-100, -100] + ids[2:]})
    return rows


def training_args(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "out"), report_to=[], save_strategy="no", use_cpu=True, max_steps=5,
                    per_device_train_batch_size=4, learning_rate=1e-2, logging_strategy="no", disable_tqdm=True,
                    seed=0)
    defaults.update(kw)
    return TrainingArguments(**defaults)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_plain_trainer_updates_adapters_only(saved_llama, tmp_path):
    path, _, _ = saved_llama
    model = make_model(path, K=2, mode="relaxed-wta", epsilon=0.1)
    before = snapshot(model)
    Trainer(model=model, args=training_args(tmp_path), train_dataset=tiny_dataset()).train()
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    lora = {n for n in before if n.endswith(("lora_A", "lora_B"))}
    assert changed == lora  # every adapter tensor moved, no backbone tensor did
    for name in lora:  # both hypotheses were trained (relaxed-wta gives every one gradient)
        for k in range(2):
            assert not torch.equal(before[name][k], after[name][k])


def test_gradient_accumulation_matches_one_big_batch(saved_llama, tmp_path):
    """Trainer must average over accumulated micro-batches: GA 2 x 2 rows == 1 x 4 rows."""
    path, _, _ = saved_llama
    data = tiny_dataset(n=4)
    results = []
    for bs, ga in ((4, 1), (2, 2)):
        model = make_model(path, K=2, seed=0)
        args = training_args(tmp_path, max_steps=1, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                             optim="sgd", learning_rate=0.5, max_grad_norm=0.0, lr_scheduler_type="constant")
        Trainer(model=model, args=args, train_dataset=data).train()
        results.append(model.adapter_state_dict())
    # independent reference: one SGD step on the full batch by hand
    model = make_model(path, K=2, seed=0)
    batch = {k: torch.tensor([row[k] for row in data]) for k in data[0]}
    model.train()
    model(**batch).loss.backward()
    with torch.no_grad():
        expected = {n: p - 0.5 * p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, value in expected.items():
        torch.testing.assert_close(results[0][name], value, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(results[1][name], value, atol=1e-6, rtol=1e-5)


def test_mcl_trainer_feeds_global_step_to_annealed_wta(saved_llama, tmp_path):
    path, _, _ = saved_llama
    tau0, rho = 2.0, 0.5
    model = make_model(path, K=2, mode="annealed-wta", temperature_init=tau0, temperature_decay=rho,
                       temperature_min=1e-3)
    seen = []

    class Recording(MCLTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            seen.append((self.model.step, self.model.temperature, self.state.global_step))
            return loss

    max_steps = 5
    Recording(model=model, args=training_args(tmp_path, max_steps=max_steps), train_dataset=tiny_dataset()).train()
    assert [s for s, _, _ in seen] == list(range(max_steps))
    assert [g for _, _, g in seen] == list(range(max_steps))
    assert [t for _, t, _ in seen] == pytest.approx([tau0 * rho**t for t in range(max_steps)])
    assert model.step == max_steps - 1


def test_mcl_trainer_saves_adapters_only(tmp_path):
    """MCLTrainer saves the K adapters (not the tied backbone) and they load back into a fresh model."""
    base = tiny_llama(tie_word_embeddings=True)
    base.save_pretrained(tmp_path / "tied")
    model = make_model(tmp_path / "tied", K=2)
    trainer = MCLTrainer(model=model, args=training_args(tmp_path, max_steps=2), train_dataset=tiny_dataset(n=4))
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    files = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert files == ["mcl_adapters.safetensors", "mcl_config.json"]
    fresh = make_model(tmp_path / "tied", K=2)
    fresh.load_adapters(tmp_path / "saved")
    for name, value in model.adapter_state_dict().items():
        assert torch.equal(fresh.adapter_state_dict()[name], value)


def test_bf16_backbone_keeps_fp32_adapters():
    """model.dtype=bf16: frozen weights in bf16, adapters (and their gradients) in fp32; the output
    is close to the fp32 model's."""
    from loramcl.backbones import from_config

    cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2)
    ids = torch.randint(3, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    outs = {}
    for dtype in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = MCLModel(from_config("LlamaConfig", cfg, seed=0, dtype=dtype), MCLConfig(num_hypotheses=2),
                         LoRAConfig(r=4, alpha=8, target_modules=TARGETS))
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        out.loss.backward()
        layer = lora_layers(model)[0]
        assert layer.base_layer.weight.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
        assert layer.lora_A.dtype == torch.float32 and layer.lora_A.grad is not None
        outs[dtype] = out.hypothesis_losses.detach()
    torch.testing.assert_close(outs["bf16"], outs["fp32"], atol=0.05, rtol=0.02)
