"""Memory measurement, the memory planner and the GPU benchmark suite, on the CPU.

The planner's activations come from a one-layer, one-row probe scaled to depth and rows; these tests
compare its prediction with the measured peak of a real full-depth training step, and the meter
with hand-counted allocations.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loramcl import LoRAConfig, MCLConfig, MCLModel, shapes
from loramcl.backbones import enable_checkpointing
from loramcl.memory import PeakMeter, live_bytes, run_probe, time_and_peak

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", shapes.FAMILIES)
def test_one_block_recognition_for_the_memory_probe_and_fsdp(family):
    """`backbones.transformer_blocks` (the probe's language-model layers) and the FSDP / activation
    checkpointing policies see the same blocks: the language model's decoder layers and the encoder's
    layers, nothing else (what the former regex `.*(Decoder|Encoder)Layer$` of distributed.py saw)."""
    import re

    from loramcl.backbones import transformer_blocks
    from loramcl.distributed import BlockPolicy, LoRAWrapPolicy

    backbone = shapes.build(family, "tiny", text_layers=3, encoder_layers=2)
    lm, encoder = transformer_blocks(backbone.model)
    assert len(lm) == 3 and len(encoder) == (0 if family == "alma" else 2)
    assert all(type(m).__name__.endswith("DecoderLayer") for m in lm)
    blocks = {id(m) for m in lm + encoder}
    former = {id(m) for m in backbone.model.modules() if re.match(r".*(Decoder|Encoder)Layer$", type(m).__name__)}
    assert former == blocks
    for policy in (BlockPolicy(), LoRAWrapPolicy()):
        assert {id(m) for m in backbone.model.modules() if policy.wraps(m)} == blocks


def test_peak_meter_counts_the_allocations_of_the_block():
    keep = torch.ones(10)  # allocated before: not counted
    with PeakMeter("cpu") as meter:
        a = torch.empty(1000, 1000)  # 4 000 000 bytes
        b = torch.empty(500, 1000)  # + 2 000 000 -> 6 000 000 live
        del a
        c = torch.empty(250, 1000, dtype=torch.float64)  # 2 000 000 + 2 000 000 = 4 000 000 live
        del b, c, keep
    assert meter.extra == 6_000_000


@pytest.mark.parametrize("family,layers,K,gc", [("alma", 3, 3, False), ("alma", 3, 3, True), ("qwen2_audio", 3, 2, False)])
def test_probe_scaled_to_depth_and_rows_predicts_the_measured_peak(family, layers, K, gc):
    """One layer, one row, measured; scaled to `layers` layers and K x 2 rows; against a real step's peak."""
    lora = LoRAConfig(r=8, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])
    probe_backbone = shapes.build(family, "tiny", text_layers=1, encoder_layers=1)
    probe_model = MCLModel(probe_backbone.model, MCLConfig(num_hypotheses=1), lora)
    probe = run_probe(probe_model, shapes.example_batch(probe_backbone, 1), "cpu", gc)
    assert probe.peak_row > 0 and probe.saved_layer > 0

    full = shapes.build(family, "tiny", text_layers=layers)
    if gc:
        enable_checkpointing(full.model)
    model = MCLModel(full.model, MCLConfig(num_hypotheses=K), lora)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    batch = shapes.example_batch(full, 2)

    def step():
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    measured = time_and_peak(step, "cpu", lambda: sum(live_bytes(model, opt, batch).values()), repeats=1)
    live = live_bytes(model, opt, batch)
    adapters = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    planned = live["weights"] + live["optimizer"] + live["inputs"] + adapters + probe.activations(K * 2, layers)
    assert live["optimizer"] == 2 * adapters + 4 * sum(1 for p in model.parameters() if p.requires_grad)  # + step counters
    assert planned == pytest.approx(measured.peak, rel=0.10)  # the goal on a GPU: 15 %


def test_plan_memory_cli(tmp_path, monkeypatch):
    """The CLI on a real composed config: counts equal the model's, verdict, JSON, cached probe, bad model."""
    monkeypatch.setenv("LORAMCL_CACHE", str(tmp_path / "cache"))
    cmd = [sys.executable, str(ROOT / "scripts" / "plan_memory.py"), "experiment=demo_translation_mcl",
           "model=tiny_llama", "--gpu-gb", "0.05", "--json", str(tmp_path / "plan.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    # tiny_llama: vocab 64, hidden 32, 2 layers (configs/model/tiny_llama.yaml), fp32; LoRA r = 8 all-linear, K = 3
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    assert plan["weights"] == sum(p.numel() for p in base.parameters()) * 4
    per_layer = 8 * ((32 + 32) * 2 + (32 + 16) * 2 + (32 + 64) * 2 + (64 + 32))  # q, o; k, v; gate, up; down
    assert plan["adapters"] == 3 * 2 * per_layer * 4
    assert plan["optimizer"] == 2 * plan["adapters"]
    assert plan["rows_per_item"] == 3 and plan["layers"] == 2
    assert plan["activations"] == 3 * plan["batch_size"] * (plan["probe"]["peak_row"] + plan["probe"]["saved_layer"])
    usable = int(0.05 * 1024**3 * 0.9)
    assert plan["largest_batch"] == (usable - plan["static"]) // (3 * (plan["probe"]["peak_row"] + plan["probe"]["saved_layer"]))
    assert ("FITS" in out.stdout) == plan["fits"]
    assert "measuring the probe" in out.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and "measuring the probe" not in again.stderr  # cached
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "plan_memory.py"), "experiment=clotho_mcl5",
                          "model.name_or_path=/nonexistent/model"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_gpu_suite_tiny_runs_every_cell(tmp_path):
    """The benchmark's CPU mode: every training and decoding cell runs and the goal table is filled."""
    out = tmp_path / "suite.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--tiny", "--threads", "1",
                          "--families", "qwen2_audio", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    cells = {(r["section"], r["cell"], r.get("gc")) for r in rows if r.get("status") == "ok"}
    for gc in (False, True):
        for cell in ("mle_B", "mle_KB", "mcl_shared", "mcl_replicated", "mcl_shared_ref"):
            assert ("train", cell, gc) in cells
    for cell in ("mcl_batched", "mcl_batched_ref", "mcl_separate", "mle_beam", "dbs", "dbs_loop"):
        assert ("decode", cell, None) in cells
    train = [r for r in rows if r["section"] == "train"]
    assert all(r["peak_gib"] > 0 and r["step_s"] > 0 for r in train)
    by = {(r["cell"], r["gc"]): r for r in train}
    assert by[("mle_KB", False)]["lm_rows"] == by[("mcl_shared", False)]["lm_rows"] == 2 * by[("mle_B", False)]["lm_rows"]
    assert "DBS (K groups) / beam search B = K" in run.stdout
