"""peft interop: exported hypotheses are the adapters peft itself would build, save and run.

peft is the independent reference throughout: the key set and shapes of an export are compared
with `get_peft_model(...).save_pretrained`, its logits with `PeftModel.from_pretrained`, and
adapters written by peft are imported back as hypotheses.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from loramcl import LoRAConfig, MCLConfig, MCLModel
from loramcl.peft_io import export_all, export_hypothesis, import_peft_adapters, load_peft_state
from tiny_models import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
THREE_LAYERS = ["q_proj", "v_proj", "up_proj"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base")
    tiny_llama().save_pretrained(str(folder))
    return folder


def fresh_base(base_dir: Path):
    return AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()


def mcl_model(base_dir: Path, K=3, r=4, alpha=8.0, targets=THREE_LAYERS, exclude=None, seed=0) -> MCLModel:
    """MCLModel with random nonzero A and B (as after training: every hypothesis differs)."""
    lora = LoRAConfig(r=r, alpha=alpha, target_modules=targets, exclude_modules=exclude)
    model = MCLModel(fresh_base(base_dir), MCLConfig(num_hypotheses=K), lora)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def ids(vocab=64, seed=1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("targets, exclude", [
    (THREE_LAYERS, None),
    ("all-linear", None),
    (["q_proj", "v_proj"], r".*layers\.0\..*"),  # suffixes no longer select exactly: full paths exported
])
def test_exported_hypotheses_run_in_peft_like_ours(base_dir, tmp_path, targets, exclude):
    model = mcl_model(base_dir, targets=targets, exclude=exclude)
    paths = export_all(model, tmp_path / "export")
    assert [p.name for p in paths] == ["hyp_0", "hyp_1", "hyp_2"]
    x = ids()
    with torch.no_grad():
        base_logits = fresh_base(base_dir)(input_ids=x).logits
        for k, path in enumerate(paths):
            peft_model = peft.PeftModel.from_pretrained(fresh_base(base_dir), str(path)).eval()
            adapted = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules()
                       if isinstance(m, LoraLayer)}
            assert adapted == set(model.target_names)  # peft selects exactly our layers, no extra zero adapters
            ours = model(input_ids=x, hypothesis_idx=k).logits
            theirs = peft_model(input_ids=x).logits
            assert (ours - base_logits).abs().max() > 1e-2  # the adapters do change the output
            torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    # Key set and shapes: exactly what peft saves for the same LoRA config.
    reference = peft.get_peft_model(
        fresh_base(base_dir),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, exclude_modules=exclude, task_type="CAUSAL_LM"),
    )
    reference.save_pretrained(str(tmp_path / "reference"))
    expected = load_file(str(tmp_path / "reference" / "adapter_model.safetensors"))
    exported = load_file(str(paths[1] / "adapter_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in exported.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    config = peft.PeftConfig.from_pretrained(str(paths[1]))
    assert (config.r, config.lora_alpha, config.task_type) == (4, 8, "CAUSAL_LM")
    assert config.base_model_name_or_path == str(base_dir)


def test_round_trip_and_import_checks(base_dir, tmp_path):
    source = mcl_model(base_dir, seed=0)
    dirs = export_all(source, tmp_path / "export")
    target = mcl_model(base_dir, seed=1)
    before = {k: v.clone() for k, v in target.adapter_state_dict().items()}

    def refused(dirs_, match):
        with pytest.raises(ValueError, match=match):
            import_peft_adapters(target, dirs_)
        for k, v in target.adapter_state_dict().items():  # nothing copied before the checks passed
            assert torch.equal(v, before[k])

    refused(dirs[:2], r"K=3 hypotheses, got 2 adapter folders")
    for name, kwargs, match in [
        ("r2", {"r": 2}, r"r2/hyp_0 has r=2, this model has r=4"),
        ("alpha16", {"alpha": 16.0}, r"alpha16/hyp_0 has lora_alpha=16, this model has alpha=8"),
        ("q_only", {"targets": ["q_proj", "v_proj"]}, r"q_only/hyp_0 does not adapt the same layers.* 2 missing"),
        ("extra", {"targets": [*THREE_LAYERS, "o_proj"]}, r"extra/hyp_0 .* 0 missing .* 2 extra"),
    ]:
        other = export_all(mcl_model(base_dir, **kwargs), tmp_path / name)
        refused([other[0], *dirs[1:]], match)

    import_peft_adapters(target, dirs)
    imported = target.adapter_state_dict()
    for key, value in source.adapter_state_dict().items():
        assert torch.equal(imported[key], value), key

    config, pairs = load_peft_state(dirs[2])
    assert config["r"] == 4 and set(pairs) == set(source.target_names)
    layer = source.base_model.get_submodule(source.target_names[0])
    A, B = pairs[source.target_names[0]]
    assert torch.equal(A, layer.lora_A[2]) and torch.equal(B, layer.lora_B[2])


def test_import_adapters_written_by_peft(base_dir, tmp_path):
    """K LoRAs trained elsewhere with peft become the K hypotheses, with peft's outputs."""
    dirs, outputs, x = [], [], ids()
    for k in range(2):
        torch.manual_seed(10 + k)
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=THREE_LAYERS, init_lora_weights=False,
                                 task_type="CAUSAL_LM")
        peft_model = peft.get_peft_model(fresh_base(base_dir), config).eval()
        peft_model.save_pretrained(str(tmp_path / f"peft_{k}"))
        dirs.append(tmp_path / f"peft_{k}")
        with torch.no_grad():
            outputs.append(peft_model(input_ids=x).logits)
    model = mcl_model(base_dir, K=2, seed=3)
    import_peft_adapters(model, dirs)
    with torch.no_grad():
        for k in range(2):
            torch.testing.assert_close(model(input_ids=x, hypothesis_idx=k).logits, outputs[k], atol=1e-5, rtol=0)


def test_export_refuses_to_overwrite(base_dir, tmp_path):
    out = tmp_path / "export"
    export_all(mcl_model(base_dir, seed=0), out)
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = mcl_model(base_dir, seed=1)
    with pytest.raises(FileExistsError, match=r"export/hyp_0 is not empty; pass overwrite=True"):
        export_all(second, out)
    with pytest.raises(FileExistsError, match=r"hyp_2 is not empty"):
        export_hypothesis(second, 2, out / "hyp_2")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first

    export_all(second, out, overwrite=True)
    _, pairs = load_peft_state(out / "hyp_1")
    layer = second.base_model.get_submodule(second.target_names[0])
    assert torch.equal(pairs[second.target_names[0]][1], layer.lora_B[1])


# ---------------------------------------------------------------------- the script on a train.py run
def export_script():
    spec = importlib.util.spec_from_file_location("export_peft", ROOT / "scripts" / "export_peft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> Path:
    """A 3-step train.py run: toy GPT-Neo (vocab 2), K = 2, adapters on q/k/v/out_proj."""
    logs = tmp_path_factory.mktemp("logs")
    cmd = [sys.executable, "train.py", "task=finetune", "trainer.max_steps=3", "trainer.val_check_interval=3",
           "data.num_val_sequences=32", "data.batch_size=8", "logger=none", "callbacks=model_checkpoint",
           f"paths.log_dir={logs}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = logs.glob("*/runs/*")
    return run_dir


def test_export_script_on_a_train_run(train_run, tmp_path, capsys):
    from hydra.utils import instantiate

    from omegaconf import OmegaConf

    from loramcl.config import validated_configs
    from loramcl.lit_module import MCLLitModule
    from loramcl.runs import find_checkpoints

    out, base = tmp_path / "export", tmp_path / "base"
    assert export_script().main([str(train_run), "--out", str(out), "--save-base", str(base)]) == 0
    printed = capsys.readouterr().out
    assert f"hypothesis 1 -> {out / 'hyp_1'}" in printed
    assert f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(base.resolve())!r})" in printed

    # Reference: the run's Lightning module with the checkpoint loaded the Lightning way.
    (ckpt,) = find_checkpoints(train_run).values()
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = OmegaConf.load(train_run / ".hydra" / "config.yaml")
    module = MCLLitModule(instantiate(cfg.model), *validated_configs(cfg, checkpoint["loramcl"]["num_hypotheses"]),
                          optimizer=None)
    missing, _ = module.load_state_dict(checkpoint["state_dict"], strict=False)
    assert not [k for k in missing if "lora_" in k]
    x = ids(vocab=2)
    with torch.no_grad():
        ours = module.model.eval()(input_ids=x, hypothesis_idx=1).logits
        peft_model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(out / "hyp_1"))
        theirs = peft_model.eval()(input_ids=x).logits
        other = module.model(input_ids=x, hypothesis_idx=0).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (ours - other).abs().max() > 1e-4  # the two trained hypotheses differ
    assert peft.PeftConfig.from_pretrained(str(out / "hyp_1")).target_modules == {"q_proj", "k_proj", "v_proj",
                                                                                  "out_proj"}


def test_export_script_one_line_errors(tmp_path, capsys):
    script = export_script()
    assert script.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nowhere'} does not exist (give a train.py run folder or a checkpoint in it)"
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    assert script.main([str(foreign), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "foreign.ckpt was not written by loramcl" in err


@pytest.mark.parametrize("backbone", ["qwen2_audio", "llava_next"])
def test_export_of_multimodal_tiny_bases_loads_in_peft(tmp_path, backbone):
    """On the tiny Qwen2-Audio / LLaVA-NeXT bases (saved and reloaded with from_pretrained), each
    exported hypothesis loaded with PeftModel.from_pretrained gives the logits of hypothesis k."""
    import numpy as np
    from PIL import Image

    from loramcl import tiny_base
    from loramcl.data.collate import AUDIO_PROMPT, IMAGE_PROMPT, AudioCaptionCollator, ImageCaptionCollator
    from loramcl.tokenizer_builder import train_tokenizer

    family, prompt = ("qwen2", AUDIO_PROMPT) if backbone == "qwen2_audio" else ("llava", IMAGE_PROMPT)
    tok = train_tokenizer(["a high beep then static", "un cercle rouge", "a red circle"] * 5 + [prompt], family, 300)
    model, processor = getattr(tiny_base, f"tiny_{backbone}")(tok)
    model.save_pretrained(tmp_path / "base")
    cls = type(model)
    rng = np.random.default_rng(0)
    if backbone == "qwen2_audio":
        items = [{"id": 0, "audio": rng.standard_normal(16000).astype(np.float32), "captions": ["a high beep"]}]
        batch = AudioCaptionCollator(processor, references="first")(items)
    else:
        items = [{"id": 0, "image": Image.fromarray((rng.random((40, 64, 3)) * 255).astype(np.uint8)),
                  "captions": ["a red circle"]}]
        batch = ImageCaptionCollator(processor, references="first")(items)
    inputs = {k: v for k, v in batch.items() if torch.is_tensor(v) and k != "labels"}
    mcl = MCLModel(cls.from_pretrained(tmp_path / "base"), MCLConfig(num_hypotheses=2),
                   LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in mcl._layers:
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.2)
    mcl.eval()
    paths = export_all(mcl, tmp_path / "export", base_model_name_or_path=str(tmp_path / "base"))
    for k, path in enumerate(paths):
        ours = mcl(**inputs, hypothesis_idx=k).logits
        theirs = peft.PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "base"), str(path)).eval()
        with torch.no_grad():
            torch.testing.assert_close(theirs(**inputs).logits, ours, atol=1e-5, rtol=1e-5)
    # the encoder carries no adapter in the export either
    assert not any("audio_tower" in key or "vision_tower" in key for key in load_file(str(paths[0] / "adapter_model.safetensors")))
