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

from loramcl.checkpoints import Checkpoint
from loramcl.errors import ConfigError, MissingResource
from loramcl.peft_io import export_all
from loramcl.runs import checkpoint_config, find_checkpoints, load_model


def choose_checkpoint(path: Path, model_name: Optional[str]) -> Path:
    """The checkpoint to export: `path` itself, or the run's checkpoint of `model_name`."""
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


def load_run_model(ckpt: Path, save_base: Optional[Path] = None):
    """The run's adapter model with the checkpoint's adapters loaded, and the run's config.

    With `save_base`, the freshly built backbone is written there (save_pretrained) before the
    adapters are injected, so that runs on random from-config backbones can be reloaded.
    """
    from hydra.utils import instantiate

    checkpoint = Checkpoint.load(ckpt)
    cfg = checkpoint_config(checkpoint)
    backbone = instantiate(cfg.model)
    if save_base is not None:
        backbone.save_pretrained(str(save_base))
    return load_model(checkpoint, cfg, backbone=backbone).eval(), cfg


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
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ConfigError, MissingResource) as err:
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
