"""Peak memory and step time of one LoRA-MCL training step per Lightning strategy, at 7B shapes.

Each strategy runs in its own process (clean peak-memory counters) through the real Lightning
Trainer and `MCLLitModule`, on a randomly initialised Llama of the chosen shape (`--shape 7b`:
Llama-2-7B, the language model of ALMA-7B and the LLaVA-NeXT / Qwen2-Audio 7B backbones; nothing
is downloaded), in bf16 with bf16-mixed precision, K hypotheses on q_proj / v_proj:

  single    strategy "auto" (one device, no wrapper)
  ddp       configs/trainer/ddp.yaml's DDPStrategy (find_unused_parameters=False)
  fsdp      loramcl.distributed.fsdp_strategy (LoRAWrapPolicy units, use_orig_params)
  fsdp_ac   the same with activation checkpointing of the decoder blocks

For each it prints the memory after setup (weights), the peak during training, the median step
time after `--warmup` steps, tokens per second, and the time and size of one checkpoint save
(adapter-only: the script checks that every saved tensor is a LoRA weight), then the ratios to
`single`. On one device DDP and FSDP shard nothing: their numbers are the wrapper's overhead; with
N devices FSDP holds about 1/N of the frozen weights per device (see docs/memory_and_speed.md).

    python bench/bench_strategies.py --device cuda --shape 7b                 # a GPU (minutes)
    python bench/bench_strategies.py --shape tiny --strategies single ddp     # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

SHAPES = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32),
}
STRATEGIES = ("single", "ddp", "fsdp", "fsdp_ac")


def make_strategy(name: str):
    from lightning.pytorch.strategies import DDPStrategy

    from loramcl.distributed import fsdp_strategy

    if name == "single":
        return "auto"
    if name == "ddp":
        return DDPStrategy(find_unused_parameters=False)
    return fsdp_strategy(activation_checkpointing=name == "fsdp_ac")


def run_one(args: argparse.Namespace) -> dict:
    """One strategy, in this process: build, train `warmup + steps` steps, save one checkpoint."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from loramcl import LoRAConfig, MCLConfig
    from loramcl.lit_module import MCLLitModule

    cuda = args.device == "cuda"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32
    build_start = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(args.device):
        backbone = LlamaForCausalLM(LlamaConfig(**SHAPES[args.shape], max_position_embeddings=max(512, args.seq)))
    torch.set_default_dtype(previous)
    backbone.requires_grad_(False)
    build_s = time.perf_counter() - build_start
    module = MCLLitModule(backbone, MCLConfig(num_hypotheses=args.k, mode="wta"),
                          LoRAConfig(r=args.r, alpha=args.r, target_modules=["q_proj", "v_proj"]),
                          partial(torch.optim.AdamW, lr=1e-4))
    vocab = SHAPES[args.shape]["vocab_size"]

    class Tokens(Dataset):
        def __len__(self) -> int:
            return args.batch * (args.warmup + args.steps)

        def __getitem__(self, i: int) -> dict:
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(3, vocab, (args.seq,), generator=g)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    times: list[float] = []
    memory: dict[str, float] = {}

    class Clock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            if cuda:
                torch.cuda.synchronize()
                memory["after_setup_gib"] = torch.cuda.memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, strategy=make_strategy(args.strategy),
                        precision="bf16-mixed" if cuda else "32-true", max_steps=args.warmup + args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
                        callbacks=[Clock()])
    loader = DataLoader(Tokens(), batch_size=args.batch, num_workers=0)
    trainer.fit(module, train_dataloaders=loader)
    result = {"strategy": args.strategy, "shape": args.shape, "k": args.k, "batch": args.batch, "seq": args.seq,
              "build_s": build_s, **memory}
    if cuda:
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    measured = times[args.warmup:]
    result["step_s"] = statistics.median(measured) if measured else float("nan")
    result["tokens_per_s"] = args.batch * args.seq / result["step_s"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapters.ckpt"
        start = time.perf_counter()
        trainer.save_checkpoint(path)
        result["save_s"] = time.perf_counter() - start
        if trainer.is_global_zero:
            saved = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
            not_lora = [k for k in saved if "lora_" not in k]
            if not_lora or not saved:
                raise SystemExit(f"checkpoint is not adapter-only: {len(saved)} tensors, e.g. {not_lora[:3]}")
            result["checkpoint_mib"] = path.stat().st_size / 2**20
            result["checkpoint_tensors"] = len(saved)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2, help="items per step (each replicated K times)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--strategy", default=None, help=argparse.SUPPRESS)  # one strategy, in this process
    args = parser.parse_args()
    if args.strategy:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    results = []
    for name in args.strategies:
        cmd = [sys.executable, __file__, "--strategy", name, *sys.argv[1:]]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"{name}: failed (exit {done.returncode})\n{done.stderr[-3000:]}", flush=True)
            results.append({"strategy": name, "error": done.stderr[-3000:]})
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(json.dumps(results[-1]), flush=True)
    ok = [r for r in results if "error" not in r]
    base = next((r for r in ok if r["strategy"] == "single"), None)
    print(f"\n{args.shape}, K={args.k}, batch {args.batch} x seq {args.seq}, device {args.device}")
    print("| strategy | weights after setup (GiB) | peak (GiB) | step (s) | tokens/s | save (s) | checkpoint (MiB) |"
          " peak / single | step / single |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ok:
        ratio = lambda key: f"{r[key] / base[key]:.2f}" if base and key in r and key in base else "-"  # noqa: E731
        print(f"| {r['strategy']} | {r.get('after_setup_gib', float('nan')):.1f} | {r.get('peak_gib', float('nan')):.1f} "
              f"| {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['save_s']:.2f} | {r.get('checkpoint_mib', 0):.1f} "
              f"| {ratio('peak_gib')} | {ratio('step_s')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
