"""Export the hypotheses of a train.py run as standard peft LoRA adapter folders.

    python scripts/export_peft.py logs/transition1/runs/<time> --out export/
    python scripts/export_peft.py logs/.../checkpoints/K2/last.ckpt --out export/ --hypotheses 0 2
    python scripts/export_peft.py <run> --out export/ --model mcl --base /data/models/gpt2 --overwrite
    python scripts/export_peft.py <run> --out export/ --save-base export/base   # random from-config backbone

Writes <out>/hyp_k (adapter_config.json + adapter_model.safetensors) for each hypothesis, and
<out>/mcl_export.json, each folder under its final name only once complete (an interrupted export
leaves nothing there; a hyp_k folder with adapter_config.json but no weights is named as incomplete
and replaced only with --overwrite); `base_model_name_or_path` is the Hub name of a Hub backbone, the absolute
folder of a local one. Works from any folder; bad input (a missing run, an index out of range, a
LoRA-MoE run without --hypotheses, a non-empty hyp_k folder) fails with one line before the model
is built. The run's `.hydra/config.yaml` rebuilds the backbone and adapters; the
adapter-only checkpoint (best, else last) is loaded on top. Each folder then loads with
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), "<out>/hyp_k")`, or is
served by vLLM (`--enable-lora --lora-modules hyp0=<out>/hyp_0 ...`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))  # run configs resolve data paths from it

from loramcl.cli import ArgumentParser, arg  # one-line errors
from loramcl.schema.fields import Int
from loramcl.checkpoints import Checkpoint  # noqa: E402
from loramcl.errors import ConfigError, MissingResource  # noqa: E402
from loramcl.peft_io import check_export_folder, export_all  # noqa: E402
from loramcl.utils.atomic import staged  # noqa: E402
from loramcl.runs import checkpoint_config, find_checkpoints, load_model  # noqa: E402


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


def base_name(model_cfg: Any) -> Optional[str]:
    """adapter_config.json's base: a Hub backbone's name, a local one's absolute folder; None for a
    backbone built from a config (nothing to load it from)."""
    name = model_cfg.get("name_or_path")
    if not name:
        return None
    local = Path(str(name)).expanduser()
    return str(local.resolve()) if local.exists() else str(name)


def check_request(checkpoint: Checkpoint, out: Path, hypotheses: Optional[Sequence[int]], overwrite: bool) -> None:
    """What export_all would refuse, checked before the model is built."""
    K = checkpoint.meta.num_hypotheses
    ks = list(range(K)) if hypotheses is None else list(hypotheses)
    if hypotheses is None and checkpoint.meta.is_moe:
        raise ValueError(f"{checkpoint.path} holds a LoRA-MoE model, which cannot be exported to peft (its token "
                         f"routers have no peft equivalent): export single experts with --hypotheses k ...")
    if not ks or len(set(ks)) != len(ks) or any(not 0 <= k < K for k in ks):
        raise ValueError(f"--hypotheses must be distinct indices in [0, {K - 1}] (the run has K={K}), got {ks}")
    from loramcl.run_folders import run_markers

    for folder in (out, out.parent if out.name.startswith("hyp_") else None):
        markers = run_markers(folder) if folder is not None else []
        if markers:  # an export never writes into a training run or an evaluation, even with --overwrite
            raise FileExistsError(f"--out {out} is a run folder ({', '.join(markers)}): exports go into a folder of "
                                  f"their own, e.g. --out {out / 'export'}")
    for k in ks:
        check_export_folder(out / f"hyp_{k}", overwrite, flag="--overwrite")


def load_run_model(ckpt: Path, save_base: Optional[Path] = None, overwrite: bool = False):
    """The run's adapter model with the checkpoint's adapters loaded, and the run's config.

    With `save_base`, the freshly built backbone is written there (save_pretrained) before the
    adapters are injected, so that runs on random from-config backbones can be reloaded.
    """
    from hydra.utils import instantiate

    from hydra.errors import InstantiationException

    checkpoint = Checkpoint.load(ckpt)
    cfg = checkpoint_config(checkpoint)
    try:
        backbone = instantiate(cfg.model)
    except InstantiationException as err:  # e.g. a tiny base to rebuild whose data are gone
        detail = " ".join(str(err.__cause__ or err).split())
        raise MissingResource(f"cannot build the run's backbone {cfg.model.get('name_or_path') or ''}: {detail}") from None
    if save_base is not None:  # beside its final name, renamed when complete
        with staged(save_base, overwrite=overwrite) as stage:
            backbone.save_pretrained(str(stage.path))
        if not stage.placed:
            raise FileExistsError(f"{save_base} was written by another process meanwhile; pass --overwrite to replace it")
    return load_model(checkpoint, cfg, backbone=backbone).eval(), cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="train.py run folder or a .ckpt file")
    parser.add_argument("--out", type=Path, required=True, help="export folder (gets hyp_0 ... hyp_{K-1})")
    parser.add_argument("--model", default=None, help="which model of the run (checkpoints/<model>/), e.g. mcl")
    parser.add_argument("--hypotheses", type=arg(Int(0)), nargs="+", default=None, help="indices to export (default all)")
    parser.add_argument("--base", default=None, help="base_model_name_or_path written to adapter_config.json")
    parser.add_argument("--save-base", type=Path, default=None,
                        help="also save the rebuilt backbone here (for random from-config backbones)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing hyp_k folders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")  # e.g. a truncated checkpoint passed over
    try:
        ckpt = choose_checkpoint(args.path, args.model)
        check_request(Checkpoint.load(ckpt), args.out, args.hypotheses, args.overwrite)
        if args.save_base is not None and args.save_base.exists() and any(args.save_base.iterdir()) \
                and not args.overwrite:
            raise FileExistsError(f"{args.save_base} is not empty; pass --overwrite to replace it")
        model, cfg = load_run_model(ckpt, args.save_base, args.overwrite)
        base = args.base or (str(args.save_base.resolve()) if args.save_base else None)
        base = base or base_name(cfg.model)
        paths = export_all(model, args.out, base, hypotheses=args.hypotheses, overwrite=args.overwrite,
                           source=str(ckpt.resolve()))
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ConfigError, MissingResource) as err:
        print(f"error: {err}", file=sys.stderr)
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
    from loramcl.cli import run_script
    from loramcl.interrupts import stop_on_signals

    with stop_on_signals():  # Ctrl+C / SIGTERM: one `error:` line, exit status 130 / 143
        sys.exit(run_script(main))
