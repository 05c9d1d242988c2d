"""Time one training step (forward + backward) of the K-way LoRA layer against peft.

Three ways to get the loss of all K hypotheses on one batch and its gradient for every adapter:

    ours        MCLModel: the batch replicated K times, one forward, batched matmuls per layer
    peft-loop   K peft adapters: for k in range(K): set_adapter(k), forward, loss, backward
    peft-mixed  K peft adapters, peft's mixed-adapter batch: the batch replicated K times with
                adapter_names=[h0]*B + [h1]*B + ..., one forward, one backward

peft refuses `adapter_names` in training mode, so all three run in eval() mode with lora_dropout=0
(the arithmetic is the same as in training) and still call backward. The loss is the same for all
three: sum over k of the mean NLL of hypothesis k (the WTA loss costs the same: its backward goes
through the same graph). Before timing, the script checks that the three give the same loss and
the same adapter gradients. Timings are the median of --repeats steps after --warmup steps,
the three methods interleaved so that a load change hits them alike.

    python bench/bench_kway_vs_peft.py                          # CPU, tiny Llama, K = 1 2 5 8
    python bench/bench_kway_vs_peft.py --threads 1 --repeats 30
    python bench/bench_kway_vs_peft.py --device cuda --hidden 1024 --layers 8 --batch 8 --seq 256
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from loramcl import LoRAConfig, MCLConfig, MCLModel
from loramcl.layers import lora_layers
from loramcl.losses import sequence_nll


def build(args, K: int, device: torch.device):
    """(ours, peft for the loop, peft for the mixed batch), all holding the same K adapters."""
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 16),
        num_key_value_heads=max(1, args.hidden // 32), max_position_embeddings=max(2048, args.seq),
    )
    base = LlamaForCausalLM(cfg).to(device).eval()
    targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
    ours = MCLModel(copy.deepcopy(base), MCLConfig(num_hypotheses=K),
                    LoRAConfig(r=args.r, alpha=args.alpha, dropout=0.0, target_modules=targets))
    with torch.no_grad():  # B != 0 so that hypotheses differ and the check below means something
        for layer in lora_layers(ours):
            layer.lora_B.normal_(0.0, 0.1)
    peft_cfg = LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules=targets, lora_dropout=0.0)
    twins = []
    for _ in range(2):
        pm = get_peft_model(copy.deepcopy(base), peft_cfg, adapter_name="h0")
        for k in range(1, K):
            pm.add_adapter(f"h{k}", peft_cfg)
        with torch.no_grad():
            for name in ours.target_names:
                mine, theirs = ours.base_model.get_submodule(name), pm.base_model.model.get_submodule(name)
                for k in range(K):
                    theirs.lora_A[f"h{k}"].weight.copy_(mine.lora_A[k])
                    theirs.lora_B[f"h{k}"].weight.copy_(mine.lora_B[k])
        for n, p in pm.named_parameters():
            p.requires_grad_("lora_" in n)  # every adapter trainable (add_adapter leaves new ones frozen)
        twins.append(pm.eval())
    return ours.eval(), twins[0], twins[1]


def step_ours(model, ids, mask, labels, K):
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    loss = out.hypothesis_losses.mean(dim=1).sum()
    loss.backward()
    return loss.detach()


def step_peft_loop(model, ids, mask, labels, K):
    total = 0.0
    for k in range(K):
        model.set_adapter(f"h{k}")
        nll, _ = sequence_nll(model(input_ids=ids, attention_mask=mask).logits, labels, mask)
        loss = nll.mean()
        loss.backward()
        total = total + loss.detach()
    return total


def step_peft_mixed(model, ids, mask, labels, K):
    B = ids.shape[0]
    names = [f"h{k}" for k in range(K) for _ in range(B)]  # hypothesis-major, like ours
    rep = lambda t: t.repeat(K, 1)  # noqa: E731
    logits = model(input_ids=rep(ids), attention_mask=rep(mask), adapter_names=names).logits
    nll, _ = sequence_nll(logits, rep(labels), rep(mask))
    loss = nll.view(K, B).mean(dim=1).sum()
    loss.backward()
    return loss.detach()


def zero_grad(model):
    for p in model.parameters():
        p.grad = None


def adapter_grads(model, K, ours_names):
    """{(layer, 'A'|'B', k): grad} for ours or a peft model."""
    grads = {}
    for name in ours_names:
        if isinstance(model, MCLModel):
            layer = model.base_model.get_submodule(name)
            for k in range(K):
                grads[name, "A", k] = layer.lora_A.grad[k]
                grads[name, "B", k] = layer.lora_B.grad[k]
        else:
            layer = model.base_model.model.get_submodule(name)
            for k in range(K):
                grads[name, "A", k] = layer.lora_A[f"h{k}"].weight.grad
                grads[name, "B", k] = layer.lora_B[f"h{k}"].weight.grad
    return grads


def check(models, steps, batch, K, names):
    """The three methods give the same loss and the same gradient for every adapter."""
    losses, grads = [], []
    for model, step in zip(models, steps):
        zero_grad(model)
        losses.append(step(model, *batch, K).item())
        grads.append(adapter_grads(model, K, names))
    worst = 0.0
    for other in grads[1:]:
        for key, g in grads[0].items():
            worst = max(worst, (g - other[key]).abs().max().item())
    loss_gap = max(abs(v - losses[0]) for v in losses)
    if loss_gap > 1e-4 * max(1.0, abs(losses[0])) or worst > 1e-4:
        raise AssertionError(f"K={K}: methods disagree: losses {losses}, max gradient difference {worst:.2e}")
    return losses[0], loss_gap, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 8])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--targets", default="all-linear", help="'all-linear' or comma-separated suffixes")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} | tiny Llama hidden={args.hidden} "
          f"layers={args.layers} vocab={args.vocab} | batch={args.batch} seq={args.seq} r={args.r} "
          f"alpha={args.alpha:g} targets={args.targets} | median of {args.repeats} after {args.warmup} warm-up")
    print("All three run in eval() mode with lora_dropout=0 (peft refuses adapter_names in training mode) "
          "and still call backward; loss = sum_k mean NLL of hypothesis k.")
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    batch = (ids, mask, labels)

    header = f"{'K':>3} | {'ours ms':>9} | {'peft-loop ms':>12} | {'peft-mixed ms':>13} | {'loop/ours':>9} | {'mixed/ours':>10} | check"
    rows = []
    for K in args.ks:
        models = build(args, K, device)
        steps = (step_ours, step_peft_loop, step_peft_mixed)
        loss, loss_gap, grad_gap = check(models, steps, batch, K, models[0].target_names)
        times = [[], [], []]
        for i in range(args.warmup + args.repeats):
            for j, (model, step) in enumerate(zip(models, steps)):
                zero_grad(model)
                sync()
                t0 = time.perf_counter()
                step(model, *batch, K)
                sync()
                if i >= args.warmup:
                    times[j].append(1000 * (time.perf_counter() - t0))
        ms = [statistics.median(t) for t in times]
        rows.append(f"{K:>3} | {ms[0]:>9.2f} | {ms[1]:>12.2f} | {ms[2]:>13.2f} | {ms[1] / ms[0]:>9.2f} | "
                    f"{ms[2] / ms[0]:>10.2f} | loss {loss:.4f} equal (|dloss| {loss_gap:.1e}, |dgrad| {grad_gap:.1e})")
        print(rows[-1] if len(rows) > 1 else header + "\n" + rows[-1], flush=True)


if __name__ == "__main__":
    main()
