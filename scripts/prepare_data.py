"""Build the HDF5 splits (layouts: `loramcl.data.hdf5`) from downloads or synthetic generators.

Synthetic sets (no download; deterministic for --seed):
    python scripts/prepare_data.py synthetic-audio                 # data/synthetic/audio/synth_audio_{train,val,test}.hdf5
    python scripts/prepare_data.py synthetic-shapes                # data/synthetic/shapes/shapes_*.hdf5 (English)
    python scripts/prepare_data.py synthetic-shapes --bilingual    # .../shapes_bilingual_*.hdf5 (half the captions French)
    python scripts/prepare_data.py synthetic-translation           # data/synthetic/translation/synth_en_de_*.hdf5 + multiref txt

Downloads (one split per call unless --root; outputs <out>/<name>_<split>.hdf5):
    python scripts/prepare_data.py clotho --root ~/clotho --out data/clotho            # all three splits
    python scripts/prepare_data.py clotho --audio-dir ~/clotho/development \\
        --captions ~/clotho/clotho_captions_development.csv --split train --out data/clotho
    python scripts/prepare_data.py audiocaps --audio-dir ~/audiocaps/train --csv ~/audiocaps/train.csv \\
        --split train --out data/audiocaps [--skip-missing]
    python scripts/prepare_data.py textcaps --images ~/textcaps/train_images \\
        --captions ~/textcaps/TextCaps_0.1_train.json --split train --out data/textcaps
    python scripts/prepare_data.py coco --images ~/coco/val2014 --captions captions_val2014.json --split test --out data/coco
    python scripts/prepare_data.py bilingual --images DIR --captions en.json --second-captions fr.json \\
        --split train --name textcaps_bilingual --out data/textcaps_bilingual [--fraction 0.5 --seed 0]
    python scripts/prepare_data.py translation --src train.en --tgt train.de --split train --name wmt14_en_de --out data/wmt
    python scripts/prepare_data.py translation --ott newstest2014.multiref.txt --split test --name wmt14_en_de --out data/wmt
    python scripts/prepare_data.py manifest --kind audio --manifest clips.csv --split train --name mine --out data/mine
    python scripts/prepare_data.py manifest --kind image --manifest images.jsonl --split test --name mine --out data/mine
    python scripts/prepare_data.py synthetic-text                  # data/synthetic/text/{train,val,test}.jsonl (data=text demo)
    python scripts/prepare_data.py check --root data/clotho --name clotho                   # validate the splits

Every command refuses to replace an existing file unless --overwrite. Default output folders are
below the project's data/ folder, from whatever folder the script runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import h5py

from loramcl.cli import ArgumentParser, arg  # one-line errors
from loramcl.schema.fields import Float, Int
from loramcl.data import prepare, synthetic
from loramcl.data.hdf5 import SPLITS, check_split_files, human_size
from loramcl.interrupts import doing

ROOT = Path(os.environ.get("PROJECT_ROOT") or Path(__file__).resolve().parents[1])  # as train.py's paths.root_dir


def summary(path: Path) -> None:
    if Path(path).suffix == ".hdf5":
        with h5py.File(path, "r") as f:
            n, split, cut = int(f.attrs["num_items"]), f.attrs["split"], int(f.attrs.get("num_truncated", 0))
        extra = f", {cut} clips cut to max_seconds" if cut else ""
        print(f"{split}: wrote {n} items to {path} ({human_size(Path(path).stat().st_size)}{extra})")
    else:
        print(f"wrote {path} ({human_size(Path(path).stat().st_size)})")


def sizes(args) -> tuple[int, int, int]:
    return (args.train, args.val, args.test)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help, out=None, name_default=None, split=True):
        p = sub.add_parser(name, help=help)
        p.add_argument("--out", type=Path, default=out, required=out is None, help="output folder")
        p.add_argument("--name", default=name_default, required=name_default is None, help="file prefix: <name>_<split>.hdf5")
        if split:
            p.add_argument("--split", help="train / val / test (aliases: dev, development, validation, eval, evaluation)")
        p.add_argument("--overwrite", action="store_true", help="replace existing files")
        return p

    p = command("clotho", "Clotho v2: audio folder + clotho_captions_<split>.csv", name_default="clotho")
    p.add_argument("--root", type=Path, help="extracted Clotho download: all three splits")
    p.add_argument("--audio-dir", type=Path)
    p.add_argument("--captions", type=Path, help="caption CSV (file_name,caption_1..caption_5)")
    p.add_argument("--max-seconds", type=arg(Float(0, low_open=True)), default=prepare.MAX_SECONDS["clotho"])

    p = command("audiocaps", "AudioCaps: CSV (audiocap_id,youtube_id,start_time,caption) + audio folder", name_default="audiocaps")
    p.add_argument("--audio-dir", type=Path, required=True, help="files <youtube_id>.wav, Y<youtube_id>.wav or <youtube_id>_<start>.wav")
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--max-seconds", type=arg(Float(0, low_open=True)), default=prepare.MAX_SECONDS["audiocaps"])
    p.add_argument("--skip-missing", action="store_true", help="drop clips whose audio is missing instead of failing")

    for fmt in ("textcaps", "coco"):
        p = command(fmt, f"{fmt} caption JSON + image folder", name_default=fmt)
        p.add_argument("--images", type=Path, required=True)
        p.add_argument("--captions", type=Path, required=True)
        p.add_argument("--language", default="en")

    p = command("bilingual", "images + two caption files (two languages) mixed over a random half of the captions")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--captions", type=Path, required=True, help="first-language captions (COCO or TextCaps JSON)")
    p.add_argument("--second-captions", type=Path, required=True, help="same images, second language")
    p.add_argument("--format", default="auto", choices=["auto", "coco", "textcaps"])
    p.add_argument("--languages", nargs=2, default=["en", "fr"])
    p.add_argument("--fraction", type=arg(Float(0, 1)), default=0.5, help="share of ALL captions taken from the second file")
    p.add_argument("--seed", type=arg(Int(0, 2**32 - 1)), default=0)

    p = command("translation", "parallel files (--src/--tgt) or an Ott et al. multi-reference file (--ott)")
    p.add_argument("--src", type=Path)
    p.add_argument("--tgt", type=Path)
    p.add_argument("--ott", type=Path)
    p.add_argument("--src-lang", default="en")
    p.add_argument("--tgt-lang", default="de")
    p.add_argument("--group", action="store_true", help="merge identical sources into one multi-reference item")
    p.add_argument("--skip-empty", action="store_true", help="drop pairs with an empty line")

    p = command("manifest", "audio clips or images listed in a CSV / JSON Lines manifest (path + captions per row)")
    p.add_argument("--manifest", type=Path, required=True, help="CSV or JSON Lines; relative paths are read from its folder")
    p.add_argument("--kind", required=True, choices=["audio", "image"])
    p.add_argument("--path-field", default="path", help="the field naming each file (default: path)")
    p.add_argument("--caption-field", nargs="+", default=["captions"],
                   help="the field holding a caption or a list of them, or several fields (CSV columns)")
    p.add_argument("--max-seconds", type=arg(Float(0, low_open=True)), default=None, help="audio: cut longer clips")
    p.add_argument("--language", default="en", help="image: the captions' language")

    p = sub.add_parser("synthetic-text", help="the text demo's three-style answers as JSON Lines into data/synthetic/text")
    p.add_argument("--out", type=Path, default=ROOT / "data/synthetic/text")
    p.add_argument("--seed", type=arg(Int(0, 2**32 - 1)), default=0)
    p.add_argument("--overwrite", action="store_true")
    for split, k in zip(SPLITS, (240, 40, 40)):
        p.add_argument(f"--{split}", type=arg(Int(1)), default=k, help=f"rows in {split} (default {k})")

    for name, out, default_name, n in (("synthetic-audio", "data/synthetic/audio", "synth_audio", (400, 50, 50)),
                                       ("synthetic-shapes", "data/synthetic/shapes", None, (400, 50, 50)),
                                       ("synthetic-translation", "data/synthetic/translation", "synth_en_de", (2000, 100, 100))):
        p = sub.add_parser(name, help=f"generate the synthetic set into {out}")
        p.add_argument("--out", type=Path, default=ROOT / out)
        p.add_argument("--name", default=default_name)
        p.add_argument("--seed", type=arg(Int(0, 2**32 - 1)), default=0)
        p.add_argument("--overwrite", action="store_true")
        for split, k in zip(SPLITS, n):
            p.add_argument(f"--{split}", type=arg(Int(1)), default=k, help=f"items in {split} (default {k})")
    p = sub.choices["synthetic-shapes"]
    p.add_argument("--bilingual", action="store_true", help="a random half of all captions in French")
    p.add_argument("--image-size", type=arg(Int(8)), default=64)
    p.add_argument("--phrasing", default="varied", choices=["varied", "canonical"],
                   help="varied: different phrasings per image; canonical: one fixed phrasing per language")
    p.add_argument("--export-coco", type=Path, help="also write images + captions_en/fr.json (COCO) per split here")

    p = sub.add_parser("check", help="validate the split files of a dataset (what a training run does first)")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--splits", nargs="+", default=list(SPLITS))

    args = parser.parse_args(argv)
    common = {"overwrite": getattr(args, "overwrite", False), "progress": True}
    doing(f"running `{args.command}`")
    try:
        written: list[Path] = []
        if args.command == "clotho":
            if args.root:
                splits = [args.split] if args.split else list(SPLITS)
                for split in splits:
                    audio_dir, csv_path = prepare.clotho_layout(args.root, split)
                    written.append(prepare.prepare_clotho(audio_dir, csv_path, args.out, split=split, name=args.name,
                                                          max_seconds=args.max_seconds, **common))
            else:
                if not (args.audio_dir and args.captions and args.split):
                    parser.error("clotho needs --root, or --audio-dir, --captions and --split")
                written.append(prepare.prepare_clotho(args.audio_dir, args.captions, args.out, split=args.split,
                                                      name=args.name, max_seconds=args.max_seconds, **common))
        elif args.command == "audiocaps":
            written.append(prepare.prepare_audiocaps(args.audio_dir, args.csv, args.out, split=_need_split(parser, args),
                                                     name=args.name, max_seconds=args.max_seconds,
                                                     skip_missing=args.skip_missing, **common))
        elif args.command in ("textcaps", "coco"):
            written.append(prepare.prepare_images(args.images, args.captions, args.out, split=_need_split(parser, args),
                                                  name=args.name, fmt=args.command, language=args.language, **common))
        elif args.command == "bilingual":
            written.append(prepare.prepare_bilingual(args.images, args.captions, args.second_captions, args.out,
                                                     split=_need_split(parser, args), name=args.name, fmt=args.format,
                                                     languages=tuple(args.languages), fraction=args.fraction,
                                                     seed=args.seed, **common))
        elif args.command == "translation":
            written.append(prepare.prepare_translation(args.out, split=_need_split(parser, args), name=args.name,
                                                       src_lang=args.src_lang, tgt_lang=args.tgt_lang, src=args.src,
                                                       tgt=args.tgt, ott=args.ott, group=args.group,
                                                       skip_empty=args.skip_empty, **common))
        elif args.command == "manifest":
            fields = args.caption_field[0] if len(args.caption_field) == 1 else args.caption_field
            written.append(prepare.prepare_manifest(args.manifest, args.out, kind=args.kind,
                                                    split=_need_split(parser, args), name=args.name,
                                                    path_field=args.path_field, caption_field=fields,
                                                    max_seconds=args.max_seconds, language=args.language, **common))
        elif args.command == "synthetic-text":
            from loramcl.data.synthetic_text import make_styles

            written += make_styles(args.out, sizes=sizes(args), seed=args.seed, overwrite=args.overwrite)
        elif args.command == "synthetic-audio":
            written += synthetic.make_audio(args.out, name=args.name, sizes=sizes(args), seed=args.seed, **common).values()
        elif args.command == "synthetic-shapes":
            written += synthetic.make_shapes(args.out, name=args.name, sizes=sizes(args), image_size=args.image_size,
                                             bilingual=args.bilingual, seed=args.seed, export_coco=args.export_coco,
                                             phrasing=args.phrasing,
                                             **common).values()
        elif args.command == "synthetic-translation":
            written += synthetic.make_translation(args.out, name=args.name, sizes=sizes(args), seed=args.seed, **common).values()
        elif args.command == "check":
            for split, path in check_split_files(args.root, args.name, args.splits).items():
                print(f"{split}: {path} OK ({human_size(path.stat().st_size)})")
        for path in written:
            summary(path)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _need_split(parser, args) -> str:
    if not args.split:
        parser.error(f"{args.command} needs --split")
    return args.split


if __name__ == "__main__":
    from loramcl.cli import run_script
    from loramcl.interrupts import stop_on_signals

    # Ctrl+C / SIGTERM: one `error:` line, exit status 130 / 143
    with stop_on_signals(outcome="no partial file is left under a final name"):
        sys.exit(run_script(main))
