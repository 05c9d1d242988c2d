"""GPU checks of the strategies that cannot run on CPU (Lightning's FSDP needs CUDA), on a tiny fp32 Llama.

1. The same 6 steps of LoRA-MCL (K = 3) with strategy single, DDP, FSDP (LoRAWrapPolicy,
   use_orig_params) and FSDP with activation checkpointing on one GPU: per-step losses and final adapters must agree (fp32, tolerance 1e-5).
2. FSDP resume: 3 steps, save, resume to step 6 -> the adapters of the uninterrupted FSDP run.
3. Strategy independence of checkpoints: the FSDP checkpoint of step 3 resumed *without* FSDP (and a
   single-device checkpoint resumed *with* FSDP) -> the same adapters at step 6.
4. The FSDP checkpoint file holds only LoRA tensors, under the same names as a single-device one.

    python bench/check_strategies_gpu.py          # prints one line per check, exits 1 if one fails
"""

from __future__ import annotations

import sys
import tempfile
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from loramcl import LoRAConfig, MCLConfig
from loramcl.data.sampling import ResumableSampler
from loramcl.distributed import fsdp_strategy
from loramcl.lit_module import MCLLitModule

STEPS, BATCH, SEQ, VOCAB = 6, 4, 24, 128
CUDA = torch.cuda.is_available()  # without one (a dry run of this script): single and DDP on CPU only


class Tokens(Dataset):
    def __len__(self) -> int:
        return BATCH * STEPS

    def __getitem__(self, key) -> dict:
        i = key[0] if isinstance(key, tuple) else key  # ResumableSampler keys: (index, epoch)
        ids = torch.randint(3, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


class Losses(L.Callback):
    def __init__(self):
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def strategy(name: str):
    from lightning.pytorch.strategies import DDPStrategy

    return {"single": lambda: "auto", "ddp": lambda: DDPStrategy(find_unused_parameters=False),
            "fsdp": lambda: fsdp_strategy(), "fsdp_ac": lambda: fsdp_strategy(activation_checkpointing=True)}[name]()


def train(name: str, max_steps: int, resume: Path | None = None, save: Path | None = None):
    torch.manual_seed(0)
    backbone = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    module = MCLLitModule(backbone, MCLConfig(num_hypotheses=3, mode="wta"),
                          LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
                          partial(torch.optim.AdamW, lr=1e-2))
    losses = Losses()
    trainer = L.Trainer(accelerator="gpu" if CUDA else "cpu", devices=1, strategy=strategy(name), precision="32-true",
                        max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, callbacks=[losses])
    # the project's sampler: a resumed fit continues at the batch after the checkpoint's step
    sampler = ResumableSampler(BATCH * STEPS, shuffle=False, batch_size=BATCH,
                               consumed=lambda: trainer.global_step * BATCH)
    loader = DataLoader(Tokens(), batch_size=BATCH, sampler=sampler)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume) if resume else None)
    if save is not None:
        trainer.save_checkpoint(save)
    final = torch.load(save, map_location="cpu", weights_only=False)["state_dict"] if save else None
    return losses.values, final


def close(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def main() -> int:
    failed = 0

    def report(name: str, ok: bool, detail: str) -> None:
        nonlocal failed
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = ("single", "ddp", "fsdp", "fsdp_ac") if CUDA else ("single", "ddp")
        runs = {n: train(n, STEPS, save=tmp / f"{n}_full.ckpt") for n in names}
        for n in names[1:]:
            dl = max(abs(x - y) for x, y in zip(runs[n][0], runs["single"][0]))
            da = close(runs[n][1], runs["single"][1])
            report(f"{n} == single", dl < 1e-5 and da < 1e-5 and len(runs[n][0]) == STEPS,
                   f"losses {['%.5f' % v for v in runs[n][0]]}, max |d loss| {dl:.2e}, max |d adapter| {da:.2e}")
        if "fsdp" in names:
            keys = sorted(runs["fsdp"][1])
            report("fsdp checkpoint adapter-only", all("lora_" in k for k in keys) and keys == sorted(runs["single"][1]),
                   f"{len(keys)} tensors, e.g. {keys[0]}")
        pairs = [(a, b) for a, b in (("single", "single"), ("fsdp", "fsdp"), ("fsdp", "single"), ("single", "fsdp"))
                 if a in names and b in names]
        for first in sorted({a for a, _ in pairs}):
            train(first, 3, save=tmp / f"{first}3.ckpt")
        for first, then in pairs:
            _, resumed = train(then, STEPS, resume=tmp / f"{first}3.ckpt", save=tmp / f"{first}_{then}.ckpt")
            d = close(resumed, runs[then][1])
            report(f"{first} step 3 -> {then} step {STEPS}", d < 1e-5, f"max |d adapter| vs uninterrupted {then}: {d:.2e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
