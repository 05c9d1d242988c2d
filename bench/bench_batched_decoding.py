"""Time the decoding of K candidates per prompt: MCL in one batched call vs K calls vs MLE beam search.

    mcl-batched   the K hypotheses in ONE `generate` call: prompts replicated K times, one routing id
                  per row (what eval.py does, decoding=mcl_beam*)
    mcl-separate  K `generate` calls, one per hypothesis (decoding.batched=false)
    mle-beam      a one-adapter model, beam search with B = K returning K sequences (decoding=mle_beam)

All three decode the same prompts with the same beam width per hypothesis (`--beams`, 1 = greedy for
the MCL rows), `max_new_tokens` tokens without early EOS (min_new_tokens = max_new_tokens), so that
every method generates the same number of steps. Before timing, the script checks that batched and
separate MCL calls give identical sequences. Timings are the median of --repeats interleaved runs
after --warmup runs.

    python bench/bench_batched_decoding.py --threads 1                 # CPU, small Llama, K = 2 3 5
    python bench/bench_batched_decoding.py --device cuda --hidden 1024 --layers 8 --batch 16 --new 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from loramcl import LoRAConfig, MCLConfig, MCLModel
from loramcl.layers import lora_layers
from loramcl.model import replicate


def build(args, K: int, device: torch.device) -> MCLModel:
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
                      num_key_value_heads=max(1, args.hidden // 64), max_position_embeddings=2048)
    model = MCLModel(LlamaForCausalLM(cfg), MCLConfig(num_hypotheses=K),
                     LoRAConfig(r=args.r, alpha=args.r, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(0.0, 0.05)
    return model.to(device).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="prompts per call")
    p.add_argument("--prompt", type=int, default=32, help="prompt length")
    p.add_argument("--new", type=int, default=20, help="generated tokens")
    p.add_argument("--beams", type=int, default=1, help="beam width of each MCL hypothesis")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 3, 5])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"device={device} threads={torch.get_num_threads()} hidden={args.hidden} layers={args.layers} "
          f"batch={args.batch} prompt={args.prompt} new={args.new} mcl beams={args.beams}")
    print(f"{'K':>3} {'mcl-batched ms':>15} {'mcl-separate ms':>16} {'mle-beam(B=K) ms':>17} "
          f"{'separate/batched':>17} {'mle-beam/batched':>17}")
    for K in args.ks:
        model = build(args, K, device)
        g = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(3, args.vocab, (args.batch, args.prompt), generator=g).to(device)
        mask = torch.ones_like(ids)
        common = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=0,
                      eos_token_id=1, repetition_penalty=1.1)
        n = args.batch

        def batched():
            rows = {"input_ids": replicate(ids, K, n), "attention_mask": replicate(mask, K, n)}
            return model.generate(**rows, hypothesis_idx=torch.arange(K).repeat_interleave(n), num_beams=args.beams,
                                  **common)

        def separate():
            return torch.cat([model.generate(input_ids=ids, attention_mask=mask, hypothesis_idx=k,
                                             num_beams=args.beams, **common) for k in range(K)])

        def mle_beam():
            return model.generate(input_ids=ids, attention_mask=mask, hypothesis_idx=0, num_beams=K,
                                  num_return_sequences=K, **common)

        a, b = batched(), separate()
        if not torch.equal(a, b):
            raise SystemExit(f"K={K}: batched and separate MCL decoding differ")
        fns = {"batched": batched, "separate": separate, "mle": mle_beam}
        times = {k: [] for k in fns}
        for i in range(args.warmup + args.repeats):
            for name, fn in fns.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                if i >= args.warmup:
                    times[name].append(1000 * (time.perf_counter() - t0))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{K:>3} {med['batched']:>15.1f} {med['separate']:>16.1f} {med['mle']:>17.1f} "
              f"{med['separate'] / med['batched']:>16.2f}x {med['mle'] / med['batched']:>16.2f}x")


if __name__ == "__main__":
    main()
