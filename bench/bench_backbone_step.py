"""Time one training step (forward + backward + AdamW) of a Qwen2-Audio-shaped model with K hypotheses.

For K in --ks, on a tiny and a mid-size (hidden 512, 8 layers) randomly initialised Qwen2-Audio:
  shared      LoRA-MCL, the frozen audio encoder runs once on the B clips, its output shared by the
              K replicas (the default);
  replicated  LoRA-MCL with the whole input replicated K times (encoder on K x B clips);
  mle_kB      LoRA-MLE (K = 1) on a K-times larger batch (K x B clips): the same number of
              language-model rows as MCL, the usual way to spend the same compute.
Prints median milliseconds and the ratios replicated / shared and mle_kB / shared.

    python bench/bench_backbone_step.py --threads 2                  # CPU
    python bench/bench_backbone_step.py --device cuda --sizes mid large --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from loramcl import LoRAConfig, MCLConfig, MCLModel
from loramcl.tiny_base import tiny_qwen2_audio
from loramcl.tokenizer_builder import train_tokenizer

SIZES = {
    "tiny": {},
    "mid": {"audio": {"d_model": 512, "encoder_layers": 8, "encoder_attention_heads": 8, "encoder_ffn_dim": 2048},
            "text": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8,
                     "num_key_value_heads": 4}},
    "large": {"audio": {"d_model": 1280, "encoder_layers": 16, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120},
              "text": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16,
                       "num_attention_heads": 16, "num_key_value_heads": 8}},
}


def batch(processor, B: int, seconds: float, text_tokens: int, device: str) -> dict:
    tok = processor.tokenizer
    audio = [torch.randn(int(16000 * seconds)).numpy() for _ in range(B)]
    text = ["<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English: " + "a b " * (text_tokens // 2)] * B
    out = processor(text=text, audio=audio, sampling_rate=16000, padding=True, return_tensors="pt")
    out = {k: v.to(device) for k, v in out.items() if k in ("input_ids", "attention_mask", "input_features",
                                                              "feature_attention_mask")}
    out["labels"] = out["input_ids"].clone()
    return out


def step_time(model: MCLModel, inputs: dict, repeats: int, warmup: int, device: str) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for i in range(warmup + repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(**inputs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per clip (the tiny feature extractor holds 4 s)")
    parser.add_argument("--text-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    tok = train_tokenizer(["a b c d e f g"] * 10 + ["Generate the caption in English:"], "qwen2", vocab_size=300)
    lora = LoRAConfig(r=8, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(f"device {args.device}, {args.dtype}, batch {args.batch} clips of {args.seconds} s, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} steps (ms)")
    print("| size | K | shared | replicated | MLE on K x B | replicated / shared | MLE K x B / shared |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        base, processor = tiny_qwen2_audio(tok, sizes=SIZES[size])
        B = args.batch
        small = batch(processor, B, args.seconds, args.text_tokens, args.device)
        for K in args.ks:
            times = {}
            for mode in ("shared", "replicated", "mle_kB"):
                base, _ = tiny_qwen2_audio(tok, sizes=SIZES[size])
                base = base.to(args.device, dtype)
                k = 1 if mode == "mle_kB" else K
                model = MCLModel(base, MCLConfig(num_hypotheses=k), lora, share_encoder=mode != "replicated")
                model.to(args.device)
                inputs = batch(processor, K * B, args.seconds, args.text_tokens, args.device) if mode == "mle_kB" else small
                times[mode] = step_time(model, inputs, args.repeats, args.warmup, args.device)
                del model, base
            print(f"| {size} | {K} | {times['shared']:.1f} | {times['replicated']:.1f} | {times['mle_kB']:.1f} | "
                  f"{times['replicated'] / times['shared']:.2f} | {times['mle_kB'] / times['shared']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
