"""Which answer mode each candidate takes, per evaluation: does each LoRA-MCL hypothesis keep one
mode, and do beam search / DBS / sampling cover an item's modes? (src/loramcl/evaluation/modes.py)

    python scripts/answer_modes.py logs/eval/multiruns/<time>        # every evaluation of a sweep
    python scripts/answer_modes.py <eval folder> <eval folder> --labeler mypackage.modes:label

The default labeler is the text demo's (`loramcl.data.synthetic_text.style_of`: statement, exclaim,
question); give your own `module:function` (text -> mode name) for data of your own. Prints one
table and writes modes.json beside each evaluation's predictions.jsonl (or into --out).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from loramcl.cli import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="eval.py run folders, or folders holding them")
    parser.add_argument("--labeler", default="loramcl.data.synthetic_text:style_of",
                        help="module:function giving a text's mode (default: the text demo's styles)")
    parser.add_argument("--out", type=Path, default=None, help="write modes.json here instead of beside each evaluation")
    args = parser.parse_args(argv)
    from loramcl.evaluation.modes import describe, evaluation_folders, mode_report, report_table

    module, _, name = args.labeler.partition(":")
    try:
        labeler = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        parser.error(f"--labeler {args.labeler}: no function {name or '(none)'} in module {module} (module:function)")
    try:
        folders = evaluation_folders(args.paths)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    for folder in folders:
        with open(folder / "predictions.jsonl", encoding="utf-8") as handle:
            report = mode_report((json.loads(line) for line in handle if line.strip()), labeler)
        rows.append((describe(folder), report))
        target = (args.out / f"modes_{folder.name}.json") if args.out else folder / "modes.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"evaluation": str(folder), "labeler": args.labeler, **report}, indent=2))
    print(report_table(rows))
    return 0


if __name__ == "__main__":
    from loramcl.cli import run_script

    sys.exit(run_script(main))
