"""The LoRA-MoE baseline: K LoRA experts behind a zero-initialised token router, one MLE model.

The layer is checked against its formula written out by hand,
y = W x + (alpha / r) sum_k softmax(R x)_k B_k A_k x, with an explicit loop over the experts; the
model's loss against the mean NLL of a reference model built from those hand-written layers; the
forced expert k against hypothesis k of an MCL model holding the same adapters; the sampled routing
against the router's distribution; and the adapter files, checkpoints and training run against
mixing MoE (with routers) and MCL (without) up.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import timeout
from tiny_models import tiny_llama
from loramcl import LoRAConfig, MCLConfig, MCLModel, MoEModel, MultiLoRALinear, Route, build_model
from loramcl.adapters import ADAPTER_FILE
from loramcl.errors import ConfigError
from loramcl.layers import adapter_state_dict, lora_layers, set_routing

ATOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "v_proj", "down_proj"]


# ------------------------------------------------------------------------ helpers
def moe_layer(K=3, r=2, alpha=6.0, d_in=8, d_out=5, router_std=0.0, seed=0):
    """A router layer with random (nonzero) B and, if router_std > 0, random router weights."""
    torch.manual_seed(seed)
    layer = MultiLoRALinear(nn.Linear(d_in, d_out), K, r, alpha, router=True)
    with torch.no_grad():
        layer.lora_B.normal_()
        if router_std:
            layer.router.weight.normal_(std=router_std)
    return layer


def expert_by_hand(layer, x, k):
    """(alpha / r) B_k A_k x."""
    return (layer.alpha / layer.r) * (x @ layer.lora_A[k].T) @ layer.lora_B[k].T


def base_by_hand(layer, x):
    return x @ layer.base_layer.weight.T + layer.base_layer.bias


class HandMoE(nn.Module):
    """Reference MoE layer: an explicit loop over experts, softmax gate by hand."""

    def __init__(self, layer: MultiLoRALinear):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        layer = self.layer
        logits = x @ layer.router.weight.T  # (..., K)
        gate = logits.exp() / logits.exp().sum(-1, keepdim=True)
        y = layer.base_layer(x)  # the frozen torch nn.Linear W x (+ b)
        for k in range(layer.num_hypotheses):
            y = y + gate[..., k : k + 1] * expert_by_hand(layer, x, k)
        return y


def make_moe(K=3, r=4, seed=0, randomise=True, mode="moe"):
    """An MoE (or, mode != "moe", MCL) model on the tiny Llama, with random B and router weights."""
    torch.manual_seed(seed)
    model = build_model(tiny_llama(), MCLConfig(num_hypotheses=K, mode=mode),
                        LoRAConfig(r=r, alpha=8, target_modules=TARGETS))
    if randomise:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for layer in lora_layers(model):
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)
                if layer.router is not None:
                    layer.router.weight.copy_(torch.randn(layer.router.weight.shape, generator=g))
    return model


def batch(seed=0, n=3, s=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (n, s), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # one left-padded row
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a "prompt"
    return ids, mask, labels


def ref_nll(logits, labels):
    logp = logits[:, :-1].float().log_softmax(-1)
    target = labels[:, 1:]
    keep = target != -100
    token = -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (token * keep).sum(1) / keep.sum(1)


# ------------------------------------------------------------------------ the layer
def test_zero_router_gives_the_mean_of_the_experts():
    layer = moe_layer()
    assert torch.count_nonzero(layer.router.weight) == 0 and layer.router.weight.dtype == torch.float32
    assert layer.router.bias is None and layer.router.weight.requires_grad
    x = torch.randn(2, 4, 8)
    layer.routing = Route.MIXTURE
    with torch.no_grad():
        got = layer(x)
        mean_delta = torch.stack([expert_by_hand(layer, x, k) for k in range(3)]).mean(0)
    torch.testing.assert_close(got, base_by_hand(layer, x) + mean_delta, atol=ATOL, rtol=1e-5)


def test_soft_mixture_is_the_softmax_weighted_sum():
    layer = moe_layer(router_std=1.0)
    x = torch.randn(2, 4, 8)
    layer.routing = Route.MIXTURE
    with torch.no_grad():
        got = layer(x)
        logits = x @ layer.router.weight.T
        gate = logits.exp() / logits.exp().sum(-1, keepdim=True)  # (2, 4, K)
        expected = base_by_hand(layer, x)
        for k in range(3):
            expected = expected + gate[..., k : k + 1] * expert_by_hand(layer, x, k)
        uniform = base_by_hand(layer, x) + torch.stack([expert_by_hand(layer, x, k) for k in range(3)]).mean(0)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    assert (got - uniform).abs().max() > 1e-2  # the router matters


def test_forced_expert_equals_the_mcl_hypothesis():
    layer = moe_layer(router_std=1.0)
    mcl = MultiLoRALinear(layer.base_layer, 3, 2, 6.0)  # no router: the MCL layer
    with torch.no_grad():
        mcl.lora_A.copy_(layer.lora_A)
        mcl.lora_B.copy_(layer.lora_B)
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        for k in range(3):
            layer.routing, mcl.routing = k, k
            torch.testing.assert_close(layer(x), mcl(x), rtol=0, atol=0)
            torch.testing.assert_close(layer(x), base_by_hand(layer, x) + expert_by_hand(layer, x, k),
                                       atol=ATOL, rtol=1e-5)


def test_sampled_routing_with_a_peaked_router_is_that_expert():
    layer = moe_layer()
    with torch.no_grad():
        layer.router.weight[1] = 100.0  # x > 0 below: logit of expert 1 >= 80 above the others
    x = torch.rand(2, 4, 8) + 0.1
    with torch.no_grad():
        layer.routing = Route.SAMPLED
        sampled = layer(x)
        layer.routing = 1
        forced = layer(x)
    torch.testing.assert_close(sampled, forced, atol=ATOL, rtol=1e-5)


def test_sampled_routing_follows_the_router_distribution():
    """Expert k adds exactly k + 1 to output 0, so the output names the expert each token drew."""
    K, d_in, n = 3, 4, 20_000
    probs = torch.tensor([0.2, 0.5, 0.3])
    layer = MultiLoRALinear(nn.Linear(d_in, 2), K, r=1, alpha=1.0, router=True)
    with torch.no_grad():
        layer.base_layer.weight.zero_()
        layer.base_layer.bias.zero_()
        layer.lora_A.fill_(1.0 / d_in)  # A_k x = 1 for x = ones
        layer.lora_B.zero_()
        layer.lora_B[:, 0, 0] = torch.arange(1.0, K + 1)
        layer.router.weight.copy_(probs.log()[:, None].expand(K, d_in) / d_in)  # R x = log p
    x = torch.ones(n // 100, 100, d_in)
    layer.routing = Route.SAMPLED
    with torch.no_grad():
        torch.manual_seed(0)
        y = layer(x)[..., 0]
        torch.manual_seed(0)
        again = layer(x)[..., 0]
        torch.manual_seed(1)
        other_seed = layer(x)[..., 0]
    torch.testing.assert_close(y, again, rtol=0, atol=0)  # the global seed controls the draw
    assert not torch.equal(y, other_seed)
    picks = y.round().long().flatten() - 1
    assert torch.allclose(y, (picks + 1).float().view_as(y))  # one expert per token, never a mixture
    freq = torch.bincount(picks, minlength=K).float() / picks.numel()
    torch.testing.assert_close(freq, probs, atol=0.012, rtol=0)  # ~3.5 standard errors


def test_moe_routings_need_a_router():
    mcl = MCLModel(tiny_llama(), MCLConfig(num_hypotheses=2), LoRAConfig(r=2, target_modules=TARGETS))
    for routing in (Route.MIXTURE, Route.SAMPLED):
        with pytest.raises(ValueError, match=f"routing {routing} needs a token router"):
            set_routing(lora_layers(mcl), routing)
    assert all(layer.routing is Route.REPLICATED for layer in lora_layers(mcl))  # nothing was changed
    with pytest.raises(TypeError, match="routing must be a Route"):  # strings are not routings
        set_routing(lora_layers(mcl), "mixture")
    with pytest.raises(ValueError, match="mcl mode 'moe' is the LoRA-MoE baseline: build it with"):
        MCLModel(tiny_llama(), MCLConfig(num_hypotheses=2, mode="moe"), LoRAConfig(r=2, target_modules=TARGETS))
    with pytest.raises(ValueError, match="MoEModel needs an MCLConfig with mode 'moe'"):
        MoEModel(tiny_llama(), MCLConfig(num_hypotheses=2), LoRAConfig(r=2, target_modules=TARGETS))


def test_moe_config_needs_two_experts():
    with pytest.raises(ConfigError, match=r"mode=moe mixes num_hypotheses >= 2 LoRA experts, got 1"):
        MCLConfig(mode="moe", num_hypotheses=1)
    assert MCLConfig(mode="moe", num_hypotheses=2).is_moe


# ------------------------------------------------------------------------ the model
def test_moe_forward_loss_is_the_mean_nll_of_the_mixture():
    model = make_moe(K=3)
    assert isinstance(model, MoEModel) and len(lora_layers(model)) == len(model.target_names) == 2 * len(TARGETS)
    reference = copy.deepcopy(model.base_model)  # the same weights, with hand-written MoE layers
    for name in model.target_names:
        parent, _, child = name.rpartition(".")
        setattr(reference.get_submodule(parent), child, HandMoE(model.base_model.get_submodule(name)))
    ids, mask, labels = batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        expected_logits = reference(input_ids=ids, attention_mask=mask).logits
        base = make_moe(K=3, randomise=False).base_model(input_ids=ids, attention_mask=mask).logits
    assert out.logits.shape == (3, 9, 64)  # un-replicated batch
    torch.testing.assert_close(out.logits, expected_logits, atol=ATOL, rtol=1e-5)
    expected = ref_nll(expected_logits, labels)
    torch.testing.assert_close(out.hypothesis_losses, expected[None], atol=ATOL, rtol=1e-5)
    assert out.loss.item() == pytest.approx(expected.mean().item(), abs=ATOL)
    assert out.winners.tolist() == [0, 0, 0] and out.weights.tolist() == [[1.0, 1.0, 1.0]]
    assert (out.logits - base).abs().max() > 1e-2  # the experts and routers are really used
    model.train()  # the training loss is the same plain NLL (no winner-takes-all)
    train_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert train_loss.item() == pytest.approx(out.loss.item(), abs=ATOL)


def test_forced_expert_equals_mcl_hypothesis_in_the_model():
    moe = make_moe(K=3)
    mcl = MCLModel(tiny_llama(), MCLConfig(num_hypotheses=3), LoRAConfig(r=4, alpha=8, target_modules=TARGETS))
    with torch.no_grad():
        for mine, twin in zip(lora_layers(moe), lora_layers(mcl)):
            twin.lora_A.copy_(mine.lora_A)
            twin.lora_B.copy_(mine.lora_B)
    ids, mask, labels = batch()
    with torch.no_grad():
        all_k = mcl(input_ids=ids, attention_mask=mask).logits
        for k in range(3):
            forced = moe(input_ids=ids, attention_mask=mask, labels=labels, routing=k)
            torch.testing.assert_close(forced.logits, all_k[k], atol=ATOL, rtol=1e-5)
        kwargs = dict(max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert moe.generate(ids, attention_mask=mask, routing=2, **kwargs).tolist() == \
            mcl.generate(ids, attention_mask=mask, hypothesis_idx=2, **kwargs).tolist()


def test_generate_decodes_the_mixture_by_default():
    model = make_moe(K=3).eval()
    ids, mask, _ = batch()
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    default = model.generate(ids, attention_mask=mask, **kwargs)
    assert default.tolist() == model.generate(ids, attention_mask=mask, routing=Route.MIXTURE, **kwargs).tolist()
    assert default.tolist() == model.generate(ids, attention_mask=mask, routing="mixture", **kwargs).tolist()
    # per-token routing is the same with and without the KV cache
    assert default.tolist() == model.generate(ids, attention_mask=mask, use_cache=False, **kwargs).tolist()
    torch.manual_seed(3)
    sampled = model.generate(ids, attention_mask=mask, routing=Route.SAMPLED, **kwargs)
    torch.manual_seed(3)
    assert sampled.tolist() == model.generate(ids, attention_mask=mask, routing=Route.SAMPLED, **kwargs).tolist()
    with pytest.raises(ValueError, match="routing must be 'mixture' or 'sampled', got 'moe'"):
        model.generate(ids, routing="moe", **kwargs)
    with pytest.raises(ValueError, match="a LoRA-MoE model runs under"):
        model.generate(ids, routing=Route.BASE, **kwargs)
    assert all(layer.routing is Route.REPLICATED for layer in lora_layers(model))  # restored after generate


def test_gradients_reach_router_and_every_expert():
    model = make_moe(K=3).train()
    ids, mask, labels = batch()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    for layer in lora_layers(model):
        assert layer.router.weight.grad.abs().max() > 0
        for k in range(3):
            assert layer.lora_A.grad[k].abs().max() > 0 and layer.lora_B.grad[k].abs().max() > 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.adapter_state_dict())  # A, B and routers; the backbone stays frozen


def test_save_and_load_adapters_round_trip_with_routers(tmp_path):
    model = make_moe(K=3, seed=0)
    folder = model.save_adapters(tmp_path / "moe")
    tensors = load_file(str(folder / ADAPTER_FILE))
    assert len(tensors) == 3 * len(model.target_names)
    assert sum(name.endswith("router.weight") for name in tensors) == len(model.target_names)
    other = make_moe(K=3, seed=7)
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        assert not torch.equal(other(input_ids=ids, attention_mask=mask).logits, expected)
        other.load_adapters(folder)
        torch.testing.assert_close(other(input_ids=ids, attention_mask=mask).logits, expected, rtol=0, atol=0)
    for name, value in adapter_state_dict(model).items():
        assert torch.equal(adapter_state_dict(other)[name], value)


def test_moe_and_mcl_adapters_do_not_mix(tmp_path):
    moe_dir = make_moe(K=3).save_adapters(tmp_path / "moe")
    mcl_dir = make_moe(K=3, mode="wta").save_adapters(tmp_path / "mcl")
    with pytest.raises(ValueError, match=r"holds LoRA-MoE experts with token routers .*this model has LoRA-MCL "
                                         r"hypotheses without router \(mcl mode 'wta'\)"):
        make_moe(K=3, mode="wta").load_adapters(moe_dir)
    with pytest.raises(ValueError, match=r"holds LoRA-MCL hypotheses without router .*this model has LoRA-MoE"):
        make_moe(K=3).load_adapters(mcl_dir)


def test_lightning_checkpoint_records_the_mode_and_refuses_a_mismatch():
    from loramcl.lit_module import MCLLitModule

    lora = LoRAConfig(r=2, target_modules=TARGETS)
    moe = MCLLitModule(tiny_llama(), MCLConfig(num_hypotheses=2, mode="moe"), lora, optimizer=None)
    checkpoint = {"state_dict": moe.state_dict()}
    moe.on_save_checkpoint(checkpoint)
    assert checkpoint["loramcl"]["mode"] == "moe" and checkpoint["loramcl"]["num_hypotheses"] == 2
    routers = [k for k in checkpoint["state_dict"] if k.endswith("router.weight")]
    assert len(routers) == len(moe.model.target_names)  # routers are trainable: kept with the adapters
    assert len(checkpoint["state_dict"]) == 3 * len(moe.model.target_names)
    mcl = MCLLitModule(tiny_llama(), MCLConfig(num_hypotheses=2, mode="relaxed-wta"), lora, optimizer=None)
    with pytest.raises(ValueError, match="this checkpoint holds LoRA-MoE experts with token routers"):
        mcl.on_load_checkpoint(checkpoint)
    mcl_checkpoint = {"state_dict": mcl.state_dict()}
    mcl.on_save_checkpoint(mcl_checkpoint)
    assert mcl_checkpoint["loramcl"]["mode"] == "relaxed-wta"
    with pytest.raises(ValueError, match="this checkpoint holds LoRA-MCL hypotheses without router"):
        moe.on_load_checkpoint(mcl_checkpoint)


def test_peft_export_refuses_the_mixture_but_exports_an_expert(tmp_path):
    from peft import PeftModel

    from loramcl.peft_io import export_all

    model = make_moe(K=3).eval()
    with pytest.raises(ValueError, match="token routers have no peft equivalent"):
        export_all(model, tmp_path / "all")
    assert not (tmp_path / "all").exists()
    (folder,) = export_all(model, tmp_path / "one", hypotheses=[1])
    assert json.loads((tmp_path / "one" / "mcl_export.json").read_text())["mode"] == "moe"
    ids, mask, _ = batch()
    peft_model = PeftModel.from_pretrained(tiny_llama(), str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask, routing=1).logits,
                                   atol=ATOL, rtol=1e-5)


# ------------------------------------------------------------------------ a training run
def test_train_py_moe_run_checkpoints_under_moe_k(tmp_path):
    """task=finetune with mcl=moe on the toy data: checkpoints/moe2/ with routers and mode "moe"."""
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path}", "task=finetune", "mcl=moe",
           "mcl.num_hypotheses=2", "trainer.max_steps=4", "trainer.val_check_interval=2",
           "data.num_val_sequences=32", "data.batch_size=8", "logger=none", "callbacks=model_checkpoint"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True,
                          text=True, timeout=timeout(600))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next(tmp_path.glob("transition1/runs/*"))
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["moe2"]
    ckpt = torch.load(run_dir / "checkpoints" / "moe2" / "last.ckpt", weights_only=False)
    assert ckpt["loramcl"]["mode"] == "moe" and ckpt["loramcl"]["num_hypotheses"] == 2
    keys = set(ckpt["state_dict"])
    assert sum(k.endswith("router.weight") for k in keys) == 8 and len(keys) == 3 * 8  # A, B, router x 8 layers
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "val/wta_loss" in metrics and "train/loss" in metrics
    assert not any("hyp" in k or "win_rate" in k for k in metrics)
    # resuming it as an MCL run is refused before any model is built
    from loramcl.runs import require_checkpoint_meta

    last = str(run_dir / "checkpoints" / "moe2" / "last.ckpt")
    with pytest.raises(ConfigError, match="holds LoRA-MoE experts with token routers"):
        require_checkpoint_meta(last, MCLConfig(num_hypotheses=2), LoRAConfig(r=64))  # lora=toy: r = 64
    require_checkpoint_meta(last, MCLConfig(num_hypotheses=2, mode="moe"), LoRAConfig(r=64))
