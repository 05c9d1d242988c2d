"""Interop with peft: each hypothesis as a standard peft LoRA adapter folder, and back.

Hypothesis k of an `MCLModel` is exactly a peft LoRA adapter: for every adapted layer,
y = W x + (lora_alpha / r) B A x with A = lora_A[k] (r, d_in) and B = lora_B[k] (d_out, r).
`export_hypothesis` writes it as peft saves one (`adapter_config.json` from `peft.LoraConfig`,
`adapter_model.safetensors` keyed `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight`),
so `PeftModel.from_pretrained(base, folder)` and multi-LoRA servers such as vLLM load it unchanged;
`export_all` writes the K folders side by side. `import_peft_adapters` loads K such folders as the
K hypotheses of a model (e.g. K separately trained LoRAs as an MCL initialisation).

    from loramcl.peft_io import export_all, import_peft_adapters
    export_all(model, "export/")                     # export/hyp_0 ... hyp_{K-1}, mcl_export.json
    import_peft_adapters(model, [f"export/hyp_{k}" for k in range(K)])

Command line: `python scripts/export_peft.py <train.py run folder or .ckpt> --out DIR`.

Exports appear under their final names only when complete: a new export folder is built as
`<out>.partial-...` and renamed (`mcl_export.json` inside it from the start), a hyp_k folder added to
an existing export likewise; an interrupted export leaves no folder under the final name, and a
folder holding adapter_config.json without weights is named as incomplete, never loaded.

A LoRA-MoE model (`MoEModel`) mixes its experts per token with routers, which peft has no
equivalent for: the mixture cannot be exported. Single experts can (`export_hypothesis(model, k)`,
or `export_all(model, out, hypotheses=[k, ...])`): folder k equals the model with expert k forced.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from loramcl.layers import MultiLoRALinear
from loramcl.adapters import AdapterModel
from loramcl.moe import MoEModel
from loramcl.utils.atomic import discard, new_partial_dir, publish, staged, write_text_atomic

PathLike = Union[str, Path]
CONFIG_NAME = "adapter_config.json"  # peft.utils.CONFIG_NAME
WEIGHTS_NAME = "adapter_model.safetensors"  # peft.utils.SAFETENSORS_WEIGHTS_NAME
LEGACY_WEIGHTS_NAME = "adapter_model.bin"  # older peft versions, read only
EXPORT_META = "mcl_export.json"
KEY_PREFIX = "base_model.model."  # PeftModel.base_model (LoraModel) . model (the HF model)


def _layers(model: AdapterModel) -> dict[str, MultiLoRALinear]:
    """{module path relative to the HF model: K-way layer}, in model order."""
    return {name: model.base_model.get_submodule(name) for name in model.target_names}


def peft_target_modules(model: AdapterModel) -> list[str]:
    """`target_modules` that make peft select exactly the adapted layers of `model`.

    The module-name suffixes (["q_proj", "v_proj"]: short, what vLLM and people expect) when they
    select exactly these layers under peft's rule (name == t or name ends with "." + t); otherwise
    (a regex, exclude_modules, or a suffix also used by another module) the full module paths.
    """
    targets = list(model.target_names)
    inside = tuple(t + "." for t in targets)  # base_layer / lora_dropout of our wrappers
    names = [n for n, _ in model.base_model.named_modules() if n and not n.startswith(inside)]
    suffixes = sorted({t.rsplit(".", 1)[-1] for t in targets})
    selected = [n for n in names if any(n == s or n.endswith("." + s) for s in suffixes)]
    return suffixes if selected == targets else targets


def _peft_config(model: AdapterModel, base_model_name_or_path: Optional[str]):
    from peft import LoraConfig

    cfg = model.lora_config
    alpha = float(cfg.alpha)
    return LoraConfig(
        r=cfg.r,
        lora_alpha=int(alpha) if alpha.is_integer() else alpha,
        lora_dropout=float(cfg.dropout),
        target_modules=peft_target_modules(model),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path,
    )


def _default_base_name(model: AdapterModel) -> Optional[str]:
    # transformers sets name_or_path to the Hub name or folder it loaded from ("" when built from a config)
    return getattr(model.base_model, "name_or_path", None) or None


def adapter_problem(folder: PathLike) -> Optional[str]:
    """Why the existing folder `folder` is not a complete peft adapter (None when it is one)."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        return f"no {CONFIG_NAME}"
    if not ((folder / WEIGHTS_NAME).is_file() or (folder / LEGACY_WEIGHTS_NAME).is_file()):
        return f"{CONFIG_NAME} but no {WEIGHTS_NAME}"
    return None


def check_export_folder(folder: Path, overwrite: bool, flag: str = "overwrite=True (--overwrite)") -> None:
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        problem = adapter_problem(folder)
        if problem is not None and (folder / CONFIG_NAME).is_file():
            raise FileExistsError(f"{folder} is not empty; pass {flag} to replace it (it holds an incomplete "
                                  f"adapter: {problem}, from an interrupted export?)")
        raise FileExistsError(f"{folder} is not empty; pass {flag} to replace its adapter")


def export_hypothesis(
    model: AdapterModel,
    k: int,
    out_dir: PathLike,
    base_model_name_or_path: Optional[str] = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write hypothesis k as a peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors).

    `base_model_name_or_path` goes into the config (default: the backbone's `name_or_path`).
    Refuses a non-empty `out_dir` unless `overwrite=True`. For a LoRA-MoE model, writes expert k
    alone (the model with routing k forced; the router is not exported).
    """
    from safetensors.torch import save_file

    if not 0 <= k < model.num_hypotheses:
        raise ValueError(f"hypothesis index must be in [0, {model.num_hypotheses - 1}], got {k}")
    out_dir = Path(out_dir)
    check_export_folder(out_dir, overwrite)
    config = _peft_config(model, base_model_name_or_path or _default_base_name(model))
    tensors = {}
    for name, layer in _layers(model).items():
        tensors[f"{KEY_PREFIX}{name}.lora_A.weight"] = layer.lora_A[k].detach().cpu().clone()  # (r, d_in)
        tensors[f"{KEY_PREFIX}{name}.lora_B.weight"] = layer.lora_B[k].detach().cpu().clone()  # (d_out, r)
    # What `LoraConfig.save_pretrained` writes, with target_modules sorted (peft keeps a set, and
    # writes it in hash order, which changes from one Python process to the next).
    fields = {key: sorted(v) if isinstance(v, set) else v for key, v in config.to_dict().items()}
    with staged(out_dir, overwrite=overwrite) as stage:  # <out_dir>.partial-..., renamed when complete
        (stage.path / CONFIG_NAME).write_text(json.dumps(fields, indent=2, sort_keys=True))
        save_file(tensors, str(stage.path / WEIGHTS_NAME), metadata={"format": "pt"})
    if not stage.placed:
        raise FileExistsError(f"{out_dir} was written by another process during this export; it was kept, "
                              f"this export discarded")
    return out_dir


def export_all(
    model: AdapterModel,
    out_dir: PathLike,
    base_model_name_or_path: Optional[str] = None,
    *,
    hypotheses: Optional[Sequence[int]] = None,
    overwrite: bool = False,
    source: Optional[str] = None,
) -> list[Path]:
    """Export hypotheses (default all K) to `out_dir/hyp_k`, plus `out_dir/mcl_export.json`.

    Every target folder is checked before anything is written, so a refused export leaves the
    existing files as they were. `source` (the run folder or checkpoint) is recorded in the json.
    A LoRA-MoE model is refused unless `hypotheses` names the experts to export one by one.
    """
    if isinstance(model, MoEModel) and hypotheses is None:
        raise ValueError(
            "a LoRA-MoE model cannot be exported to peft: its token routers have no peft equivalent; "
            "export single experts (each = that expert forced) with hypotheses=[k, ...] (--hypotheses k ...)"
        )
    K = model.num_hypotheses
    ks = list(range(K)) if hypotheses is None else [int(k) for k in hypotheses]
    bad = [k for k in ks if not 0 <= k < K]
    if bad or not ks or len(set(ks)) != len(ks):
        raise ValueError(f"hypotheses must be distinct indices in [0, {K - 1}], got {ks}")
    out_dir = Path(out_dir)
    folders = {k: out_dir / f"hyp_{k}" for k in ks}
    for folder in folders.values():
        check_export_folder(folder, overwrite)
    base = base_model_name_or_path or _default_base_name(model)
    meta = {
        "num_hypotheses": K,
        "mode": model.mcl_config.mode,
        "r": model.lora_config.r,
        "alpha": model.lora_config.alpha,
        "target_modules": list(model.target_names),
        "base_model_name_or_path": base,
        "source": source,
        "hypotheses": {str(k): folders[k].name for k in ks},
    }
    if isinstance(model, MoEModel):
        meta["note"] = "LoRA-MoE experts exported alone (expert k forced); the token routers are not exported"
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        # a new export: the whole folder is built beside its final name and renamed in one step
        final = out_dir.resolve()  # a name to put the partial folder beside, also for "."
        tmp = new_partial_dir(final)
        try:
            for k in ks:
                export_hypothesis(model, k, tmp / folders[k].name, base)
            (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2))
        except BaseException:
            discard(tmp)
            raise
        if not publish(tmp, final):
            raise FileExistsError(f"{out_dir} was written by another process during this export; it was kept, "
                                  f"this export discarded")
        return [folders[k] for k in ks]
    # hypotheses added to (or replaced in) an existing export folder: each hyp_k folder atomically
    paths = [export_hypothesis(model, k, folders[k], base, overwrite=overwrite) for k in ks]
    write_text_atomic(out_dir / EXPORT_META, json.dumps(meta, indent=2))
    return paths


def load_peft_state(adapter_dir: PathLike) -> tuple[dict, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(adapter_config.json as a dict, {module path: (A (r, d_in), B (d_out, r))}) of a peft LoRA folder.

    Module paths are relative to the HF model (`model.layers.0.self_attn.q_proj`). Raises
    FileNotFoundError for a missing file and ValueError for a key that is not a plain LoRA A / B
    weight (DoRA magnitudes, biases, modules_to_save, embeddings) or a layer with only A or B.
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a peft adapter folder (no {CONFIG_NAME})")
    if adapter_problem(adapter_dir) is not None:
        raise FileNotFoundError(f"{adapter_dir} is an incomplete peft adapter ({adapter_problem(adapter_dir)}: an "
                                f"interrupted export?); export it again (scripts/export_peft.py ... --overwrite)")
    config = json.loads(config_path.read_text())
    if (adapter_dir / WEIGHTS_NAME).is_file():
        from safetensors.torch import load_file

        state = load_file(str(adapter_dir / WEIGHTS_NAME))
    else:
        state = torch.load(adapter_dir / LEGACY_WEIGHTS_NAME, map_location="cpu", weights_only=True)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[part] = value
                break
        else:
            raise ValueError(f"{adapter_dir}: unsupported key {key!r} (only LoRA A / B weights can be imported)")
    incomplete = sorted(n for n, p in pairs.items() if len(p) != 2)
    if incomplete:
        raise ValueError(f"{adapter_dir}: layers with only one of lora_A / lora_B: {incomplete[:3]}")
    return config, {n: (p["lora_A"], p["lora_B"]) for n, p in pairs.items()}


def _check_config(folder: Path, config: dict, model: AdapterModel) -> None:
    cfg = model.lora_config
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{folder} holds a {config['peft_type']} adapter, not LORA")
    if config.get("r") != cfg.r:
        raise ValueError(f"{folder} has r={config.get('r')}, this model has r={cfg.r}")
    alpha = config.get("lora_alpha")
    if alpha is None or not math.isclose(float(alpha), float(cfg.alpha), rel_tol=1e-6):
        raise ValueError(f"{folder} has lora_alpha={alpha}, this model has alpha={cfg.alpha}")
    # Variants whose forward differs from y = W x + (alpha / r) B A x, or per-layer r / alpha.
    for field, plain in (("use_rslora", False), ("use_dora", False), ("fan_in_fan_out", False)):
        if bool(config.get(field, plain)) != plain:
            raise ValueError(f"{folder} has {field}={config[field]}; only plain LoRA adapters can be imported")
    for field in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(field) or {}
        own = cfg.r if field == "rank_pattern" else cfg.alpha
        odd = {key: v for key, v in pattern.items() if not math.isclose(float(v), float(own))}
        if odd:
            raise ValueError(f"{folder} has per-layer {field}={odd}; this model uses one value, {own}, everywhere")


def import_peft_adapters(model: AdapterModel, adapter_dirs: Sequence[PathLike]) -> None:
    """Load K peft LoRA folders as hypotheses 0..K-1 of `model` (in place).

    Checks, before copying anything: K folders; each config's r and lora_alpha equal the model's;
    each folder adapts exactly the model's adapted layers, with matching shapes.
    Raises ValueError naming the folder and the mismatch.
    """
    dirs = [Path(d) for d in adapter_dirs]
    K = model.num_hypotheses
    if len(dirs) != K:
        raise ValueError(f"this model has K={K} hypotheses, got {len(dirs)} adapter folders")
    layers = _layers(model)
    loaded = []
    for folder in dirs:
        config, pairs = load_peft_state(folder)
        _check_config(folder, config, model)
        missing = [n for n in layers if n not in pairs]
        extra = sorted(set(pairs) - set(layers))
        if missing or extra:
            raise ValueError(
                f"{folder} does not adapt the same layers as this model: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})"
            )
        for name, layer in layers.items():
            A, B = pairs[name]
            want_a, want_b = tuple(layer.lora_A.shape[1:]), tuple(layer.lora_B.shape[1:])
            if tuple(A.shape) != want_a or tuple(B.shape) != want_b:
                raise ValueError(
                    f"{folder}: {name} has lora_A {tuple(A.shape)} / lora_B {tuple(B.shape)}, "
                    f"this model expects {want_a} / {want_b}"
                )
        loaded.append(pairs)
    with torch.no_grad():
        for k, pairs in enumerate(loaded):
            for name, layer in layers.items():
                A, B = pairs[name]
                layer.lora_A[k].copy_(A)
                layer.lora_B[k].copy_(B)
