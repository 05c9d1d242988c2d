"""The K-way LoRA layer against independent references.

The main reference is peft: K separate peft LoRA adapters holding the same A_k / B_k must give the
same logits and the same gradients as hypothesis k of `MultiLoRALinear`, whether hypothesis k runs
alone or as slice k of the one-pass, K-times replicated forward. The rest checks the layer against
its formula y_k = W x + (alpha / r) B_k A_k dropout(x), written out by hand, and the layer's fast
implementation against its reference one (outputs and gradients).
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from tiny_models import tiny_llama
from loramcl import LoRAConfig, MCLConfig, MCLModel, MultiLoRALinear
from loramcl.layers import Route, lora_layers, set_implementation

ATOL = 1e-5


def batch(seed: int = 0, n: int = 3, s: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (n, s), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # one left-padded row
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a "prompt"
    return ids, mask, labels


def ref_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL per row of the shifted labels (padding is already -100 in `labels`)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    target = labels[:, 1:]
    keep = target != -100
    token = -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (token * keep).sum(1) / keep.sum(1)


def peft_twin(K=3, r=4, alpha=12.0, targets=("q_proj", "v_proj", "down_proj"), seed=0):
    """(ours, peft model): peft adapter "h{k}" holds exactly our A_k, B_k (B random, nonzero)."""
    base = tiny_llama(seed)
    targets = list(targets) if not isinstance(targets, str) else targets
    ours = MCLModel(copy.deepcopy(base), MCLConfig(num_hypotheses=K), LoRAConfig(r=r, alpha=alpha, target_modules=targets))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in lora_layers(ours):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
    pm = get_peft_model(copy.deepcopy(base), config, adapter_name="h0")
    for k in range(1, K):
        pm.add_adapter(f"h{k}", config)
    with torch.no_grad():
        for name in ours.target_names:
            mine = ours.base_model.get_submodule(name)
            theirs = pm.base_model.model.get_submodule(name)
            for k in range(K):
                assert theirs.scaling[f"h{k}"] == pytest.approx(mine.scaling)
                theirs.lora_A[f"h{k}"].weight.copy_(mine.lora_A[k])
                theirs.lora_B[f"h{k}"].weight.copy_(mine.lora_B[k])
    return ours, pm


def peft_targets(pm) -> list[str]:
    prefix = "base_model.model."
    return [n[len(prefix):] for n, m in pm.named_modules() if isinstance(m, LoraLayer)]


# ------------------------------------------------------------------------ outputs vs peft
def test_logits_equal_k_peft_adapters():
    K = 3
    ours, pm = peft_twin(K=K)
    ids, mask, _ = batch()
    with torch.no_grad():
        all_k = ours(input_ids=ids, attention_mask=mask).logits  # (K, B, S, V), one pass
        assert all_k.shape == (K, 3, 9, 64)
        per_k = []
        for k in range(K):
            pm.set_adapter(f"h{k}")
            expected = pm(input_ids=ids, attention_mask=mask).logits
            alone = ours(input_ids=ids, attention_mask=mask, hypothesis_idx=k).logits
            torch.testing.assert_close(alone, expected, atol=ATOL, rtol=1e-5)
            torch.testing.assert_close(all_k[k], expected, atol=ATOL, rtol=1e-5)
            per_k.append(expected)
        with pm.disable_adapter():
            base_logits = pm(input_ids=ids, attention_mask=mask).logits
    # the comparison is meaningful: hypotheses differ from each other and from the base
    assert (per_k[0] - per_k[1]).abs().max() > 1e-2
    assert (per_k[2] - base_logits).abs().max() > 1e-2


@pytest.mark.parametrize("loss_kind", ["sum", "wta"])
def test_gradients_equal_k_peft_adapters(loss_kind):
    K = 3
    ours, pm = peft_twin(K=K)
    ids, mask, labels = batch(n=4)
    ours.train()
    out = ours(input_ids=ids, attention_mask=mask, labels=labels)
    # reference per-hypothesis losses, computed from peft's logits without loramcl's NLL
    with torch.no_grad():
        L_ref = []
        for k in range(K):
            pm.set_adapter(f"h{k}")
            L_ref.append(ref_nll(pm(input_ids=ids, attention_mask=mask).logits, labels))
        L_ref = torch.stack(L_ref)  # (K, B)
    torch.testing.assert_close(out.hypothesis_losses, L_ref, atol=ATOL, rtol=1e-5)
    winners = L_ref.argmin(0)
    assert out.winners.tolist() == winners.tolist()

    loss = out.hypothesis_losses.mean(1).sum() if loss_kind == "sum" else out.loss
    if loss_kind == "wta":
        assert loss.item() == pytest.approx(L_ref.min(0).values.mean().item(), abs=ATOL)
    loss.backward()

    pm.train()
    for k in range(K):  # peft: one adapter at a time, its share of the same loss
        pm.set_adapter(f"h{k}")
        nll = ref_nll(pm(input_ids=ids, attention_mask=mask).logits, labels)
        share = nll.mean() if loss_kind == "sum" else (nll * (winners == k)).sum() / nll.numel()
        share.backward()

    checked_nonzero = 0
    for name in ours.target_names:
        mine = ours.base_model.get_submodule(name)
        theirs = pm.base_model.model.get_submodule(name)
        for k in range(K):
            for ours_grad, adapter in ((mine.lora_A.grad[k], theirs.lora_A), (mine.lora_B.grad[k], theirs.lora_B)):
                ref = adapter[f"h{k}"].weight.grad
                ref = torch.zeros_like(ours_grad) if ref is None else ref
                torch.testing.assert_close(ours_grad, ref, atol=ATOL, rtol=1e-4)
                checked_nonzero += int(ref.abs().max() > 1e-6)
    n_winning = len(set(winners.tolist())) if loss_kind == "wta" else K
    assert checked_nonzero == 2 * len(ours.target_names) * n_winning
    if loss_kind == "wta" and n_winning < K:  # a hypothesis that wins nothing gets no gradient
        loser = next(k for k in range(K) if k not in winners.tolist())
        assert all(layer.lora_B.grad[loser].abs().max() == 0 for layer in lora_layers(ours))


# ------------------------------------------------------------------------ targeting
def test_all_linear_matches_peft_target_set():
    ours, pm = peft_twin(K=2, targets="all-linear")
    assert ours.target_names == peft_targets(pm)
    assert len(ours.target_names) == 14  # 7 per decoder layer (q k v o gate up down), no lm_head
    assert not any(n.endswith("lm_head") for n in ours.target_names)


def test_regex_target_matches_peft():
    regex = r".*\.layers\.1\.self_attn\.(q|v)_proj"
    ours, pm = peft_twin(K=2, targets=regex)
    assert ours.target_names == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert ours.target_names == peft_targets(pm)


def test_exclude_modules():
    model = MCLModel(tiny_llama(), MCLConfig(num_hypotheses=2),
                     LoRAConfig(target_modules=["q_proj", "v_proj"], exclude_modules=r".*layers\.0\..*"))
    assert model.target_names == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_target_matching_nothing_lists_existing_suffixes():
    with pytest.raises(ValueError) as info:
        MCLModel(tiny_llama(), MCLConfig(num_hypotheses=2), LoRAConfig(target_modules=["qkv_proj"]))
    message = str(info.value)
    assert "['qkv_proj']" in message and "matches no module of LlamaForCausalLM" in message
    for suffix in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"):
        assert suffix in message


# ------------------------------------------------------------------------ parameters, init
def test_base_frozen_and_trainable_count_matches_peft():
    K = 4
    targets = ["q_proj", "k_proj", "up_proj"]
    model = MCLModel(tiny_llama(), MCLConfig(num_hypotheses=K), LoRAConfig(r=3, alpha=6, target_modules=targets))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    pm = get_peft_model(tiny_llama(), LoraConfig(r=3, lora_alpha=6, target_modules=targets))
    per_adapter, total_peft = pm.get_nb_trainable_parameters()
    ours_trainable, ours_total = model.parameter_counts()
    assert ours_trainable == K * per_adapter
    assert ours_total - ours_trainable == total_peft - per_adapter  # the same frozen backbone


def test_init_is_lora_init_and_starts_at_the_base_model():
    base = tiny_llama()
    model = MCLModel(copy.deepcopy(base), MCLConfig(num_hypotheses=3), LoRAConfig(r=4, target_modules="all-linear"))
    for layer in lora_layers(model):
        bound = 1 / math.sqrt(layer.lora_A.shape[-1])  # kaiming_uniform(a=sqrt 5): U(-1/sqrt(d_in), +)
        assert layer.lora_A.abs().max() <= bound
        assert layer.lora_A.abs().max() > 0.8 * bound
        assert not torch.equal(layer.lora_A[0], layer.lora_A[1])  # symmetry broken by A
        assert torch.count_nonzero(layer.lora_B) == 0
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    for k in range(3):
        torch.testing.assert_close(got[k], expected, atol=ATOL, rtol=1e-5)


# ------------------------------------------------------------------------ merge, routing
def test_merge_and_unload_equals_hypothesis():
    ours, _ = peft_twin(K=3)
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = ours(input_ids=ids, attention_mask=mask, hypothesis_idx=2).logits
        merged = ours.merge_and_unload(2)
        assert not any(isinstance(m, MultiLoRALinear) for m in merged.modules())
        got = merged(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


def test_per_row_routing_equals_each_row_with_its_hypothesis():
    ours, _ = peft_twin(K=3)
    ids, mask, _ = batch()
    hyps = [2, 0, 1]
    with torch.no_grad():
        with ours.route(torch.tensor(hyps)):
            routed = ours.base_model(input_ids=ids, attention_mask=mask).logits
        for row, k in enumerate(hyps):
            expected = ours(input_ids=ids, attention_mask=mask, hypothesis_idx=k).logits[row]
            torch.testing.assert_close(routed[row], expected, atol=ATOL, rtol=1e-5)
    assert all(layer.routing is Route.REPLICATED for layer in lora_layers(ours))  # the context restores it
    with pytest.raises(ValueError, match=r"hypothesis ids must be in \[0, 2\], got \[0, 3\]"):
        with ours.route([0, 3]):
            pass


def test_routing_accepts_numpy_ints_and_rejects_other_types():
    import numpy as np

    ours, _ = peft_twin(K=3)
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = ours(input_ids=ids, attention_mask=mask, hypothesis_idx=1).logits
        with ours.route(np.int64(1)):
            got = ours.base_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"hypothesis_idx must be in \[0, 2\], got 5"):
        with ours.route(np.int64(5)):
            pass
    with pytest.raises(TypeError, match="routing must be a Route .*, a hypothesis index or one index per row, got 'all'"):
        with ours.route("all"):
            pass


def test_routing_survives_beam_expansion():
    ours, _ = peft_twin(K=3)
    ours.eval()
    ids = torch.randint(3, 64, (3, 5), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    kwargs = dict(max_new_tokens=6, num_beams=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    hyps = [2, 0, 1]
    together = ours.generate(ids, attention_mask=mask, hypothesis_idx=hyps, **kwargs)
    alone = [ours.generate(ids[i : i + 1], attention_mask=mask[i : i + 1], hypothesis_idx=k, **kwargs)[0]
             for i, k in enumerate(hyps)]
    assert together.tolist() == [a.tolist() for a in alone]
    # meaningful: another hypothesis decodes something else for at least one row
    other = [ours.generate(ids[i : i + 1], attention_mask=mask[i : i + 1], hypothesis_idx=(k + 1) % 3, **kwargs)[0]
             for i, k in enumerate(hyps)]
    assert any(a.tolist() != o.tolist() for a, o in zip(alone, other))


# ------------------------------------------------------------------------ the formula, dropout
def layer_with_weights(K=3, r=2, alpha=6.0, dropout=0.0, same_adapters=False, seed=0):
    torch.manual_seed(seed)
    layer = MultiLoRALinear(nn.Linear(8, 5), K, r, alpha, dropout)
    with torch.no_grad():
        layer.lora_B.normal_()
        if same_adapters:
            layer.lora_A.copy_(layer.lora_A[:1].expand_as(layer.lora_A))
            layer.lora_B.copy_(layer.lora_B[:1].expand_as(layer.lora_B))
    return layer


def by_hand(layer, x, k, mask=None):
    """W x + b + (alpha / r) B_k A_k (mask * x) / (1 - p)."""
    x_drop = x if mask is None else x * mask
    W, b = layer.base_layer.weight, layer.base_layer.bias
    return x @ W.T + b + (layer.alpha / layer.r) * (x_drop @ layer.lora_A[k].T) @ layer.lora_B[k].T


@pytest.mark.parametrize("train", [True, False])
def test_scaling_alpha_over_r_in_train_and_eval(train):
    layer = layer_with_weights(K=3, r=2, alpha=6.0)  # scaling 3, not 1
    layer.train(train)
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        layer.routing = Route.REPLICATED
        y = layer(x.repeat(3, 1, 1)).view(3, 2, 4, 5)
        for k in range(3):
            torch.testing.assert_close(y[k], by_hand(layer, x, k), atol=ATOL, rtol=1e-5)
            layer.routing = k
            torch.testing.assert_close(layer(x), by_hand(layer, x, k), atol=ATOL, rtol=1e-5)
            layer.routing = Route.REPLICATED
        layer.routing = Route.BASE
        torch.testing.assert_close(layer(x), layer.base_layer(x))
        layer.routing = torch.tensor([1, 2])
        torch.testing.assert_close(layer(x)[1], by_hand(layer, x[1:], 2)[0], atol=ATOL, rtol=1e-5)


def test_dropout_masks_differ_per_hypothesis_in_train_mode():
    p, K = 0.5, 3
    layer = layer_with_weights(K=K, dropout=p, same_adapters=True)  # hypotheses differ by the mask only
    layer.train()
    x = torch.randn(2, 4, 8)
    x_rep = x.repeat(K, 1, 1)
    with torch.no_grad():
        torch.manual_seed(123)
        y = layer(x_rep).view(K, 2, 4, 5)
        torch.manual_seed(123)
        y_again = layer(x_rep).view(K, 2, 4, 5)
        torch.manual_seed(123)  # the same draw on a tensor of the same shape gives the layer's mask
        mask = F.dropout(torch.ones_like(x_rep), p, training=True).view(K, 2, 4, 8)
    torch.testing.assert_close(y, y_again, rtol=0, atol=0)  # deterministic under manual_seed
    assert (y[0] - y[1]).abs().max() > 1e-3 and (y[1] - y[2]).abs().max() > 1e-3
    assert not torch.equal(mask[0], mask[1])
    for k in range(K):
        torch.testing.assert_close(y[k], by_hand(layer, x, k, mask[k]), atol=ATOL, rtol=1e-5)

    layer.eval()  # no dropout: every hypothesis (identical adapters) gives the same output
    with torch.no_grad():
        y_eval = layer(x_rep).view(K, 2, 4, 5)
    for k in range(K):
        torch.testing.assert_close(y_eval[k], by_hand(layer, x, 0), atol=ATOL, rtol=1e-5)


def test_model_dropout_train_vs_eval():
    model = MCLModel(tiny_llama(), MCLConfig(num_hypotheses=2), LoRAConfig(r=4, dropout=0.3))
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_()
            layer.lora_A.copy_(layer.lora_A[:1].expand_as(layer.lora_A))
            layer.lora_B.copy_(layer.lora_B[:1].expand_as(layer.lora_B))
    ids, mask, _ = batch()
    model.train()
    with torch.no_grad():
        train_logits = model(input_ids=ids, attention_mask=mask).logits
    assert (train_logits[0] - train_logits[1]).abs().max() > 1e-3
    model.eval()
    with torch.no_grad():
        eval_logits = model(input_ids=ids, attention_mask=mask).logits
        again = model(input_ids=ids, attention_mask=mask, hypothesis_idx=1).logits
    torch.testing.assert_close(eval_logits[0], eval_logits[1], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(again, eval_logits[1], atol=ATOL, rtol=1e-5)


# ------------------------------------------------------------------------ fast vs reference implementation
def outputs_and_grads(layer, x, routing, autocast=False):
    """(y, dL/dx, dL/dA, dL/dB[, dL/dR]) of one forward / backward, for a fixed weighted-sum loss."""
    layer.zero_grad(set_to_none=True)
    layer.routing = routing
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    weights = torch.linspace(-1, 1, y.numel()).view(y.shape)  # every output element counts differently
    (y.float() * weights).sum().backward()
    grads = [x.grad, layer.lora_A.grad, layer.lora_B.grad]
    if layer.router is not None:
        grads.append(layer.router.weight.grad)
    return [y.detach()] + grads


def assert_close_relative(got, expected, rel):
    """max |got - expected| <= rel * max |expected| (rounding, not a per-element tolerance)."""
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        scale = e.float().abs().max().item()
        assert (g.float() - e.float()).abs().max().item() <= rel * scale, (g, e)


def kway_layer(K=5, r=4, d_in=48, d_out=40, dtype=torch.float32, router=False, seed=0, implementation="fast"):
    torch.manual_seed(seed)
    layer = MultiLoRALinear(nn.Linear(d_in, d_out).to(dtype), K, r, 8.0, router=router, implementation=implementation)
    with torch.no_grad():
        layer.lora_B.normal_()
        if router:
            layer.router.weight.normal_()
    return layer


def twins(**kwargs):
    """(fast, reference): two layers with the same weights, one per implementation."""
    return kway_layer(**kwargs), kway_layer(**kwargs, implementation="reference")


K5 = 5
ROUTED_IDS = {  # (ids, rows of the batch): beam search repeats each row m times contiguously
    "random order, repeats": (torch.randint(0, K5, (30,), generator=torch.Generator().manual_seed(3)), 30),
    "random order, beams m=3": (torch.randint(0, K5, (10,), generator=torch.Generator().manual_seed(4)), 30),
    "permuted blocks": (torch.tensor([2, 0, 4, 1, 3]).repeat_interleave(6), 30),
    "contiguous blocks": (torch.arange(K5).repeat_interleave(6), 30),
    "contiguous blocks, beams m=3": (torch.arange(K5).repeat_interleave(2), 30),
    "one hypothesis": (torch.full((30,), 3), 30),
}


@pytest.mark.parametrize("case", list(ROUTED_IDS))
@pytest.mark.parametrize("shape", [(7,), (), (20,)], ids=["seq", "no-seq", "long-seq"])  # long: K L > 64
def test_fast_routed_ids_equal_reference(case, shape):
    ids, rows = ROUTED_IDS[case]
    layer, reference = twins()
    x = torch.randn(rows, *shape, 48)
    expected = outputs_and_grads(reference, x, ids)
    got = outputs_and_grads(layer, x, ids)
    # same sums in another order, not bit for bit; parameter gradients sum over all rows and tokens
    assert_close_relative(got[:2], expected[:2], 1e-6)
    assert_close_relative(got[2:], expected[2:], 1e-5)
    plan = layer._routed_plan(ids, rows, x.device)  # which fast path ran
    if "contiguous" in case:
        assert plan is Route.REPLICATED
    elif case == "one hypothesis":
        assert plan == 3
    else:
        assert plan.shape == (rows, K5 * 4)  # the block mask (long rows gather instead)
        if shape == (20,):
            assert got[0].equal(expected[0])
    # meaningful: the rows really go through different adapters
    if case != "one hypothesis":
        with torch.no_grad():
            reference.routing = 0
            assert (reference(x) - expected[0]).abs().max() > 1e-2


@pytest.mark.parametrize("routing", [2, Route.REPLICATED], ids=["int", "replicated"])
def test_fast_int_and_replicated_routing_identical_to_reference(routing):
    layer, reference = twins()
    x = torch.randn(10, 7, 48)
    for g, e in zip(outputs_and_grads(layer, x, routing), outputs_and_grads(reference, x, routing)):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_fast_routed_plan_follows_in_place_edits_and_batch_size():
    layer, reference = twins()
    ids = torch.arange(K5).repeat_interleave(2)
    x = torch.randn(30, 48)
    assert layer._routed_plan(ids, 10, x.device) is Route.REPLICATED
    assert layer._routed_plan(ids, 30, x.device) is Route.REPLICATED  # beams: m = 3 rows per id
    ids[0] = 4  # an in-place edit bumps the version counter: the cached plan is not reused
    expected = outputs_and_grads(reference, x, ids)
    got = outputs_and_grads(layer, x, ids)
    assert_close_relative(got[:2], expected[:2], 1e-6)
    assert_close_relative(got[2:], expected[2:], 1e-5)
    assert isinstance(layer._plan[4], torch.Tensor)
    with pytest.raises(ValueError, match="routing has 10 rows but the batch has 25"):
        layer._routed_plan(ids, 25, x.device)


@pytest.mark.parametrize("routing", [2, Route.REPLICATED, Route.MIXTURE], ids=["int", "replicated", "mixture"])
def test_fast_skips_the_fp32_copy_under_autocast_with_identical_results(routing):
    """bf16 -> fp32 -> bf16 is lossless, and the autocast matmuls cast to bf16 anyway: same bits."""
    layer, reference = twins(dtype=torch.bfloat16, router=routing is Route.MIXTURE)
    x = torch.randn(10, 7, 48).to(torch.bfloat16)
    expected = outputs_and_grads(reference, x, routing, autocast=True)
    got = outputs_and_grads(layer, x, routing, autocast=True)
    assert got[0].dtype == torch.bfloat16
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_fast_routed_ids_under_autocast_close_to_reference():
    layer, reference = twins(dtype=torch.bfloat16)
    ids, rows = ROUTED_IDS["random order, beams m=3"]
    x = torch.randn(rows, 7, 48).to(torch.bfloat16)
    expected = outputs_and_grads(reference, x, ids, autocast=True)
    assert_close_relative(outputs_and_grads(layer, x, ids, autocast=True), expected, 2e-2)  # bf16 ulps


def test_implementation_comes_from_the_lora_config_and_is_per_layer():
    """`lora.implementation` reaches every K-way layer of the model built from it; `set_implementation`
    switches the given layers of a built model only (no process-wide state); bad names are refused."""
    assert kway_layer().implementation == "fast"
    targets = ["q_proj", "v_proj"]
    fast = MCLModel(tiny_llama(0), MCLConfig(num_hypotheses=2), LoRAConfig(r=2, target_modules=targets))
    ref = MCLModel(tiny_llama(0), MCLConfig(num_hypotheses=2),
                   LoRAConfig(r=2, target_modules=targets, implementation="reference"))
    assert {layer.implementation for layer in lora_layers(fast)} == {"fast"}
    assert {layer.implementation for layer in lora_layers(ref)} == {"reference"}
    set_implementation(lora_layers(ref), "fast")
    assert {layer.implementation for layer in lora_layers(ref)} == {"fast"}
    assert kway_layer().implementation == "fast"  # layers built later keep their own default
    with pytest.raises(ValueError, match="implementation must be one of fast, reference, got 'gather'"):
        set_implementation(lora_layers(ref), "gather")
    with pytest.raises(ValueError, match="implementation must be one of fast, reference, got 'gather'"):
        kway_layer(implementation="gather")
