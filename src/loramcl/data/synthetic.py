"""Small synthetic datasets with several valid targets per input, in the real HDF5 layouts.

They exercise the whole pipeline (and the point of MCL: one input, several equally valid outputs)
without any download. Everything is deterministic for a seed: split s of a set uses the generator
`np.random.default_rng([seed, s])`.

- `make_audio`: 1-4 s clips at 16 kHz, 1-3 sound events in sequence (low / medium / high tones,
  white-noise bursts, rising / falling chirps, click trains), five different captions per clip that
  describe the same events with other words and orders. The `events` dataset (JSON per clip) keeps
  the ground truth (kind, start, end, frequency) for tests and analysis; readers ignore it.
- `make_shapes`: 64 x 64 PNGs of one or two coloured shapes with English and French template
  captions; `bilingual=True` mixes the languages over a random half of ALL captions
  (`prepare.mix_bilingual`), `export_coco` also writes the images and one COCO caption file per
  language (the input of `prepare_data.py coco` / `bilingual`). `shapes` keeps the ground truth.
- `make_translation`: English-German template sentences, each source with several valid German
  translations (synonyms, word order). Train rows carry one translation drawn at random (a source
  may repeat), val / test items carry all of them, and the test set is also written in the
  multi-reference text format of Ott et al. 2018.

Every file is written beside its final name and renamed once complete (the writers of
`loramcl.data.hdf5`): an interrupted generation leaves no file under a final name.

    python scripts/prepare_data.py synthetic-audio        # data/synthetic/audio/synth_audio_{train,val,test}.hdf5
    python scripts/prepare_data.py synthetic-shapes [--bilingual]
    python scripts/prepare_data.py synthetic-translation
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import h5py
import numpy as np
from tqdm.auto import tqdm

from loramcl.data.hdf5 import (
    SAMPLE_RATE,
    SPLITS,
    STR,
    AudioCaptionWriter,
    ImageCaptionWriter,
    TranslationWriter,
    split_path,
)
from loramcl.data.prepare import mix_bilingual, write_ott_multiref

Sizes = Union[dict, tuple, list]


def _sizes(sizes: Sizes) -> dict[str, int]:
    sizes = dict(zip(SPLITS, sizes)) if isinstance(sizes, (tuple, list)) else dict(sizes)
    for split, n in sizes.items():
        if split not in SPLITS or int(n) < 1:
            raise ValueError(f"sizes: split must be one of {SPLITS} with at least 1 item, got {split}={n}")
    return {s: int(n) for s, n in sizes.items()}


def _only(sizes: dict[str, int], only: Optional[Sequence[str]]) -> list[str]:
    """The splits to write: `only` (each one of `sizes`), or all of them."""
    if only is None:
        return list(sizes)
    unknown = [s for s in only if s not in sizes]
    if unknown:
        raise ValueError(f"only: split(s) {', '.join(unknown)} not among the sizes given ({', '.join(sizes)})")
    return list(only)


def _check_free(paths: list[Path], overwrite: bool) -> None:
    """Fail before generating anything when an output exists (and overwrite is off)."""
    for path in paths:
        if Path(path).exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")


def _rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split)])


def _distinct(make: Callable[[], str], n: int, what: str) -> list[str]:
    """n different outputs of a random `make` (the templates give far more than n)."""
    out: list[str] = []
    for _ in range(200 * n):
        s = make()
        if s not in out:
            out.append(s)
            if len(out) == n:
                return out
    raise RuntimeError(f"could not draw {n} different {what}")


def _bar(iterable, total, desc, progress):
    return tqdm(iterable, total=total, desc=desc, unit="item", disable=not progress, dynamic_ncols=True)


# ==================================================================================== audio
TONE_RANGES = {"tone_low": (150.0, 350.0), "tone_medium": (500.0, 1000.0), "tone_high": (1500.0, 3500.0)}  # Hz
EVENT_KINDS = ("tone_low", "tone_medium", "tone_high", "noise", "chirp_up", "chirp_down", "clicks")
EVENT_PHRASES = {  # every phrase names exactly one kind: captions are checked against these
    "tone_low": ["a low hum", "a deep tone", "a low-pitched drone", "a low beep", "a bass tone"],
    "tone_medium": ["a medium beep", "a mid-pitched tone", "a tone of medium pitch", "a middle-range beep", "a moderate-pitched note"],
    "tone_high": ["a high beep", "a shrill tone", "a high-pitched whistle", "a piercing high note", "a sharp high beep"],
    "noise": ["a burst of static", "white noise", "a hiss of noise", "a static burst", "a rush of noise"],
    "chirp_up": ["a rising chirp", "an upward sweep", "a tone that rises in pitch", "an ascending whistle", "a rising sweep"],
    "chirp_down": ["a falling chirp", "a downward sweep", "a tone that drops in pitch", "a descending whistle", "a falling sweep"],
    "clicks": ["a series of clicks", "a click train", "rapid clicking", "a rapid ticking", "repeated clicks"],
}
SEQUENCE_TEMPLATES = {  # {0}, {1}, {2} = the events in the order they sound
    1: ["{0}", "{0} is heard", "{0} sounds", "there is {0}", "you can hear {0}", "{0} can be heard", "{0} plays briefly"],
    2: ["{0} followed by {1}", "{0}, then {1}", "{0} and then {1}", "{1} comes after {0}", "first {0}, then {1}",
        "{0} is heard before {1}", "after {0}, {1} is heard", "{0} gives way to {1}"],
    3: ["{0}, then {1}, then {2}", "{0} followed by {1} and {2}", "first {0}, next {1}, finally {2}",
        "{0}, {1} and then {2}", "{0} comes first, then {1}, and {2} ends it", "after {0} and {1}, {2} is heard",
        "{0} is followed by {1}, then by {2}"],
}


def _event_signal(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    t = np.arange(n) / SAMPLE_RATE
    info: dict = {}
    if kind in TONE_RANGES:
        lo, hi = TONE_RANGES[kind]
        f = float(rng.uniform(lo, hi))
        x = 0.5 * np.sin(2 * np.pi * f * t)
        info["freq"] = round(f, 2)
    elif kind == "noise":
        x = 0.25 * rng.standard_normal(n)
    elif kind in ("chirp_up", "chirp_down"):
        f0, f1 = float(rng.uniform(250, 500)), float(rng.uniform(2000, 3500))
        if kind == "chirp_down":
            f0, f1 = f1, f0
        dur = n / SAMPLE_RATE
        x = 0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * dur)))
        info.update(f_start=round(f0, 2), f_end=round(f1, 2))
    elif kind == "clicks":
        rate = float(rng.uniform(6, 15))  # clicks per second
        x = np.zeros(n)
        click = np.exp(-np.arange(int(0.004 * SAMPLE_RATE)) / 12.0) * rng.choice([-1.0, 1.0], int(0.004 * SAMPLE_RATE))
        for start in (np.arange(0, n / SAMPLE_RATE, 1 / rate) * SAMPLE_RATE).astype(int):
            seg = x[start : start + click.size]
            seg += 0.8 * click[: seg.size]
        info["rate"] = round(rate, 2)
    else:
        raise ValueError(f"unknown event kind {kind!r}")
    ramp = min(n // 2, int(0.01 * SAMPLE_RATE))  # 10 ms fades: no click at the edges of tones
    if kind != "clicks" and ramp > 0:
        fade = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        x[:ramp] *= fade
        x[-ramp:] *= fade[::-1]
    return x, info


def synth_audio_clip(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One clip: 1-4 s of 16 kHz float32 audio, and its events in order (kind, start/end in s, ...)."""
    total = float(rng.uniform(1.0, 4.0))
    lead, tail = rng.uniform(0.05, 0.15, size=2)
    n_events = int(rng.integers(1, 4))
    while n_events > 1 and total - lead - tail - 0.25 * (n_events - 1) < 0.3 * n_events:
        n_events -= 1
    gaps = rng.uniform(0.1, 0.25, size=n_events - 1)
    free = total - lead - tail - gaps.sum()
    durations = 0.3 + (free - 0.3 * n_events) * rng.dirichlet(np.ones(n_events))  # each event >= 0.3 s
    kinds = rng.choice(EVENT_KINDS, size=n_events, replace=False)
    audio = 0.003 * rng.standard_normal(int(round(total * SAMPLE_RATE)))  # faint background
    events, t = [], float(lead)
    for k, (kind, dur) in enumerate(zip(kinds, durations)):
        start, n = int(round(t * SAMPLE_RATE)), int(round(dur * SAMPLE_RATE))
        n = min(n, audio.size - start)
        x, info = _event_signal(str(kind), n, rng)
        audio[start : start + n] += x
        events.append({"kind": str(kind), "start": round(start / SAMPLE_RATE, 4), "end": round((start + n) / SAMPLE_RATE, 4), **info})
        t += dur + (gaps[k] if k < len(gaps) else 0.0)
    return np.clip(audio, -1, 1).astype(np.float32), events


def audio_captions(events: list[dict], rng: np.random.Generator, n: int = 5) -> list[str]:
    """n different captions of the same event sequence (other phrases, templates and orders)."""
    templates = SEQUENCE_TEMPLATES[len(events)]

    def one() -> str:
        phrases = [EVENT_PHRASES[e["kind"]][rng.integers(len(EVENT_PHRASES[e["kind"]]))] for e in events]
        return templates[rng.integers(len(templates))].format(*phrases)

    return _distinct(one, n, "audio captions")


def make_audio(
    out_dir="data/synthetic/audio", *, name: str = "synth_audio", sizes: Sizes = (400, 50, 50), seed: int = 0,
    overwrite: bool = False, progress: bool = False, only: Optional[Sequence[str]] = None,
) -> dict[str, Path]:
    """Writes `<out_dir>/<name>_<split>.hdf5` for each split (`only`: these splits, the same files
    as a full generation writes); returns {split: path}."""
    sizes = _sizes(sizes)
    only = _only(sizes, only)
    _check_free([split_path(out_dir, name, s) for s in only], overwrite)
    paths = {}
    for split, count in sizes.items():
        if split not in only:
            continue
        rng = _rng(seed, split)
        path = split_path(out_dir, name, split)
        events = []
        with AudioCaptionWriter(path, dataset=name, split=split, max_seconds=4.0, overwrite=overwrite,
                                attrs={"synthetic_seed": seed}) as w:
            for i in _bar(range(count), count, f"{name} {split}", progress):
                audio, ev = synth_audio_clip(rng)
                w.add(f"{name}_{split}_{i:05d}", audio, audio_captions(ev, rng))
                events.append(json.dumps(ev))
            w.h5.create_dataset("events", data=np.array(events, dtype=object), dtype=STR)
        paths[split] = path
    return paths


def read_events(path) -> list[list[dict]]:
    """The ground-truth events of a synthetic audio file."""
    with h5py.File(path, "r") as f:
        return [json.loads(s) for s in f["events"].asstr()[()]]


# =================================================================================== shapes
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 210, 20)}
SHAPES = ("circle", "square", "triangle")
WORDS = {
    "en": {"red": "red", "green": "green", "blue": "blue", "yellow": "yellow", "circle": "circle", "square": "square",
           "triangle": "triangle", "small": "small", "large": "large",
           "left": ["on the left"], "right": ["on the right"], "top": ["at the top"], "bottom": ["at the bottom"],
           "centre": ["in the middle", "in the centre"]},
    # every noun is masculine (un cercle, un carré, un triangle): the adjectives never change form
    "fr": {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "circle": "cercle", "square": "carré",
           "triangle": "triangle", "small": "petit", "large": "grand",
           "left": ["à gauche"], "right": ["à droite"], "top": ["en haut"], "bottom": ["en bas"],
           "centre": ["au centre", "au milieu"]},
}
ONE_SHAPE = {
    "en": ["{np}", "{np_size}", "{np} {pos}", "{np_size} {pos}", "there is {np} {pos}", "{np} on a white background",
           "a picture of {np_size}", "a white image with {np} {pos}"],
    "fr": ["{np}", "{np_size}", "{np} {pos}", "{np_size} {pos}", "il y a {np} {pos}", "{np} sur fond blanc",
           "une image d'{np_size}", "une image blanche avec {np} {pos}"],
}
TWO_SHAPES = {  # {a} = left / top shape, {b} = right / bottom shape; French nouns all start "un"
    ("en", "h"): ["{a} next to {b}", "{b} next to {a}", "{a} to the left of {b}", "{b} to the right of {a}",
                  "{a} and {b}", "{a} beside {b}", "two shapes: {a} and {b}", "{a} and {b} side by side"],
    ("en", "v"): ["{a} above {b}", "{b} below {a}", "{a} and {b}", "{b} under {a}", "two shapes: {a} and {b}",
                  "{a} over {b}", "{a} with {b} below it"],
    ("fr", "h"): ["{a} à côté d'{b}", "{b} à côté d'{a}", "{a} à gauche d'{b}", "{b} à droite d'{a}", "{a} et {b}",
                  "deux formes : {a} et {b}", "{a} et {b} côte à côte"],
    ("fr", "v"): ["{a} au-dessus d'{b}", "{b} en dessous d'{a}", "{b} sous {a}", "{a} et {b}", "deux formes : {a} et {b}",
                  "{a} en haut et {b} en bas"],
}
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "centre": (0.5, 0.5)}


def draw_shapes(rng: np.random.Generator, size: int = 64) -> tuple[bytes, list[dict]]:
    """PNG bytes of 1-2 shapes on white, and the shapes (colour, shape, size, position, centre)."""
    from PIL import Image, ImageDraw

    n = int(rng.integers(1, 3))
    if n == 1:
        places = [str(rng.choice(list(POSITIONS)))]
    else:
        places = ["left", "right"] if rng.random() < 0.5 else ["top", "bottom"]
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    picked = [pairs[k] for k in rng.choice(len(pairs), size=n, replace=False)]  # never two identical shapes
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    shapes = []
    for (colour, shape), place in zip(picked, places):
        big = bool(rng.random() < 0.5)
        r = size * (0.2 if big else 0.11)
        cx, cy = (np.array(POSITIONS[place]) + rng.uniform(-0.03, 0.03, 2)) * size
        box = [cx - r, cy - r, cx + r, cy + r]
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        shapes.append({"colour": colour, "shape": shape, "size": "large" if big else "small", "position": place,
                       "centre": [round(float(cx), 2), round(float(cy), 2)]})
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), shapes


CANONICAL_TWO = {("en", "h"): "{a} next to {b}", ("en", "v"): "{a} above {b}",
                 ("fr", "h"): "{a} à côté d'{b}", ("fr", "v"): "{a} au-dessus d'{b}"}


def shape_captions(shapes: list[dict], language: str, rng: np.random.Generator, n: int = 5,
                   phrasing: str = "varied") -> list[str]:
    """n captions of the same picture in `language` ("en" or "fr").

    phrasing "varied": n different phrasings (templates, word order, sizes); "canonical": one fixed
    phrasing per language, repeated n times, so that language is the only ambiguity of a caption
    (the clean setting of the bilingual experiment: with varied phrasings, e.g. which shape is named
    first is a binary choice as strong as the language, and K = 2 hypotheses may split on it).
    """
    w = WORDS[language]
    if phrasing == "canonical":
        def plain(s: dict) -> str:
            return f"a {w[s['colour']]} {w[s['shape']]}" if language == "en" else f"un {w[s['shape']]} {w[s['colour']]}"

        if len(shapes) == 1:
            caption = f"{plain(shapes[0])} {w[shapes[0]['position']][0]}"
        else:
            kind = "h" if shapes[0]["position"] == "left" else "v"
            caption = CANONICAL_TWO[(language, kind)].format(a=plain(shapes[0]), b=plain(shapes[1]))
        return [caption] * n
    if phrasing != "varied":
        raise ValueError(f"phrasing must be 'varied' or 'canonical', got {phrasing!r}")

    def noun_phrase(s: dict, with_size: bool) -> str:
        if language == "en":
            return f"a {w[s['size']] + ' ' if with_size else ''}{w[s['colour']]} {w[s['shape']]}"
        return f"un {w[s['size']] + ' ' if with_size else ''}{w[s['shape']]} {w[s['colour']]}"

    def one() -> str:
        if len(shapes) == 1:
            s = shapes[0]
            pos = w[s["position"]][rng.integers(len(w[s["position"]]))]
            template = ONE_SHAPE[language][rng.integers(len(ONE_SHAPE[language]))]
            return template.format(np=noun_phrase(s, False), np_size=noun_phrase(s, True), pos=pos)
        a, b = (noun_phrase(s, bool(rng.random() < 0.4)) for s in shapes)
        templates = TWO_SHAPES[(language, "h" if shapes[0]["position"] == "left" else "v")]
        return templates[rng.integers(len(templates))].format(a=a, b=b)

    return _distinct(one, n, f"{language} shape captions")


def make_shapes(
    out_dir="data/synthetic/shapes", *, name: Optional[str] = None, sizes: Sizes = (400, 50, 50), image_size: int = 64,
    captions_per_image: int = 5, bilingual: bool = False, second_language: str = "fr", seed: int = 0,
    export_coco: Optional[Union[str, Path]] = None, overwrite: bool = False, progress: bool = False,
    phrasing: str = "varied", only: Optional[Sequence[str]] = None,
) -> dict[str, Path]:
    """Writes `<out_dir>/<name>_<split>.hdf5` (name "shapes", or "shapes_bilingual" when bilingual).

    English only, or with `bilingual=True` a seeded random half of ALL captions in French
    (`caption_language` per caption). `export_coco=DIR` also writes `DIR/<split>/images/*.png`,
    `DIR/<split>/captions_en.json` and `DIR/<split>/captions_fr.json` (COCO format, caption j of one
    file describes the same image as caption j of the other): the input of
    `prepare_data.py coco` and `prepare_data.py bilingual`. `phrasing="canonical"`: one fixed
    phrasing per language (see `shape_captions`). `only`: write these splits alone (the same files
    as a full generation writes).
    """
    name = name or ("shapes_bilingual" if bilingual else "shapes")
    sizes = _sizes(sizes)
    only = _only(sizes, only)
    _check_free([split_path(out_dir, name, s) for s in only], overwrite)
    paths = {}
    for split, count in sizes.items():
        if split not in only:
            continue
        rng = _rng(seed, split)
        items = []
        for i in _bar(range(count), count, f"{name} {split}", progress):
            png, shapes = draw_shapes(rng, image_size)
            items.append({"id": f"{split}_{i:05d}", "png": png, "shapes": shapes,
                          "en": shape_captions(shapes, "en", rng, captions_per_image, phrasing),
                          second_language: shape_captions(shapes, second_language, rng, captions_per_image, phrasing)})
        if bilingual:
            mask = mix_bilingual([it["en"] for it in items], [it[second_language] for it in items], fraction=0.5,
                                 seed=int(rng.integers(2**31)))
        path = split_path(out_dir, name, split)
        with ImageCaptionWriter(path, dataset=name, split=split, language="en", overwrite=overwrite,
                                attrs={"synthetic_seed": seed}) as w:
            for k, it in enumerate(items):
                if bilingual:
                    caps = [it[second_language][j] if m else c for j, (c, m) in enumerate(zip(it["en"], mask[k]))]
                    w.add(it["id"], it["png"], caps, [second_language if m else "en" for m in mask[k]])
                else:
                    w.add(it["id"], it["png"], it["en"])
            w.h5.create_dataset("shapes", data=np.array([json.dumps(it["shapes"]) for it in items], dtype=object), dtype=STR)
        paths[split] = path
        if export_coco is not None:
            _export_coco(Path(export_coco) / split, items, ("en", second_language))
    return paths


def _export_coco(folder: Path, items: list[dict], languages) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for it in items:
        (folder / "images" / f"{it['id']}.png").write_bytes(it["png"])
    for lang in languages:
        data = {"images": [{"id": it["id"], "file_name": f"{it['id']}.png"} for it in items],
                "annotations": [{"image_id": it["id"], "caption": c} for it in items for c in it[lang]]}
        (folder / f"captions_{lang}.json").write_text(json.dumps(data, ensure_ascii=False, indent=0), encoding="utf-8")


# ============================================================================== translation
# German nouns: (singular, gender m/f/n, plural); several entries = synonyms
NOUNS = {
    "cat": [("Katze", "f", "Katzen")], "dog": [("Hund", "m", "Hunde")], "child": [("Kind", "n", "Kinder")],
    "woman": [("Frau", "f", "Frauen")], "man": [("Mann", "m", "Männer")],
    "doctor": [("Arzt", "m", "Ärzte"), ("Doktor", "m", "Doktoren")],
    "car": [("Auto", "n", "Autos"), ("Wagen", "m", "Wagen")], "house": [("Haus", "n", "Häuser")],
    "book": [("Buch", "n", "Bücher")], "apple": [("Apfel", "m", "Äpfel")], "ball": [("Ball", "m", "Bälle")],
    "bicycle": [("Fahrrad", "n", "Fahrräder"), ("Rad", "n", "Räder")],
}
PLURALS_EN = {"cat": "cats", "dog": "dogs", "child": "children", "woman": "women", "man": "men", "doctor": "doctors",
              "car": "cars", "house": "houses", "book": "books", "apple": "apples", "ball": "balls", "bicycle": "bicycles"}
ANIMATE = ("cat", "dog", "child", "woman", "man", "doctor")
THINGS = ("car", "house", "book", "apple", "ball", "bicycle")
INTRANSITIVE = {"sleeps": ["schläft", "pennt"], "runs": ["läuft", "rennt"], "laughs": ["lacht"], "sings": ["singt"],
                "waits": ["wartet"], "works": ["arbeitet"]}
TRANSITIVE = {"sees": ["sieht", "erblickt"], "likes": ["mag", "hat * gern"], "finds": ["findet", "entdeckt"],
              "has": ["hat", "besitzt"], "buys": ["kauft", "erwirbt"]}  # "*" = where the object goes
FIRST_PERSON = {"have": ["habe", "besitze"], "see": ["sehe"], "buy": ["kaufe"], "need": ["brauche", "benötige"]}
ADVERBS = {"today": ["heute"], "now": ["jetzt", "nun"], "again": ["wieder", "erneut"]}
COLOURS_DE = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "black": "schwarz", "white": "weiß"}
PREDICATES = {"beautiful": ["schön", "hübsch"], "fast": ["schnell"], "big": ["groß"], "small": ["klein"],
              "old": ["alt"], "new": ["neu"], "quiet": ["leise", "ruhig"]}
NUMBERS = {"two": "zwei", "three": "drei", "four": "vier", "five": "fünf", "six": "sechs"}
ARTICLES = {("nom", "m"): "der", ("nom", "f"): "die", ("nom", "n"): "das",
            ("acc", "m"): "den", ("acc", "f"): "die", ("acc", "n"): "das"}


def _de_np(noun: str, case: str, colour: Optional[str] = None) -> list[tuple[str, str]]:
    """German definite noun phrases (all synonyms) with their gender; weak adjective ending."""
    out = []
    for lemma, gender, _ in NOUNS[noun]:
        adj = ""
        if colour:
            adj = COLOURS_DE[colour] + ("en" if (case, gender) == ("acc", "m") else "e") + " "
        out.append((f"{ARTICLES[(case, gender)]} {adj}{lemma}", gender))
    return out


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def translation_pair(rng: np.random.Generator) -> tuple[str, list[str]]:
    """One English sentence and ALL its valid German translations (deduplicated, >= 1)."""
    template = int(rng.integers(4))
    if template == 0:  # subject + intransitive verb + adverb; German V2 allows the adverb first
        s, v, adv = rng.choice(ANIMATE), rng.choice(list(INTRANSITIVE)), rng.choice(list(ADVERBS))
        en = f"the {s} {v} {adv}"
        combos = list(itertools.product(_de_np(s, "nom"), INTRANSITIVE[v], ADVERBS[adv]))
        de = [f"{subj} {verb} {a}" for (subj, _), verb, a in combos] + [f"{a} {verb} {subj}" for (subj, _), verb, a in combos]
    elif template == 1:  # subject + transitive verb + (coloured) object
        s = rng.choice(ANIMATE)
        v = rng.choice(list(TRANSITIVE))
        o = rng.choice([x for x in ANIMATE + THINGS if x != s] if v != "buys" else list(THINGS))
        colour = rng.choice(list(COLOURS_DE)) if o in THINGS and rng.random() < 0.6 else None
        en = f"the {s} {v} the {colour + ' ' if colour else ''}{o}"
        de = []
        for (subj, gs), verb, (obj, go) in itertools.product(_de_np(s, "nom"), TRANSITIVE[v], _de_np(o, "acc", colour)):
            verb, _, particle = verb.partition(" * ")  # separable: "hat ... gern"
            particle = f" {particle}" if particle else ""
            de.append(f"{subj} {verb} {obj}{particle}")
            if "m" in (gs, go):  # object first only where the case shows who does what (der / den)
                de.append(f"{obj} {verb} {subj}{particle}")
    elif template == 2:  # I + verb + number + colour + plural noun
        v, num, colour, o = rng.choice(list(FIRST_PERSON)), rng.choice(list(NUMBERS)), rng.choice(list(COLOURS_DE)), rng.choice(THINGS)
        en = f"I {v} {num} {colour} {PLURALS_EN[o]}"
        obj = [f"{NUMBERS[num]} {COLOURS_DE[colour]}e {plural}" for _, _, plural in NOUNS[o]]
        de = [f"ich {verb} {x}" for verb, x in itertools.product(FIRST_PERSON[v], obj)]
        de += [f"{x} {verb} ich" for verb, x in itertools.product(FIRST_PERSON[v], obj)]
    else:  # noun + is + predicate adjective; the adjective may come first (emphasis)
        n, adj = rng.choice(ANIMATE + THINGS), rng.choice(list(PREDICATES))
        en = f"the {n} is {adj}"
        combos = list(itertools.product(_de_np(n, "nom"), PREDICATES[adj]))
        de = [f"{np_} ist {a}" for (np_, _), a in combos] + [f"{a} ist {np_}" for (np_, _), a in combos]
    return _cap(en) + ".", list(dict.fromkeys(_cap(d) + "." for d in de))


def make_translation(
    out_dir="data/synthetic/translation", *, name: str = "synth_en_de", sizes: Sizes = (2000, 100, 100), seed: int = 0,
    overwrite: bool = False, progress: bool = False, only: Optional[Sequence[str]] = None,
) -> dict[str, Path]:
    """Writes `<out_dir>/<name>_<split>.hdf5` and `<out_dir>/<name>_test.multiref.txt` (Ott et al. format).

    Sources are drawn without repetition for test, then val, then a disjoint pool for train; each
    train row is a source from that pool (so a source may repeat) with ONE translation drawn at
    random; val / test items carry every valid translation. `only`: write these splits alone (the
    sources of all splits are drawn as in a full generation, so the files are the same).
    """
    sizes = _sizes(sizes)
    only = _only(sizes, only)
    ott = Path(out_dir) / f"{name}_test.multiref.txt"
    _check_free([split_path(out_dir, name, s) for s in only] + ([ott] if "test" in only else []), overwrite)
    rng = np.random.default_rng([seed, 99])
    pool: dict[str, list[str]] = {}
    n_train_sources = max(1, sizes.get("train", 0) // 2)
    want = sizes.get("test", 0) + sizes.get("val", 0) + n_train_sources
    for _ in range(50 * want):
        src, refs = translation_pair(rng)
        pool.setdefault(src, refs)
        if len(pool) == want:
            break
    else:
        raise RuntimeError(f"the templates give only {len(pool)} different sources, {want} asked for")
    sources = list(pool)
    split_sources = {"test": sources[: sizes.get("test", 0)]}
    split_sources["val"] = sources[len(split_sources["test"]) : len(split_sources["test"]) + sizes.get("val", 0)]
    split_sources["train"] = sources[len(split_sources["test"]) + len(split_sources["val"]) :]
    paths = {}
    for split, count in sizes.items():
        if split not in only:
            continue
        srng = _rng(seed, split)
        path = split_path(out_dir, name, split)
        items = []
        if split == "train":
            for k in range(count):
                s = split_sources["train"][srng.integers(len(split_sources["train"]))]
                items.append({"id": str(k), "source": s, "references": [pool[s][srng.integers(len(pool[s]))]]})
        else:
            items = [{"id": str(k), "source": s, "references": pool[s]} for k, s in enumerate(split_sources[split])]
        with TranslationWriter(path, dataset=name, split=split, src_lang="en", tgt_lang="de", overwrite=overwrite,
                               attrs={"synthetic_seed": seed}) as w:
            for it in _bar(items, len(items), f"{name} {split}", progress):
                w.add(it["id"], it["source"], it["references"])
        paths[split] = path
        if split == "test":
            paths["test_multiref"] = write_ott_multiref(ott, items, overwrite=overwrite)
    return paths
