"""Builds the HDF5 splits of `loramcl.data.hdf5` from what users download, and reads text formats.

Every builder checks its whole input first (files named by the captions exist, every item has a
caption) and only then decodes audio / images, so a bad download fails in seconds with one error
naming the file (and the CSV row / JSON entry). Outputs go to `<out_dir>/<name>_<split>.hdf5`
through the atomic writers (a temporary sibling renamed when complete: an interrupted preparation
leaves nothing under the final name). The command line is `scripts/prepare_data.py`.

Inputs:
- Clotho v2: a folder of audio files and `clotho_captions_<split>.csv` (`file_name,caption_1..5`).
- AudioCaps: `<split>.csv` (`audiocap_id,youtube_id,start_time,caption`, one row per caption, grouped
  per YouTube id) and a folder with one file per clip named `<youtube_id>.<ext>`, `Y<youtube_id>.<ext>`
  (AudioSet style) or `<youtube_id>_<start_time>.<ext>`, ext in wav / flac / ogg / mp3.
  Audio: soundfile reads it, channels are averaged, soxr resamples to 16 kHz (high quality), and clips
  longer than `max_seconds` (Clotho 30 s, AudioCaps 10 s) are cut, counted in `num_truncated`.
- TextCaps JSON (`{"data": [{"image_id", "image_path" / "image_name", "caption_str" or
  "reference_strs"}]}`, one entry per caption or per image) or COCO captions JSON (`{"images":
  [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}`) with an image folder. Images
  are stored as their original bytes.
- Bilingual: two caption files in the same format for the same images (the second one usually a
  translation of the first); `mix_bilingual` replaces a seeded random half of ALL captions by their
  counterpart in the second language (not a split by image order, which would make the language a
  function of the image).
- Translation: plain parallel files (`train.en` / `train.de`, one sentence per line) or the
  multi-reference text of Ott et al. 2018 (fairseq-generate style `S-i`, `T-i`, `R{j}-i` lines).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from loramcl.data.hdf5 import (
    SAMPLE_RATE,
    AudioCaptionWriter,
    DataFormatError,
    ImageCaptionWriter,
    TranslationWriter,
    split_path,
)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SPLIT_ALIASES = {
    "train": "train", "dev": "train", "development": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "eval": "test", "evaluation": "test",
}
MAX_SECONDS = {"clotho": 30.0, "audiocaps": 10.0}  # SPEC 4


def normalise_split(split: str) -> str:
    if split not in SPLIT_ALIASES:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLIT_ALIASES)}")
    return SPLIT_ALIASES[split]


def _bar(iterable, total: Optional[int], desc: str, progress: bool):
    return tqdm(iterable, total=total, desc=desc, unit="item", disable=not progress, dynamic_ncols=True)


# ==================================================================================== audio
def load_audio(path, *, max_seconds: Optional[float] = None) -> tuple[np.ndarray, bool]:
    """Read an audio file as 16 kHz mono float32; returns (audio, was_truncated).

    Channels are averaged; the length is exactly round(frames * 16000 / rate) (cut to
    `max_seconds` first: only that much is read from disk).
    """
    import soundfile as sf
    import soxr

    try:
        info = sf.info(str(path))
        frames = info.frames
        keep = frames if not max_seconds else min(frames, int(round(max_seconds * info.samplerate)))
        data, rate = sf.read(str(path), frames=keep, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise DataFormatError(f"cannot read audio file {path}: {err}") from None
    if data.shape[0] == 0:
        raise DataFormatError(f"audio file {path} holds no samples")
    mono = data.mean(axis=1, dtype=np.float32)
    target = int(round(data.shape[0] * SAMPLE_RATE / rate))
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
        mono = np.pad(mono, (0, max(0, target - mono.size)))[:target]  # soxr may differ by a sample
    return mono, keep < frames


def _index_audio_folder(audio_dir: Path) -> dict[str, Path]:
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"audio folder {audio_dir} not found")
    return {p.name: p for p in audio_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS}


def _write_audio(items, out_path: Path, *, dataset, split, max_seconds, overwrite, progress) -> Path:
    """items: list of (file_name, audio_path, captions)."""
    with AudioCaptionWriter(out_path, dataset=dataset, split=split, max_seconds=max_seconds, overwrite=overwrite) as w:
        for name, audio_path, captions in _bar(items, len(items), f"{dataset} {split}", progress):
            audio, cut = load_audio(audio_path, max_seconds=max_seconds)
            w.add(name, audio, captions, truncated=cut)
    return out_path


def read_clotho_csv(path) -> list[tuple[str, list[str]]]:
    """Rows (file_name, non-empty captions) of a Clotho caption CSV; a row without caption is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Clotho caption file {path} not found")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c for c in (reader.fieldnames or []) if c.startswith("caption")]
        if "file_name" not in (reader.fieldnames or []) or not cols:
            raise DataFormatError(f"{path}: expected columns file_name,caption_1,...,caption_5, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            caps = [row[c].strip() for c in cols if row.get(c) and row[c].strip()]
            if not caps:
                raise DataFormatError(f"{path} line {line}: clip {row['file_name']!r} has no caption")
            rows.append((row["file_name"], caps))
    return rows


def prepare_clotho(
    audio_dir, captions_csv, out_dir, *, split: str, name: str = "clotho", max_seconds: Optional[float] = 30.0,
    overwrite: bool = False, progress: bool = False,
) -> Path:
    """Clotho split (audio folder + caption CSV) -> `<out_dir>/<name>_<split>.hdf5`."""
    split = normalise_split(split)
    out_path = split_path(out_dir, name, split)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    rows = read_clotho_csv(captions_csv)
    files = _index_audio_folder(Path(audio_dir))
    missing = [(line, f) for line, (f, _) in enumerate(rows, start=2) if f not in files]
    if missing:
        line, f = missing[0]
        raise FileNotFoundError(f"{captions_csv} line {line} names audio file {f!r}, not found in {audio_dir}"
                                + (f" ({len(missing)} rows miss their audio)" if len(missing) > 1 else ""))
    items = [(f, files[f], caps) for f, caps in rows]
    return _write_audio(items, out_path, dataset=name, split=split, max_seconds=max_seconds, overwrite=overwrite, progress=progress)


def clotho_layout(root, split: str) -> tuple[Path, Path]:
    """(audio folder, caption CSV) of a split in an extracted Clotho v2 download under `root`."""
    root = Path(root)
    long = {"train": "development", "val": "validation", "test": "evaluation"}[normalise_split(split)]
    csv_path = root / f"clotho_captions_{long}.csv"
    for folder in (root / long, root / f"clotho_audio_{long}", root / "audio" / long):
        if folder.is_dir():
            return folder, csv_path
    raise FileNotFoundError(f"no audio folder for Clotho split {long!r} under {root} "
                            f"(looked for {long}/, clotho_audio_{long}/, audio/{long}/)")


def read_audiocaps_csv(path) -> "OrderedDict[str, tuple[str, list[str]]]":
    """{youtube_id: (start_time, captions)} from an AudioCaps CSV (one row per caption)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AudioCaps caption file {path} not found")
    clips: OrderedDict[str, tuple[str, list[str]]] = OrderedDict()
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        need = {"youtube_id", "start_time", "caption"}
        if not need <= set(reader.fieldnames or []):
            raise DataFormatError(f"{path}: expected columns audiocap_id,youtube_id,start_time,caption, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            yid = row["youtube_id"].strip()
            start, caps = clips.setdefault(yid, (row["start_time"].strip(), []))
            if (row["caption"] or "").strip():
                caps.append(row["caption"].strip())
    for yid, (_, caps) in clips.items():
        if not caps:
            raise DataFormatError(f"{path}: clip {yid!r} has no caption")
    return clips


def _audiocaps_file(files: dict[str, Path], yid: str, start: str) -> Optional[Path]:
    start_int = str(int(float(start))) if start else ""
    for stem in (yid, f"Y{yid}", f"{yid}_{start_int}", f"{yid}_{start}", f"Y{yid}_{start_int}"):
        for ext in AUDIO_EXTENSIONS:
            if stem + ext in files:
                return files[stem + ext]
    return None


def prepare_audiocaps(
    audio_dir, csv_path, out_dir, *, split: str, name: str = "audiocaps", max_seconds: Optional[float] = 10.0,
    skip_missing: bool = False, overwrite: bool = False, progress: bool = False,
) -> Path:
    """AudioCaps split (CSV + audio folder) -> HDF5. `skip_missing` drops clips whose audio is absent
    (YouTube downloads are always incomplete) instead of failing; the count is printed."""
    split = normalise_split(split)
    out_path = split_path(out_dir, name, split)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    clips = read_audiocaps_csv(csv_path)
    files = _index_audio_folder(Path(audio_dir))
    items, missing = [], []
    for yid, (start, caps) in clips.items():
        path = _audiocaps_file(files, yid, start)
        (items.append((yid, path, caps)) if path else missing.append(yid))
    if missing and not skip_missing:
        raise FileNotFoundError(f"{csv_path}: audio of clip {missing[0]!r} not found in {audio_dir} (expected "
                                f"{missing[0]}.wav, Y{missing[0]}.wav or {missing[0]}_<start>.wav); {len(missing)} of "
                                f"{len(clips)} clips miss their audio (pass skip_missing / --skip-missing to drop them)")
    if missing:
        print(f"skipped {len(missing)} of {len(clips)} clips whose audio is missing from {audio_dir}")
    if not items:
        raise FileNotFoundError(f"{csv_path}: none of the {len(clips)} clips has its audio in {audio_dir}")
    return _write_audio(items, out_path, dataset=name, split=split, max_seconds=max_seconds, overwrite=overwrite, progress=progress)


# =================================================================================== images
def read_caption_json(path, fmt: str = "auto") -> "OrderedDict[str, tuple[str, list[str]]]":
    """{image_id: (image file reference, captions)} from a COCO or TextCaps caption JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} not found")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if fmt == "auto":
        fmt = "coco" if isinstance(data, dict) and "annotations" in data else "textcaps"
    images: OrderedDict[str, tuple[str, list[str]]] = OrderedDict()
    if fmt == "coco":
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DataFormatError(f"{path}: a COCO caption file needs 'images' and 'annotations'")
        for img in data["images"]:
            images[str(img["id"])] = (img["file_name"], [])
        for k, ann in enumerate(data["annotations"]):
            key = str(ann["image_id"])
            if key not in images:
                raise DataFormatError(f"{path}: annotation {k} refers to image_id {key!r}, absent from 'images'")
            if str(ann.get("caption", "")).strip():
                images[key][1].append(str(ann["caption"]).strip())
    elif fmt == "textcaps":
        entries = data["data"] if isinstance(data, dict) and "data" in data else None
        if not isinstance(entries, list):
            raise DataFormatError(f"{path}: a TextCaps caption file needs a 'data' list")
        refs: dict[str, list[str]] = {}
        for e in entries:
            key = str(e["image_id"])
            ref = e.get("image_path") or e.get("image_name") or key
            images.setdefault(key, (ref, []))
            if str(e.get("caption_str") or "").strip():
                images[key][1].append(str(e["caption_str"]).strip())
            refs.setdefault(key, [str(r).strip() for r in e.get("reference_strs") or [] if str(r).strip()])
        for key, (_, caps) in images.items():  # entries without caption_str: use the image's references
            if not caps:
                caps.extend(refs.get(key, []))
    else:
        raise ValueError(f"unknown caption format {fmt!r} (coco, textcaps or auto)")
    for key, (_, caps) in images.items():
        if not caps:
            raise DataFormatError(f"{path}: image {key!r} has no caption")
    return images


def _image_file(image_dir: Path, ref: str, image_id: str) -> Optional[Path]:
    ref_path = Path(ref)
    candidates = [image_dir / ref_path, image_dir / ref_path.name]
    if not ref_path.suffix:
        candidates += [image_dir / f"{ref}{ext}" for ext in (".jpg", ".png", ".jpeg")]
    candidates += [image_dir / f"{image_id}{ext}" for ext in (".jpg", ".png", ".jpeg")]
    return next((c for c in candidates if c.is_file()), None)


def _resolve_images(image_dir, images, captions_json) -> dict[str, Path]:
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} not found")
    files, missing = {}, []
    for key, (ref, _) in images.items():
        found = _image_file(image_dir, ref, key)
        (missing.append((key, ref)) if found is None else files.__setitem__(key, found))
    if missing:
        key, ref = missing[0]
        raise FileNotFoundError(f"{captions_json}: image {key!r} ({ref}) not found in {image_dir}"
                                + (f" ({len(missing)} images missing)" if len(missing) > 1 else ""))
    return files


def _read_image_bytes(path: Path) -> bytes:
    from PIL import Image

    raw = path.read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
    except Exception as err:
        raise DataFormatError(f"image file {path} cannot be decoded: {err}") from None
    return raw


def prepare_images(
    image_dir, captions_json, out_dir, *, split: str, name: str, fmt: str = "auto", language: str = "en",
    overwrite: bool = False, progress: bool = False,
) -> Path:
    """TextCaps / COCO split (image folder + caption JSON) -> HDF5 with the original image bytes."""
    split = normalise_split(split)
    out_path = split_path(out_dir, name, split)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    images = read_caption_json(captions_json, fmt)
    files = _resolve_images(image_dir, images, captions_json)
    with ImageCaptionWriter(out_path, dataset=name, split=split, language=language, overwrite=overwrite) as w:
        for key, (_, caps) in _bar(images.items(), len(images), f"{name} {split}", progress):
            w.add(key, _read_image_bytes(files[key]), caps)
    return out_path


def mix_bilingual(
    primary: Sequence[Sequence[str]], secondary: Sequence[Optional[Sequence[str]]], *, fraction: float = 0.5, seed: int = 0
) -> list[list[bool]]:
    """Which caption slots take the second language: True at (i, j) = use secondary[i][j].

    A slot (image i, caption j) can switch when the second file has a caption j for image i. Exactly
    round(fraction * number of slots) slots are drawn uniformly at random over ALL slots (capped by the
    switchable ones), so the language is independent of the image and of its position in the file,
    and the per-image share varies. Deterministic for a seed.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    slots = [(i, j) for i, caps in enumerate(primary) for j in range(len(caps))]
    switchable = [k for k, (i, j) in enumerate(slots) if secondary[i] is not None and j < len(secondary[i])]
    want = min(int(round(fraction * len(slots))), len(switchable))
    chosen = np.random.default_rng(seed).choice(len(switchable), size=want, replace=False)
    mask = [[False] * len(caps) for caps in primary]
    for c in chosen:
        i, j = slots[switchable[c]]
        mask[i][j] = True
    return mask


def prepare_bilingual(
    image_dir, captions_json, second_json, out_dir, *, split: str, name: str, fmt: str = "auto",
    languages: tuple[str, str] = ("en", "fr"), fraction: float = 0.5, seed: int = 0,
    overwrite: bool = False, progress: bool = False,
) -> Path:
    """Images + captions in two languages -> one HDF5 where a random `fraction` of ALL captions (a seeded
    draw over captions, never over images) comes from `second_json`; `caption_language` records it."""
    split = normalise_split(split)
    out_path = split_path(out_dir, name, split)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    first, second = read_caption_json(captions_json, fmt), read_caption_json(second_json, fmt)
    unknown = [k for k in second if k not in first]
    if unknown:
        raise DataFormatError(f"{second_json}: image {unknown[0]!r} is not in {captions_json} ({len(unknown)} such images)")
    keys = list(first)
    mask = mix_bilingual([first[k][1] for k in keys], [second[k][1] if k in second else None for k in keys],
                         fraction=fraction, seed=seed)
    files = _resolve_images(image_dir, first, captions_json)
    with ImageCaptionWriter(out_path, dataset=name, split=split, language=languages[0], overwrite=overwrite,
                            attrs={"second_language_fraction": fraction, "mix_seed": seed}) as w:
        for key, m in _bar(zip(keys, mask), len(keys), f"{name} {split}", progress):
            caps = [second[key][1][j] if use else c for j, (c, use) in enumerate(zip(first[key][1], m))]
            w.add(key, _read_image_bytes(files[key]), caps, [languages[1] if use else languages[0] for use in m])
    return out_path


# ============================================================================== translation
def read_parallel(src_path, tgt_path, *, skip_empty: bool = False) -> list[tuple[str, str]]:
    """Pairs of a plain parallel corpus (one sentence per line in each file, same line count)."""
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    for p in (src_path, tgt_path):
        if not p.is_file():
            raise FileNotFoundError(f"parallel text file {p} not found")
    src = src_path.read_text(encoding="utf-8").splitlines()
    tgt = tgt_path.read_text(encoding="utf-8").splitlines()
    if len(src) != len(tgt):
        raise DataFormatError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: not a parallel corpus")
    pairs = []
    for line, (s, t) in enumerate(zip(src, tgt), start=1):
        if not s.strip() or not t.strip():
            if skip_empty:
                continue
            empty = src_path if not s.strip() else tgt_path
            raise DataFormatError(f"{empty} line {line} is empty (pass skip_empty / --skip-empty to drop such pairs)")
        pairs.append((s.strip(), t.strip()))
    return pairs


_OTT_LINE = re.compile(r"^([A-Z])(\d*)-(\d+)\t(.*)$")


def read_ott_multiref(path) -> list[dict]:
    """Items {"id", "source", "references"} of a multi-reference file in the Ott et al. 2018 format.

    Lines `S-i<TAB>source`, `T-i<TAB>target` (the original reference) and `R{j}-i<TAB>reference j`;
    references = [T] + R by increasing j. Other fairseq-generate lines (H-, D-, P-, ...) are ignored.
    Items come back sorted by id i.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"multi-reference file {path} not found")
    sources: dict[int, str] = {}
    refs: dict[int, list[tuple[int, str]]] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            m = _OTT_LINE.match(line)
            if not m:
                raise DataFormatError(f"{path} line {line_no}: expected 'S-i', 'T-i' or 'R<j>-i' then a TAB, got {line[:60]!r}")
            tag, j, i, text = m.group(1), m.group(2), int(m.group(3)), m.group(4).strip()
            if tag == "S":
                if i in sources:
                    raise DataFormatError(f"{path} line {line_no}: second source for id {i}")
                sources[i] = text
            elif tag in ("T", "R"):
                order = -1 if tag == "T" else int(j or 0)
                if text:
                    refs.setdefault(i, []).append((order, text))
    for i in refs:
        if i not in sources:
            raise DataFormatError(f"{path}: id {i} has references but no 'S-{i}' source line")
    items = []
    for i in sorted(sources):
        if not refs.get(i):
            raise DataFormatError(f"{path}: source {i} ({sources[i][:40]!r}) has no reference")
        items.append({"id": str(i), "source": sources[i], "references": [t for _, t in sorted(refs[i], key=lambda r: r[0])]})
    return items


def write_ott_multiref(path, items: Iterable[dict], overwrite: bool = True) -> Path:
    """Inverse of `read_ott_multiref`: `S-i`, `T-i` (first reference), `R1-i`.. (the others).

    Written to a temporary sibling, then renamed; without `overwrite` an existing file is kept
    (FileExistsError)."""
    from loramcl.utils.atomic import write_text_atomic

    path = Path(path)
    lines = []
    for k, item in enumerate(items):
        i = item.get("id", k)
        lines.append(f"S-{i}\t{item['source']}")
        refs = list(item["references"])
        lines.append(f"T-{i}\t{refs[0]}")
        lines.extend(f"R{j}-{i}\t{r}" for j, r in enumerate(refs[1:], start=1))
    if not write_text_atomic(path, "\n".join(lines) + "\n", overwrite=overwrite):
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    return path


def prepare_translation(
    out_dir, *, split: str, name: str, src_lang: str = "en", tgt_lang: str = "de", src=None, tgt=None, ott=None,
    group: bool = False, skip_empty: bool = False, overwrite: bool = False, progress: bool = False,
) -> Path:
    """Parallel files (`src`, `tgt`) or an Ott et al. multi-reference file (`ott`) -> HDF5.

    With `group`, identical sources of a parallel corpus become one item with all their targets.
    """
    split = normalise_split(split)
    out_path = split_path(out_dir, name, split)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if (ott is None) == (src is None or tgt is None):
        raise ValueError("give either src and tgt (parallel files) or ott (multi-reference file)")
    if ott is not None:
        items = [(d["id"], d["source"], d["references"]) for d in read_ott_multiref(ott)]
    else:
        pairs = read_parallel(src, tgt, skip_empty=skip_empty)
        if group:
            grouped: OrderedDict[str, list[str]] = OrderedDict()
            for s, t in pairs:
                grouped.setdefault(s, []).append(t)
            items = [(str(k), s, refs) for k, (s, refs) in enumerate(grouped.items())]
        else:
            items = [(str(k), s, [t]) for k, (s, t) in enumerate(pairs)]
    with TranslationWriter(out_path, dataset=name, split=split, src_lang=src_lang, tgt_lang=tgt_lang, overwrite=overwrite) as w:
        for item_id, s, refs in _bar(items, len(items), f"{name} {split}", progress):
            w.add(item_id, s, refs)
    return out_path


# ==================================================================================== manifests
def read_manifest(manifest, path_field: str = "path", caption_field="captions") -> list[tuple[str, Path, list[str]]]:
    """(id, file, captions) of every row of a CSV / JSON Lines manifest, every row checked first (one
    line naming file, line and field: a missing field, no caption, a file that does not exist).
    Relative paths are read from the manifest's folder; captions: one field holding a string or a
    list (a CSV cell may hold a JSON list), or several fields (CSV columns caption_1..caption_5)."""
    from loramcl.data.rows import TextSchema, _csv_rows, _json_rows, file_format

    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    kind = file_format(manifest)
    if kind == "parquet":
        raise ValueError(f"manifest {manifest}: give a CSV or JSON Lines file")
    schema = TextSchema(path_field, caption_field, None, "{" + path_field + "}")
    rows = _json_rows(manifest) if kind == "json" else _csv_rows(manifest)
    items, seen = [], set()
    for i, (where, row) in enumerate(rows):
        item = schema.item(row, where, i, csv_cells=kind == "csv")
        file = Path(item["source"]).expanduser()
        file = file if file.is_absolute() else manifest.parent / file
        if not file.is_file():
            raise FileNotFoundError(f"{where}: field {path_field!r}: {item['source']} does not exist"
                                    + (f" (read from {manifest.parent})" if not Path(item["source"]).is_absolute() else ""))
        if item["source"] in seen:
            raise DataFormatError(f"{where}: field {path_field!r}: {item['source']} is listed twice")
        seen.add(item["source"])
        items.append((item["source"], file, item["references"]))
    if not items:
        raise DataFormatError(f"manifest {manifest} holds no rows")
    return items


def prepare_manifest(manifest, out_dir, *, kind: str, split: str, name: str, path_field: str = "path",
                     caption_field="captions", max_seconds: Optional[float] = None, language: str = "en",
                     overwrite: bool = False, progress: bool = False) -> Path:
    """Audio clips or images listed in a manifest (CSV / JSON Lines: a file path and its captions per
    row) -> the audio- or image-captioning HDF5 layout, so that data=clotho / textcaps style configs
    (and every evaluation) read it. Every row and file is checked before anything is written."""
    if kind not in ("audio", "image"):
        raise ValueError(f"kind must be audio or image, got {kind!r}")
    split = normalise_split(split)
    out_path = split_path(out_dir, name, split)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    items = read_manifest(manifest, path_field, caption_field)
    if kind == "audio":
        return _write_audio(items, out_path, dataset=name, split=split, max_seconds=max_seconds,
                            overwrite=overwrite, progress=progress)
    with ImageCaptionWriter(out_path, dataset=name, split=split, language=language, overwrite=overwrite) as w:
        for key, file, caps in _bar(items, len(items), f"{name} {split}", progress):
            w.add(key, _read_image_bytes(file), caps)
    return out_path
