"""A small text task with three known answer styles per input, written as JSON Lines (data=text demo).

Each input names an object ("small red ball"); its three references answer in three clearly
different styles, one each:

    statement   "this is a small red ball."
    exclaim     "wow, what a red ball!"
    question    "is the ball small and red?"

Training draws one reference per item and step at random (data.references=random), so the data's
distribution of answers is a mixture of three modes with equal weights: a single adapter (LoRA-MLE)
learns the mixture, LoRA-MCL's K = 3 hypotheses can each take one style. `style_of` tells an answer's
style from its wording (what the demo's report counts per hypothesis and per decoding method).

    python scripts/prepare_data.py synthetic-text        # data/synthetic/text/{train,val,test}.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from loramcl.utils.atomic import write_text_atomic

SIZES = ("small", "big", "old", "new")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
THINGS = ("ball", "car", "hat", "cup", "box", "kite", "lamp", "book", "chair", "shoe")
STYLES = ("statement", "exclaim", "question")
SPLITS = ("train", "val", "test")


def answers(size: str, color: str, thing: str) -> dict[str, str]:
    """The three references of one input, by style."""
    return {"statement": f"this is a {size} {color} {thing}.",
            "exclaim": f"wow, what a {color} {thing}!",
            "question": f"is the {thing} {size} and {color}?"}


def style_of(text: str) -> str:
    """The style of an answer from its wording: statement, exclaim, question, or "other"."""
    words = text.strip().lower().split()
    if not words:
        return "other"
    if words[0] == "this" and text.strip().endswith("."):
        return "statement"
    if words[0].startswith("wow") and text.strip().endswith("!"):
        return "exclaim"
    if words[0] == "is" and text.strip().endswith("?"):
        return "question"
    return "other"


def make_styles(out_dir: str | Path, sizes: Sequence[int] = (240, 40, 40), seed: int = 0,
                only: Sequence[str] = SPLITS, overwrite: bool = False) -> list[Path]:
    """Write `<out_dir>/{train,val,test}.jsonl` (disjoint inputs, `sizes` rows each, at most 320 in all);
    an existing file is kept unless `overwrite` (FileExistsError)."""
    inputs = [(s, c, t) for s in SIZES for c in COLORS for t in THINGS]
    if sum(sizes) > len(inputs):
        raise ValueError(f"sizes {list(sizes)} ask for {sum(sizes)} inputs; there are {len(inputs)}")
    random.Random(seed).shuffle(inputs)
    out, written, start = Path(out_dir), [], 0
    for split, n in zip(SPLITS, sizes):
        rows = inputs[start:start + n]
        start += n
        if split not in only:
            continue
        lines = [json.dumps({"id": f"{split}-{i}", "input": " ".join(r), "references": list(answers(*r).values())})
                 for i, r in enumerate(rows)]
        path = out / f"{split}.jsonl"
        if not write_text_atomic(path, "\n".join(lines) + "\n", overwrite=overwrite):
            raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        written.append(path)
    return written
