"""The paper's three backbones at their 7B shapes on one GPU: training step time and peak memory, decoding speed.

Random-init models with the published configurations (`loramcl.shapes`: Qwen2-Audio-7B-Instruct with
30 s of audio, LLaVA-1.6-Vicuna-7B with one 672 x 672 image = a base crop and a 2 x 2 tile set,
ALMA-7B / Llama-2-7B on pairs of 256 source + 256 target tokens: `shapes.WORST_ITEM`), bf16 backbone under bf16 autocast (Lightning's
`bf16-mixed`), fp32 adapters with the paper's targets and ranks. Nothing is downloaded.

Training (forward, backward, AdamW), per family, gradient checkpointing off / on, K in --ks:
    mle_B            LoRA-MLE on B items
    mle_KB           LoRA-MLE on K x B items (the same language-model rows as MCL)
    mcl_shared       LoRA-MCL(K), the frozen encoder run once per item and shared by the K replicas
    mcl_replicated   LoRA-MCL(K), the whole input replicated K times (encoder on K x B items)
    mcl_shared_ref   mcl_shared with the former K-way layer (`lora.implementation: reference`), K = max
Decoding, per family, K = max(--ks) outputs per prompt, --new tokens each (no early stop):
    mcl_batched      the K hypotheses in one generate call (one routing id per row), greedy
    mcl_batched_ref  the same with the former K-way layer (per-row adapter gathers)
    mcl_separate     K generate calls, one per hypothesis
    mle_beam         beam search with B = K beams, K returned sequences
    dbs              our diverse beam search, K groups of 1 beam (lambda 0.5)
    dbs_loop         the same with the former per-candidate Python loop (the tests' reference, tests/dbs_reference.py)
Prints markdown tables (time, peak memory, ratios to the goals of issue 12) and writes JSON.

    python bench/gpu_suite.py                                   # GPU: 7B shapes, ~6-8 min on one H100 / H200
    python bench/gpu_suite.py --scale mid --threads 2           # CPU figures at hidden 512
    python bench/gpu_suite.py --tiny                            # CPU smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from loramcl import LoRAConfig, MCLConfig, MCLModel, shapes
from loramcl.backbones import disable_checkpointing, enable_checkpointing
from loramcl.layers import MultiLoRALinear, lora_layers, set_implementation
from loramcl.memory import GiB, live_bytes, time_and_peak

TRAIN_BATCH = {"qwen2_audio": 1, "llava_next": 1, "alma": 4}  # paper: Clotho 1 (x 2 accumulated); MT 4


def strip_adapters(model: nn.Module) -> None:
    """Put every K-way layer's frozen base linear back (the backbone is reused across cells)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, MultiLoRALinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.base_layer)


def wrap(backbone: shapes.Backbone, K: int, share_encoder: bool = True, implementation: str = "fast") -> MCLModel:
    lora = LoRAConfig(dropout=0.0, implementation=implementation, **shapes.PAPER_LORA[backbone.family])
    model = MCLModel(backbone.model, MCLConfig(num_hypotheses=K, mode="relaxed-wta", epsilon=0.05), lora,
                     share_encoder=share_encoder)
    with torch.no_grad():  # non-zero B so that every hypothesis differs (as after training)
        for layer in lora_layers(model):
            layer.lora_B.normal_(0.0, 0.02)
    return model


class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        self.autocast = args.dtype == "bf16"
        self.rows: list[dict] = []
        self.start = time.perf_counter()

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.start > self.args.budget_s

    def record(self, **row) -> None:
        self.rows.append(row)
        keep = {k: v for k, v in row.items() if k not in ("section",)}
        print(json.dumps(keep), file=sys.stderr, flush=True)

    def measure(self, fn, model: MCLModel, inputs: dict, opt=None):
        """(median seconds, peak bytes) of fn, or the reason it could not run."""
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                return time_and_peak(fn, self.device, lambda: sum(live_bytes(model, opt, inputs).values()),
                                     repeats=self.args.repeats, warmup=self.args.warmup)
        except torch.OutOfMemoryError:
            return "OOM"
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ training
    def train_cell(self, backbone, name: str, K: int, B: int, gc: bool, share: bool = True, ref: bool = False) -> None:
        if self.out_of_time():
            self.record(section="train", family=backbone.family, cell=name, K=K, gc=gc, status="skipped (time budget)")
            return
        k_model = 1 if name.startswith("mle") else K
        items = K * B if name == "mle_KB" else B
        implementation = "reference" if ref else "fast"
        model = wrap(backbone, k_model, share_encoder=share, implementation=implementation).to(self.device)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        inputs = shapes.example_batch(backbone, items, device=str(self.device))

        def step() -> None:
            model(**inputs).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        result = self.measure(step, model, inputs, opt)
        tokens = int(inputs["attention_mask"].sum()) * (K if name.startswith("mcl") else 1)
        row = dict(section="train", family=backbone.family, cell=name, K=K, B=B, gc=gc, lm_rows=k_model * items,
                   tokens=tokens)
        if isinstance(result, str):
            row.update(status=result)
        else:
            row.update(status="ok", step_s=result.seconds, peak_gib=result.peak / GiB,
                       tokens_per_s=tokens / result.seconds)
        self.record(**row)
        del model, opt
        strip_adapters(backbone.model)

    def train(self, backbone) -> None:
        B = self.args.batch or TRAIN_BATCH[backbone.family]
        encoder = backbone.family != "alma"
        for gc in (False, True):
            if gc:
                enable_checkpointing(backbone.model)
            for K in self.args.ks:
                if K == 1:
                    self.train_cell(backbone, "mle_B", 1, B, gc)
                    continue
                self.train_cell(backbone, "mle_KB", K, B, gc)
                self.train_cell(backbone, "mcl_shared", K, B, gc)
                if encoder:
                    self.train_cell(backbone, "mcl_replicated", K, B, gc, share=False)
                if K == max(self.args.ks):
                    self.train_cell(backbone, "mcl_shared_ref", K, B, gc, ref=True)
            if gc:
                disable_checkpointing(backbone.model)

    # ------------------------------------------------------------------ decoding
    def decode(self, backbone) -> None:
        from loramcl.decoding.dbs import diverse_beam_search

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import dbs_reference  # the former loop lives with the tests it is the reference of

        K, B, new = max(self.args.ks), self.args.decode_batch, self.args.new
        model = wrap(backbone, K).to(self.device).eval()
        prompts = shapes.prompts_of(shapes.example_batch(backbone, B, device=str(self.device)))
        tok = backbone.tokenizer
        common = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
        replicated = {k: v.repeat(K, *[1] * (v.ndim - 1)) for k, v in prompts.items()}
        ids = torch.arange(K, device=self.device).repeat_interleave(B)

        def batched():
            model.generate(**replicated, hypothesis_idx=ids, **common)

        def separate():
            for k in range(K):
                model.generate(**prompts, hypothesis_idx=k, **common)

        def beam():
            model.generate(**prompts, hypothesis_idx=0, num_beams=K, num_return_sequences=K, early_stopping=False,
                           length_penalty=1.0, **common)

        def dbs(search):
            def run():
                with model.route(0):
                    search(model.base_model, prompts["input_ids"], prompts["attention_mask"], num_beams=K,
                           num_beam_groups=K, diversity_penalty=0.5, num_return_sequences=K,
                           max_new_tokens=new, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                           **{k: v for k, v in prompts.items() if k not in ("input_ids", "attention_mask")})
            return run

        cells = {"mcl_batched": batched, "mcl_batched_ref": batched, "mcl_separate": separate, "mle_beam": beam,
                 "dbs": dbs(diverse_beam_search), "dbs_loop": dbs(dbs_reference.diverse_beam_search)}
        for name, fn in cells.items():
            if self.out_of_time():
                self.record(section="decode", family=backbone.family, cell=name, K=K, status="skipped (time budget)")
                continue
            # one model for every cell: its layers switched to the former K-way layer for the _ref cells
            set_implementation(lora_layers(model), "reference" if name.endswith("_ref") else "fast")
            with torch.no_grad():
                result = self.measure(fn, model, prompts)
            row = dict(section="decode", family=backbone.family, cell=name, K=K, B=B, new_tokens=new)
            if isinstance(result, str):
                row.update(status=result)
            else:
                row.update(status="ok", seconds=result.seconds, peak_gib=result.peak / GiB,
                           tokens_per_s=B * K * new / result.seconds)
            self.record(**row)
        del model
        strip_adapters(backbone.model)

    def run(self) -> None:
        for family in self.args.families:
            t = time.perf_counter()
            backbone = shapes.build(family, self.args.scale, device=str(self.device), dtype=self.dtype)
            backbone.model.requires_grad_(False)
            n = sum(p.numel() for p in backbone.model.parameters())
            self.record(section="build", family=family, parameters_b=n / 1e9, seconds=time.perf_counter() - t)
            if not self.args.skip_train:
                self.train(backbone)
            if not self.args.skip_decode:
                self.decode(backbone)
            del backbone
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def _get(rows, **match):
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()) and r.get("status") == "ok":
            return r
    return None


def report(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown tables: every cell, then the goals of issue 12 with the measured ratios."""
    out = [f"device {args.device_name}, scale {args.scale}, {args.dtype}, torch {torch.__version__}", "",
           "| family | cell | K | B | GC | step (s) | peak (GiB) | tokens/s | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["section"] == "train":
            out.append(f"| {r['family']} | {r['cell']} | {r['K']} | {r.get('B', '')} | {'on' if r['gc'] else 'off'} | "
                       f"{r.get('step_s', float('nan')):.3f} | {r.get('peak_gib', float('nan')):.2f} | "
                       f"{r.get('tokens_per_s', float('nan')):.0f} | {r['status']} |")
    out += ["", "| family | decoding | K | B | new tokens | time (s) | peak (GiB) | tokens/s | status |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["section"] == "decode":
            out.append(f"| {r['family']} | {r['cell']} | {r['K']} | {r.get('B', '')} | {r.get('new_tokens', '')} | "
                       f"{r.get('seconds', float('nan')):.3f} | {r.get('peak_gib', float('nan')):.2f} | "
                       f"{r.get('tokens_per_s', float('nan')):.0f} | {r['status']} |")
    K = max(args.ks)
    goals = []

    def ratio(a, b, key):
        return None if a is None or b is None else a[key] / b[key]

    for fam in args.families:
        for gc in (False, True):
            mcl, mle = _get(rows, family=fam, cell="mcl_shared", K=K, gc=gc), _get(rows, family=fam, cell="mle_KB", K=K, gc=gc)
            ref = _get(rows, family=fam, cell="mcl_shared_ref", K=K, gc=gc)
            limit = 1.05 if fam == "alma" else 0.8
            goals.append((fam, f"MCL(K={K}) step / MLE on {K} x B (GC {'on' if gc else 'off'})", ratio(mcl, mle, "step_s"),
                          f"<= {limit}"))
            if fam == "alma":
                goals.append((fam, f"MCL(K={K}) peak / MLE on {K} x B (GC {'on' if gc else 'off'})",
                              ratio(mcl, mle, "peak_gib"), "<= 1.05"))
            goals.append((fam, f"MCL step, former / new K-way layer (GC {'on' if gc else 'off'})", ratio(ref, mcl, "step_s"),
                          "(speed-up)"))
        d = {c: _get(rows, family=fam, cell=c) for c in ("mcl_batched", "mcl_batched_ref", "mcl_separate", "mle_beam",
                                                          "dbs", "dbs_loop")}
        goals += [(fam, "K-hypothesis decoding / beam search B = K", ratio(d["mcl_batched"], d["mle_beam"], "seconds"), "<= 1.1"),
                  (fam, "K sequential calls / batched", ratio(d["mcl_separate"], d["mcl_batched"], "seconds"), ">= 3"),
                  (fam, "batched decoding, former / new K-way layer", ratio(d["mcl_batched_ref"], d["mcl_batched"], "seconds"),
                   "(speed-up)"),
                  (fam, "DBS (K groups) / beam search B = K", ratio(d["dbs"], d["mle_beam"], "seconds"), "<= 1.5"),
                  (fam, "DBS, former loop / vectorised", ratio(d["dbs_loop"], d["dbs"], "seconds"), "(speed-up)")]
    out += ["", "| family | ratio | measured | goal |", "|---|---|---|---|"]
    out += [f"| {f} | {name} | {'n/a' if v is None else f'{v:.2f}'} | {goal} |" for f, name, v, goal in goals]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the CPU smoke run: tiny shapes, K 1 and 2, one repeat")
    p.add_argument("--scale", choices=shapes.SCALES, default=None, help="default: 7b with CUDA, mid without")
    p.add_argument("--families", nargs="+", choices=shapes.FAMILIES, default=list(shapes.FAMILIES))
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--batch", type=int, default=None, help="training items per step (default: the paper's per family)")
    p.add_argument("--decode-batch", type=int, default=4, help="prompts per decoding call")
    p.add_argument("--new", type=int, default=40, help="new tokens per decoded output")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=420.0, help="cells after this many seconds are skipped")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--out", default=None, help="JSON file (default bench/results/gpu_suite-<scale>-<device>.json)")
    args = p.parse_args(argv)
    if args.tiny:
        args.scale, args.ks, args.repeats, args.warmup, args.new, args.decode_batch = "tiny", [1, 2], 1, 0, 6, 2
    args.scale = args.scale or ("7b" if args.device.startswith("cuda") else "mid")
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_name = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                        else f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)")
    torch.manual_seed(0)
    suite = Suite(args)
    suite.run()
    text = report(suite.rows, args)
    print(text)
    out = Path(args.out or Path(__file__).parent / "results" / f"gpu_suite-{args.scale}-{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "rows": suite.rows, "report": text},
                              indent=2, default=str))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
