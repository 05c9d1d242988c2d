"""Export the hypotheses of a train.py run as standard peft LoRA adapter folders.

    python scripts/export_peft.py logs/transition1/runs/<time> --out export/
    python scripts/export_peft.py logs/.../checkpoints/K2/last.ckpt --out export/ --hypotheses 0 2
    python scripts/export_peft.py <run> --out export/ --model mcl --base /data/models/gpt2 --overwrite
    python scripts/export_peft.py <run> --out export/ --save-base export/base   # random from-config backbone

Writes <out>/hyp_k (adapter_config.json + adapter_model.safetensors) for each hypothesis, and
<out>/mcl_export.json. The run's `.hydra/config.yaml` rebuilds the backbone and adapters; the
adapter-only checkpoint (best, else last) is loaded on top. Each folder then loads with
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), "<out>/hyp_k")`, or is
served by vLLM (`--enable-lora --lora-modules hyp0=<out>/hyp_0 ...`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from hydra.utils import instantiate

from loramcl.evaluation import find_checkpoints, run_config
from loramcl.model import MCLModel
from loramcl.peft_io import export_all
from loramcl.training import validated_configs

LIT_PREFIX = "model."  # MCLLitModule keeps the MCLModel as `self.model`


def choose_checkpoint(path: Path, model_name: Optional[str]) -> Path:
    """The checkpoint to export: `path` itself, or the run's checkpoint of `model_name`."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    found = find_checkpoints(path)
    if model_name is not None:
        if model_name not in found:
            raise ValueError(f"no checkpoint for --model {model_name} under {path}; found: {', '.join(found)}")
        return found[model_name]
    if len(found) == 1:
        return next(iter(found.values()))
    if "mcl" in found:  # toy runs train an MLE (K = 1) and an MCL model side by side
        return found["mcl"]
    raise ValueError(f"{path} holds several models ({', '.join(found)}): choose one with --model")


def load_run_model(ckpt: Path, save_base: Optional[Path] = None) -> tuple[MCLModel, object]:
    """Rebuild the run's MCLModel from its config and load the checkpoint's adapters (and its config).

    With `save_base`, the freshly built backbone is written there (save_pretrained) before the
    adapters are injected, so that runs on random from-config backbones can be reloaded.
    """
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as err:  # not a torch file, truncated, ...
        raise ValueError(f"{ckpt} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    meta = checkpoint.get("loramcl") if isinstance(checkpoint, dict) else None
    if meta is None:
        raise ValueError(f"{ckpt} was not written by loramcl (no 'loramcl' entry): cannot export it")
    cfg = run_config(ckpt)
    mcl_cfg, lora_cfg = validated_configs(cfg, meta["num_hypotheses"])
    backbone = instantiate(cfg.model)
    if save_base is not None:
        backbone.save_pretrained(str(save_base))
    model = MCLModel(backbone, mcl_cfg, lora_cfg)
    if list(meta["targets"]) != list(model.target_names):
        raise ValueError(f"{ckpt} adapts other layers than its run config selects: cannot rebuild the model")
    state = {k[len(LIT_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(LIT_PREFIX)}
    own = model.adapter_state_dict()
    if set(state) != set(own):
        missing = sorted(set(own) - set(state))[:3]
        raise ValueError(f"{ckpt} does not hold this model's adapters (e.g. missing {missing})")
    model.load_state_dict(state, strict=False)
    return model.eval(), cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="train.py run folder or a .ckpt file")
    parser.add_argument("--out", type=Path, required=True, help="export folder (gets hyp_0 ... hyp_{K-1})")
    parser.add_argument("--model", default=None, help="which model of the run (checkpoints/<model>/), e.g. mcl")
    parser.add_argument("--hypotheses", type=int, nargs="+", default=None, help="indices to export (default all)")
    parser.add_argument("--base", default=None, help="base_model_name_or_path written to adapter_config.json")
    parser.add_argument("--save-base", type=Path, default=None,
                        help="also save the rebuilt backbone here (for random from-config backbones)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing hyp_k folders")
    args = parser.parse_args(argv)
    try:
        ckpt = choose_checkpoint(args.path, args.model)
        if args.save_base is not None and args.save_base.exists() and any(args.save_base.iterdir()) \
                and not args.overwrite:
            raise FileExistsError(f"{args.save_base} is not empty; pass --overwrite to replace it")
        model, cfg = load_run_model(ckpt, args.save_base)
        base = args.base or (str(args.save_base.resolve()) if args.save_base else None)
        base = base or cfg.model.get("name_or_path") or None
        paths = export_all(model, args.out, base, hypotheses=args.hypotheses, overwrite=args.overwrite,
                           source=str(ckpt.resolve()))
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        print(f"export_peft.py: error: {err}", file=sys.stderr)
        return 2
    print(f"exported {len(paths)} of K={model.num_hypotheses} hypotheses of {ckpt}")
    for path in paths:
        print(f"  hypothesis {path.name.removeprefix('hyp_')} -> {path}")
    if base is None:
        print("note: the backbone was built from a config, not loaded; pass --save-base DIR to save it")
    shown = base if base is not None else "BASE"
    print("load one with:")
    print("  from peft import PeftModel; from transformers import AutoModelForCausalLM")
    print(f"  model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({shown!r}), {str(paths[0])!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
