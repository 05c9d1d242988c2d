"""Pre-train a tiny base on the synthetic data and save it with save_pretrained.

    python scripts/pretrain_tiny_base.py qwen2_audio [--data data/synthetic/audio] [--out data/tiny_bases/qwen2_audio]

The demo experiments do this on first use; run it by hand to change steps or sizes.
"""

import argparse
import logging
import sys
from pathlib import Path

import torch

from loramcl.tiny_base import pretrain_qwen2_audio

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", choices=["qwen2_audio"])
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic/audio", help="synthetic data folder")
    parser.add_argument("--name", default="synth_audio")
    parser.add_argument("--out", type=Path, default=ROOT / "data/tiny_bases/qwen2_audio")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_flush_denormal(True)
    try:
        pretrain_qwen2_audio(str(args.data), args.name, str(args.out), steps=args.steps, seed=args.seed,
                             overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
