"""A small text task with three known answer styles per input, written as JSON Lines (data=text demo).

Each input names an object ("small red ball"); its answers come in three clearly different styles,
equally likely, with 1, 2 and 4 phrasings:

    statement   "this is a small red ball."
    exclaim     "wow, what a red ball!" | "wow, a small red ball!"
    question    "is the ball small and red?" | "is it a red ball?" | "is this ball small?" | "is that a small ball?"

A training (and validation) row holds one answer per style, the phrasing drawn at random per row, so
that across rows a style's mass of 1/3 is spread over its phrasings (1/3, 1/6 each, 1/12 each): the
most likely single answers are the statement and the two exclamations, and beam search with K = 3
beams returns those and misses the questions, while LoRA-MCL's K = 3 hypotheses can each take one
style. A test row holds every phrasing (7 references). `style_of` tells an answer's style from its
wording (what scripts/answer_modes.py counts per hypothesis and per decoding method).

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


def answers(size: str, color: str, thing: str) -> dict[str, list[str]]:
    """Every phrasing of the three styles for one input."""
    return {"statement": [f"this is a {size} {color} {thing}."],
            "exclaim": [f"wow, what a {color} {thing}!", f"wow, a {size} {color} {thing}!"],
            "question": [f"is the {thing} {size} and {color}?", f"is it a {color} {thing}?",
                         f"is this {thing} {size}?", f"is that a {size} {thing}?"]}


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
    rng = random.Random(seed)
    rng.shuffle(inputs)
    out, written, start = Path(out_dir), [], 0
    for split, n in zip(SPLITS, sizes):
        rows = inputs[start:start + n]
        start += n
        lines = []
        for i, r in enumerate(rows):
            styles = answers(*r)
            refs = [p for style in STYLES for p in styles[style]] if split == "test" else \
                [rng.choice(styles[style]) for style in STYLES]  # drawn for every split: one seed, same files
            lines.append(json.dumps({"id": f"{split}-{i}", "input": " ".join(r), "references": refs}))
        if split not in only:
            continue
        path = out / f"{split}.jsonl"
        if not write_text_atomic(path, "\n".join(lines) + "\n", overwrite=overwrite):
            raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        written.append(path)
    return written
