"""The memory planner behind `scripts/plan_memory.py`: will a training config fit one GPU, and with what batch?

Per device, for the composed `train.py` config:
    weights      the frozen backbone in its dtype, counted on the meta device (nothing allocated);
    adapters     K x r x (d_in + d_out) per adapted layer, fp32;
    gradients    one fp32 gradient per adapter weight;
    optimizer    AdamW's two fp32 moments per adapter weight;
    activations  MEASURED: `loramcl.memory.run_probe` runs the real model class at its true width
                 with one language-model layer on one row (one replica of one worst-case item), in
                 the backbone's dtype, under the trainer's precision, on the available device, and
                 scales it to the model's depth and to the rows of a step (K x batch for LoRA-MCL,
                 batch for LoRA-MLE and LoRA-MoE).
With FSDP over N devices the frozen weights are split N ways (plus one block gathered at a time).
A probe is cached (`~/.cache/loramcl/memory_probes/`, or $LORAMCL_CACHE) by everything it depends on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from loramcl import shapes
from loramcl.errors import ConfigError
from loramcl.memory import GiB, Probe, run_probe

RESERVE = 0.10  # of the GPU kept free for the CUDA context, cuBLAS workspaces and allocator fragmentation


@dataclass
class MemoryPlan:
    """Bytes per device of a training config, and what fits (see the module docstring)."""

    experiment: str
    family: str
    num_hypotheses: int
    rows_per_item: int  # language-model rows per item in a step (K for LoRA-MCL)
    batch_size: int
    accumulate: int
    layers: int
    devices: int
    strategy: str
    gradient_checkpointing: bool
    weights: int
    adapters: int
    gradients: int
    optimizer: int
    activations: int
    gpu_bytes: int
    probe: Probe
    probe_other_gc: Optional[Probe] = None  # the probe with gradient checkpointing switched the other way
    notes: list[str] = field(default_factory=list)

    @property
    def static(self) -> int:
        return self.weights + self.adapters + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.static + self.activations

    @property
    def usable(self) -> int:
        return int(self.gpu_bytes * (1 - RESERVE))

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def per_item(self, probe: Probe) -> int:
        return probe.activations(self.rows_per_item, self.layers)

    def largest_batch(self, probe: Optional[Probe] = None) -> int:
        """The largest per-device batch whose step fits in the usable memory (0: not even one item)."""
        free = self.usable - self.static
        return max(0, free // self.per_item(probe or self.probe))

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(static=self.static, total=self.total, usable=self.usable, fits=self.fits,
                   largest_batch=self.largest_batch())
        if self.probe_other_gc is not None:
            out["largest_batch_other_gc"] = self.largest_batch(self.probe_other_gc)
        return out


def _cache_dir() -> Path:
    return Path(os.environ.get("LORAMCL_CACHE", Path.home() / ".cache" / "loramcl")) / "memory_probes"


def _probe(family: str, size: dict, lora: dict, dtype: torch.dtype, device: str, autocast: bool,
           gradient_checkpointing: bool, use_cache: bool, log: Any) -> Probe:
    """A probe of `family` at `size` (one language-model layer, one encoder layer, one row), cached."""
    from loramcl import LoRAConfig, MCLConfig, MCLModel

    key_src = json.dumps({"family": family, "size": size, "lora": lora, "dtype": str(dtype), "device": device,
                          "autocast": autocast, "gc": gradient_checkpointing, "torch": torch.__version__}, sort_keys=True)
    path = _cache_dir() / f"{hashlib.sha256(key_src.encode()).hexdigest()[:16]}.json"
    if use_cache and path.is_file():
        return Probe(**json.loads(path.read_text()))
    log(f"measuring the probe: {family}, one layer at hidden {size['text'].get('hidden_size')} on one row, "
        f"{str(dtype).replace('torch.', '')}{' autocast' if autocast else ''}, gradient checkpointing "
        f"{'on' if gradient_checkpointing else 'off'}, on {device} ...")
    backbone = shapes.build(family, custom=size, device=device, dtype=dtype, text_layers=1, encoder_layers=1)
    model = MCLModel(backbone.model, MCLConfig(num_hypotheses=1), LoRAConfig(**lora)).to(device)
    batch = shapes.example_batch(backbone, 1, device=device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
        probe = run_probe(model, batch, device, gradient_checkpointing)
    del model, backbone
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(probe), indent=2))
    return probe


def _meta_backbone(model_cfg: dict) -> tuple[torch.nn.Module, str, str]:
    """(the backbone on the meta device, family, where its sizes came from), without loading weights."""
    from loramcl.backbones import meta_backbone

    name = str(model_cfg.get("name_or_path") or model_cfg.get("config_class"))
    module = None
    try:
        module = meta_backbone(model_cfg)
    except (OSError, ValueError):
        module = None
    unbuilt = model_cfg.get("auto_pretrain") and not (Path(name).expanduser() / "config.json").is_file()
    if unbuilt:
        raise ConfigError(f"the tiny base {name} is not built yet (its sizes are known once it is): run the "
                          f"experiment once (it pre-trains the base first), then plan again")
    if module is not None:
        return module, shapes.family_of(type(module)), "its config"
    if name in shapes.PUBLISHED:
        family = shapes.PUBLISHED[name]
        return (shapes.build(family, "7b", device="meta").model, family,
                f"the published {name} sizes (no config.json at hand)")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ConfigError(f"model folder {name} does not exist or has no config.json (set model.name_or_path to a "
                          f"folder written by save_pretrained)")
    raise ConfigError(f"model {name}: its config is not available here (not a local folder, not in the Hugging Face "
                      f"cache, not a published paper backbone); download it first (huggingface-cli download {name})")


def plan(cfg: DictConfig, gpu_gb: float = 80.0, device: Optional[str] = None, devices: Optional[int] = None,
         seconds: Optional[float] = None, image: Optional[int] = None, text_tokens: Optional[int] = None,
         use_cache: bool = True, other_gc: bool = True, probe_dtype_exact: bool = False,
         log: Any = print) -> MemoryPlan:
    """The memory plan of a composed train.py config (see the module docstring)."""
    from loramcl import LoRAConfig, MCLConfig
    from loramcl.backbones import resolve_dtype, transformer_blocks
    from loramcl.model import build_model

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    mcl = MCLConfig(**OmegaConf.to_container(cfg.mcl, resolve=True))
    lora_dict = OmegaConf.to_container(cfg.lora, resolve=True)
    meta, family, source = _meta_backbone(model_cfg)
    dtype = resolve_dtype(model_cfg.get("dtype")) or torch.float32
    precision = str(cfg.trainer.get("precision", "32-true"))
    autocast = precision.startswith("bf16-mixed")
    gc = bool(model_cfg.get("gradient_checkpointing", False))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    probe_dtype, probe_autocast = dtype, autocast
    if torch.device(device).type == "cpu" and not probe_dtype_exact and (dtype != torch.float32 or autocast):
        # CPUs without bf16 units run bf16 matmuls ~5x slower than fp32 (a 7B-width probe: tens of
        # minutes); in fp32 every activation is at least as large, so the plan is an upper bound
        probe_dtype, probe_autocast = torch.float32, False

    media, item_tokens = worst_item(cfg.data, family, seconds, image, text_tokens)
    size = shapes.sizes_from_config(meta.config, family, media, item_tokens)
    layers = len(transformer_blocks(meta)[0])

    # static bytes on the meta device: the model with its adapters, nothing allocated
    adapted = build_model(meta, mcl, LoRAConfig(**lora_dict))
    frozen = sum(p.numel() for p in adapted.parameters() if not p.requires_grad) * dtype.itemsize
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)

    trainer = cfg.trainer
    strategy = trainer.get("strategy", "auto")
    strategy_name = str(strategy.get("_target_", strategy) if isinstance(strategy, DictConfig) else strategy)
    n = devices or (int(trainer.devices) if str(trainer.get("devices", 1)).isdigit() else 1)
    n *= int(trainer.get("num_nodes", 1) or 1) if str(trainer.get("num_nodes", 1)).isdigit() else 1
    notes = [f"backbone sizes: {source}", f"worst-case item: {media or 'text only'}, "
             f"{size['text_tokens']} target tokens"]
    weights = frozen
    if "fsdp" in strategy_name.lower() and n > 1:
        block = frozen / max(layers, 1)
        weights = int(frozen / n + block)
        notes.append(f"FSDP over {n} devices: frozen weights / {n} + one block gathered at a time")

    probe = _probe(family, size, _probe_lora(lora_dict), probe_dtype, device, probe_autocast, gc, use_cache, log)
    other = (_probe(family, size, _probe_lora(lora_dict), probe_dtype, device, probe_autocast, not gc, use_cache, log)
             if other_gc else None)
    rows_per_item = mcl.num_hypotheses if not mcl.is_moe else 1
    batch = int(cfg.data.batch_size)
    activations = probe.activations(rows_per_item * batch, layers)
    notes.append(f"activations: measured on {probe.device} ({probe.dtype}, {probe.seq_len} tokens, one layer, one row) "
                 f"and scaled to {layers} layers x {rows_per_item * batch} rows")
    if probe_dtype != dtype or probe_autocast != autocast:
        notes.append(f"the run is {str(dtype).replace('torch.', '')}{' with bf16 autocast' if autocast else ''} but "
                     f"the CPU probe ran in fp32 (5x faster here; --probe-exact-dtype to measure in "
                     f"{str(dtype).replace('torch.', '')}): activations are an UPPER BOUND, up to 2x the real ones")
    return MemoryPlan(
        experiment=str(cfg.get("task_name", "")), family=family, num_hypotheses=mcl.num_hypotheses,
        rows_per_item=rows_per_item, batch_size=batch, accumulate=int(trainer.get("accumulate_grad_batches", 1) or 1),
        layers=layers, devices=n, strategy=strategy_name, gradient_checkpointing=gc, weights=int(weights),
        adapters=trainable * 4, gradients=trainable * 4, optimizer=trainable * 8, activations=int(activations),
        gpu_bytes=int(gpu_gb * GiB), probe=probe, probe_other_gc=other, notes=notes)


def worst_item(data: Any, family: str, seconds: Optional[float] = None, image: Optional[int] = None,
               text_tokens: Optional[int] = None) -> tuple[dict, int]:
    """(media, text tokens) of the worst-case item of a data config: `shapes.WORST_ITEM` for the paper's
    data sets, else text only with 48 tokens or, for translation, the config's max_source_tokens; the
    planner's `seconds`, `image` and `text_tokens` take precedence."""
    data_name = str(data.get("name", ""))
    worst = shapes.WORST_ITEM.get(data_name, {"media": {}, "text_tokens": 48})
    media = dict(worst["media"])
    if seconds is not None:
        media["seconds"] = seconds
    if image is not None:
        media["image"] = image
    tokens = worst["text_tokens"]
    if family == "alma" and data_name not in shapes.WORST_ITEM and "max_source_tokens" in data:
        tokens = int(data.max_source_tokens)
    return media, text_tokens or tokens


def _probe_lora(lora: dict) -> dict:
    """The LoRA config of a probe: the run's targets, rank and layer forward, no dropout (no size changes)."""
    keep = ("r", "alpha", "target_modules", "exclude_modules", "adapt_encoders", "implementation")
    return {k: v for k, v in lora.items() if k in keep}


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def format_plan(p: MemoryPlan) -> str:
    """The plan as a markdown table with the verdict and the advice."""
    rows = [("frozen backbone weights", p.weights), ("adapters (fp32)", p.adapters), ("adapter gradients (fp32)", p.gradients),
            ("AdamW moments (2 x fp32)", p.optimizer),
            (f"activations ({p.rows_per_item} x batch {p.batch_size} rows x {p.layers} layers)", p.activations),
            ("total", p.total)]
    out = [f"# memory plan: {p.experiment} ({p.family}, K = {p.num_hypotheses}, {p.devices} device(s), "
           f"strategy {p.strategy.rsplit('.', 1)[-1]}, gradient checkpointing {'on' if p.gradient_checkpointing else 'off'})",
           "", "| per device | GiB |", "|---|---|"]
    out += [f"| {name} | {_gib(value)} |" for name, value in rows]
    out += ["", f"GPU {_gib(p.gpu_bytes)} GiB, usable {_gib(p.usable)} GiB ({int(RESERVE * 100)} % kept for the "
                f"CUDA context and fragmentation): {'FITS' if p.fits else 'DOES NOT FIT'} "
                f"({100 * p.total / p.usable:.0f} % of usable)."]
    gc_word = "on" if p.gradient_checkpointing else "off"
    out.append(f"Largest batch per device: {p.largest_batch()} (gradient checkpointing {gc_word}; one item = "
               f"{_gib(p.per_item(p.probe))} GiB of activations)")
    if p.probe_other_gc is not None:
        other_word = "off" if p.gradient_checkpointing else "on"
        out.append(f"Largest batch per device: {p.largest_batch(p.probe_other_gc)} (gradient checkpointing {other_word}; "
                   f"one item = {_gib(p.per_item(p.probe_other_gc))} GiB)")
    effective = p.batch_size * p.accumulate
    if not p.fits:
        best = p.largest_batch()
        if best >= 1:
            micro = max(b for b in range(1, min(best, effective) + 1) if effective % b == 0)
            out.append(f"Advice: data.batch_size={micro} trainer.accumulate_grad_batches={effective // micro} keeps "
                       f"the effective batch ({effective}).")
        elif p.probe_other_gc is not None and not p.gradient_checkpointing and p.largest_batch(p.probe_other_gc) >= 1:
            best = p.largest_batch(p.probe_other_gc)
            micro = max(b for b in range(1, min(best, effective) + 1) if effective % b == 0)
            out.append(f"Advice: model.gradient_checkpointing=true data.batch_size={micro} "
                       f"trainer.accumulate_grad_batches={effective // micro} (effective batch {effective}).")
        else:
            out.append("Advice: not even one item fits; use FSDP over several GPUs (trainer=fsdp) or a larger GPU.")
    out += ["", "How: " + "; ".join(p.notes) + f". Probe: peak {_gib(p.probe.peak_row)} GiB per row with one layer, "
            f"+{_gib(p.probe.saved_layer)} GiB kept per extra layer and row (took {p.probe.seconds} s)."]
    return "\n".join(out)
