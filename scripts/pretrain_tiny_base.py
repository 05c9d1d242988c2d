"""Pre-train a tiny base on the synthetic data and save it with save_pretrained.

    python scripts/pretrain_tiny_base.py qwen2_audio   # data/synthetic/audio -> data/tiny_bases/qwen2_audio
    python scripts/pretrain_tiny_base.py llava_next    # data/synthetic/shapes (bilingual) -> data/tiny_bases/llava_next_bilingual
    python scripts/pretrain_tiny_base.py alma          # data/synthetic/translation -> data/tiny_bases/alma
    python scripts/pretrain_tiny_base.py text --data my/train.jsonl --out data/tiny_bases/mine [--chat-template]

The demo experiments do this on first use; run it by hand to change steps or sizes. `text` builds a
tiny Llama (and its tokenizer) on a text task's own training file (data=text rows), so that a task
of one's own can be tried on a CPU: train.py experiment=text model.name_or_path=<that folder>.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from loramcl.cli import ArgumentParser, arg  # one-line errors
from loramcl.schema.fields import Int
from loramcl import tiny_base

ROOT = Path(os.environ.get("PROJECT_ROOT") or Path(__file__).resolve().parents[1])  # as train.py's paths.root_dir
DEFAULTS = {  # backbone: (synthetic data folder, dataset name, output folder), as the demos use them
    "qwen2_audio": ("data/synthetic/audio", "synth_audio", "data/tiny_bases/qwen2_audio"),
    "llava_next": ("data/synthetic/shapes", "shapes_bilingual", "data/tiny_bases/llava_next_bilingual"),
    "alma": ("data/synthetic/translation", "synth_en_de", "data/tiny_bases/alma"),
}


def main() -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", choices=[*DEFAULTS, "text"])
    parser.add_argument("--data", type=Path, help="synthetic data folder (default: the demo's); text: the training file")
    parser.add_argument("--name", help="dataset name (file prefix)")
    parser.add_argument("--out", type=Path, help="output folder (default: the demo's)")
    parser.add_argument("--steps", type=arg(Int(1)), default=None, help="default: 600 (text: 300)")
    parser.add_argument("--seed", type=arg(Int(0, 2**32 - 1)), default=0)
    parser.add_argument("--overwrite", action="store_true")
    text = parser.add_argument_group("text (a task of one's own)")
    text.add_argument("--prompt", default="{input}", help="the prompt template, as data.prompt (default: {input})")
    text.add_argument("--input-field", default="input")
    text.add_argument("--reference-field", default="references", nargs="+")
    text.add_argument("--chat-template", action="store_true", help="give the tokenizer a minimal chat template")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_flush_denormal(True)
    if args.backbone == "text":
        if args.data is None or args.out is None:
            parser.error("text needs --data <training file> and --out <folder>")
        reference = args.reference_field[0] if len(args.reference_field) == 1 else args.reference_field
        try:
            tiny_base.pretrain_text(str(args.data), str(args.out), prompt=args.prompt, input_field=args.input_field,
                                    reference_field=reference, chat_template=args.chat_template,
                                    steps=args.steps or 300, seed=args.seed,
                                    overwrite=args.overwrite)
        except (FileNotFoundError, FileExistsError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    data, name, out = DEFAULTS[args.backbone]
    try:
        getattr(tiny_base, f"pretrain_{args.backbone}")(str(args.data or ROOT / data), args.name or name,
                                                        str(args.out or ROOT / out), steps=args.steps or 600,
                                                        seed=args.seed, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from loramcl.cli import run_script
    from loramcl.interrupts import stop_on_signals

    with stop_on_signals():  # Ctrl+C / SIGTERM: one `error:` line, exit status 130 / 143
        sys.exit(run_script(main))
