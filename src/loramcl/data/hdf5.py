"""HDF5 layouts of the three tasks: writers (atomic, no silent overwrite) and validating readers.

One file per split: `<root>/<name>_<split>.hdf5`, split in `train` / `val` / `test` (Clotho
development -> train, validation -> val, evaluation -> test; TextCaps val is used as test).
Strings are UTF-8 (`h5py.string_dtype()`); `(N, C)` text tables are padded with "" and come with a
count column, so an item may carry any number of captions / references (AudioCaps train has one
caption per clip, Clotho five, COCO five to seven).

Root attributes of every file:
    kind             "audio_caption" | "image_caption" | "translation"
    format_version   1 (FORMAT_VERSION)
    dataset          source name, e.g. "clotho", "audiocaps", "textcaps", "synth_audio"
    split            "train" | "val" | "test"
    num_items        N

Audio captioning (kind "audio_caption"; Clotho, AudioCaps):
    audio            float32 (S,)     every clip, 16 kHz mono, concatenated in item order
    audio_offsets    int64 (N + 1,)   clip i = audio[audio_offsets[i]:audio_offsets[i + 1]]
    file_name        str (N,)         the clip's id (its original file name / YouTube id)
    captions         str (N, C)       captions of clip i = captions[i, :caption_count[i]]
    caption_count    int32 (N,)       >= 1
    attrs            sample_rate = 16000, max_seconds (0 = no limit; clips longer were cut at
                     preparation), num_truncated (how many were cut)

Image captioning (kind "image_caption"; TextCaps, COCO, the bilingual set):
    image            vlen uint8 (N,)  the encoded file as downloaded (PNG / JPEG bytes)
    image_id         str (N,)
    captions         str (N, C), caption_count int32 (N,)   as above
    caption_language str (N, C)       optional: "en" / "fr" per caption (the bilingual set)
    attrs            language: the language of every caption when caption_language is absent

Translation (kind "translation"):
    id               str (N,)
    source           str (N,)
    references       str (N, R)       references of item i = references[i, :reference_count[i]]
    reference_count  int32 (N,)       1 per row for train, several for a multi-reference test set
    attrs            src_lang, tgt_lang

Other datasets may sit next to these (the synthetic sets add `events` / `shapes`, their ground
truth as JSON per item); readers ignore them.

Writers (`AudioCaptionWriter`, `ImageCaptionWriter`, `TranslationWriter`, used as context
managers) write to a temporary sibling `<file>.partial-<host>-<pid>-<random>` and rename it on
success (`loramcl.utils.atomic`): an interrupted preparation leaves nothing under the final name,
and the next one removes the partial file of the dead process. `num_items` is written last, so a
file without it is incomplete and refused by the readers. An existing file is replaced only with
`overwrite=True`; without it a file that a concurrent writer finished first is kept, never clobbered. Readers (`AudioCaptionH5`, `ImageCaptionH5`, `TranslationH5`) are torch
`Dataset`s of plain python / numpy items; they validate the whole layout when constructed (missing
file, corrupt file, wrong kind, missing dataset, item without caption, wrong sample rate) and only
then read lazily, one handle per worker process. `check_split_files` runs the same checks on every
split of a dataset in milliseconds, so a training run fails before it loads any model.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import h5py
import numpy as np
from torch.utils.data import Dataset

from loramcl.utils.atomic import discard, partial_path, publish, remove_stale_partials

FORMAT_VERSION = 1
SAMPLE_RATE = 16000  # what Qwen2-Audio's Whisper feature extractor expects (SPEC 4)
SPLITS = ("train", "val", "test")
KINDS = ("audio_caption", "image_caption", "translation")
STR = h5py.string_dtype("utf-8")
PREPARE_HINTS = {
    "audio_caption": "python scripts/prepare_data.py clotho|audiocaps|synthetic-audio ...",
    "image_caption": "python scripts/prepare_data.py textcaps|coco|bilingual|synthetic-shapes ...",
    "translation": "python scripts/prepare_data.py translation|synthetic-translation ...",
    None: "python scripts/prepare_data.py ...",
}


class DataFormatError(ValueError):
    """A data file exists but does not hold what the layout requires (the message names it)."""


def split_path(root: str | os.PathLike, name: str, split: str) -> Path:
    """`<root>/<name>_<split>.hdf5`."""
    return Path(root) / f"{name}_{split}.hdf5"


def split_items(root: str | os.PathLike, name: str, split: str) -> Optional[int]:
    """The item count a split file records (`num_items`), or None when it is absent or unreadable."""
    path = split_path(root, name, split)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs["num_items"])
    except (OSError, KeyError, ValueError, TypeError):  # validated, and reported, by check_split_files
        return None


def human_size(num_bytes: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "kB", "MB"):
        if num_bytes < 1000:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} GB"


# ================================================================================= writers
class _Writer:
    """Atomic HDF5 writer: items go to `<name>.partial-<host>-<pid>-<random>` next to `path`, renamed on close."""

    kind: str

    def __init__(self, path, *, dataset: str, split: str, overwrite: bool = False, attrs: Optional[dict] = None):
        self.path = Path(path)
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.path)  # those of interrupted preparations (one log line each)
        # a sibling in the same folder (same file system: the final rename is atomic); "w-" refuses
        # to clobber anything, and unlike mkstemp the file gets the usual umask permissions
        self.done = True  # until the file exists (__del__ after a failed open)
        self.tmp_path = partial_path(self.path)
        self.h5 = h5py.File(self.tmp_path, "w-")
        self.done = False
        self.h5.attrs.update(kind=self.kind, format_version=FORMAT_VERSION, dataset=dataset, split=split)
        self.h5.attrs.update(attrs or {})
        self.ids: list[str] = []
        self.texts: list[list[str]] = []  # captions / references per item

    def __len__(self) -> int:
        return len(self.ids)

    def _add_texts(self, item_id: str, texts: Sequence[str], what: str = "caption") -> None:
        texts = [str(t) for t in texts]
        if not texts:
            raise DataFormatError(f"{self.path}: item {len(self.ids)} (id {item_id!r}) has no {what}")
        for j, t in enumerate(texts):
            if not t.strip():
                raise DataFormatError(f"{self.path}: {what} {j} of item {len(self.ids)} (id {item_id!r}) is empty")
        self.ids.append(str(item_id))
        self.texts.append(texts)

    def _finish(self) -> None:
        """Write the per-item tables (subclasses add theirs first)."""

    def close(self) -> Path:
        """Write the tables, close, and move the file to its final name. Returns that name."""
        if self.done:
            return self.path
        try:
            if not self.ids:
                raise DataFormatError(f"{self.path}: no items were written")
            self._finish()
            self.h5.attrs["num_items"] = len(self.ids)  # last: the completion marker
            self.h5.close()
            if not publish(self.tmp_path, self.path, self.overwrite):  # a concurrent writer finished first
                raise FileExistsError(f"{self.path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        except BaseException:
            self.abort()
            raise
        self.done = True
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the final name is never touched."""
        self.done = True
        try:
            self.h5.close()
        finally:
            discard(self.tmp_path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):  # forgotten writer (no `with`, no close): leave no temporary file behind
        if not getattr(self, "done", True):
            self.abort()


def _text_table(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    table = np.full((len(rows), width), "", dtype=object)
    for i, r in enumerate(rows):
        table[i, : len(r)] = r
    return table, np.array([len(r) for r in rows], dtype=np.int32)


class AudioCaptionWriter(_Writer):
    """Streams clips (16 kHz mono float32) and their captions into the audio-captioning layout.

        with AudioCaptionWriter("data/clotho/clotho_train.hdf5", dataset="clotho", split="train",
                                max_seconds=30) as w:
            w.add("a.wav", audio, ["caption 1", ..., "caption 5"])

    `max_seconds` only records the limit the caller applied (`prepare.load_audio` applies it);
    `truncated=True` in `add` counts a clip that was cut.
    """

    kind = "audio_caption"
    CHUNK = 1 << 17  # samples per HDF5 chunk (512 kB), about 8 s of audio

    def __init__(self, path, *, dataset: str, split: str, max_seconds: Optional[float] = None, overwrite: bool = False, attrs=None):
        super().__init__(path, dataset=dataset, split=split, overwrite=overwrite, attrs=attrs)
        self.h5.attrs.update(sample_rate=SAMPLE_RATE, max_seconds=float(max_seconds or 0))
        self.audio = self.h5.create_dataset("audio", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(self.CHUNK,))
        self.offsets = [0]
        self.num_truncated = 0

    def add(self, file_name: str, audio: np.ndarray, captions: Sequence[str], truncated: bool = False) -> None:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise DataFormatError(f"{self.path}: clip {file_name!r} must be non-empty mono audio (1-D), got shape {audio.shape}")
        if not np.isfinite(audio).all():
            raise DataFormatError(f"{self.path}: clip {file_name!r} contains NaN or inf samples")
        self._add_texts(file_name, captions)
        start = self.offsets[-1]
        self.audio.resize((start + audio.size,))
        self.audio[start:] = audio
        self.offsets.append(start + audio.size)
        self.num_truncated += bool(truncated)

    def _finish(self) -> None:
        captions, count = _text_table(self.texts)
        self.h5.create_dataset("audio_offsets", data=np.array(self.offsets, dtype=np.int64))
        self.h5.create_dataset("file_name", data=np.array(self.ids, dtype=object), dtype=STR)
        self.h5.create_dataset("captions", data=captions, dtype=STR)
        self.h5.create_dataset("caption_count", data=count)
        self.h5.attrs["num_truncated"] = self.num_truncated


class ImageCaptionWriter(_Writer):
    """Streams encoded images (PNG / JPEG bytes, stored as is) and captions into the image layout.

    `languages` (one code per caption) is stored as `caption_language` when any item gives it;
    otherwise every caption is in `language` (root attribute).
    """

    kind = "image_caption"
    FLUSH = 256  # images buffered per write

    def __init__(self, path, *, dataset: str, split: str, language: str = "en", overwrite: bool = False, attrs=None):
        super().__init__(path, dataset=dataset, split=split, overwrite=overwrite, attrs=attrs)
        self.h5.attrs["language"] = language
        self.language = language
        self.images = self.h5.create_dataset("image", shape=(0,), maxshape=(None,), dtype=h5py.vlen_dtype(np.uint8), chunks=(64,))
        self.buffer: list[np.ndarray] = []
        self.languages: list[Optional[list[str]]] = []

    def add(self, image_id, image_bytes: bytes, captions: Sequence[str], languages: Optional[Sequence[str]] = None) -> None:
        if not image_bytes:
            raise DataFormatError(f"{self.path}: image {image_id!r} is empty (0 bytes)")
        if languages is not None and len(languages) != len(captions):
            raise DataFormatError(f"{self.path}: image {image_id!r} has {len(captions)} captions but {len(languages)} languages")
        self._add_texts(str(image_id), captions)
        self.languages.append(None if languages is None else [str(x) for x in languages])
        self.buffer.append(np.frombuffer(bytes(image_bytes), dtype=np.uint8))
        if len(self.buffer) >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        start = self.images.shape[0]
        self.images.resize((start + len(self.buffer),))
        for k, b in enumerate(self.buffer):  # one by one: h5py turns equal-length arrays into a 2-D block
            self.images[start + k] = b
        self.buffer = []

    def _finish(self) -> None:
        self._flush()
        captions, count = _text_table(self.texts)
        self.h5.create_dataset("image_id", data=np.array(self.ids, dtype=object), dtype=STR)
        self.h5.create_dataset("captions", data=captions, dtype=STR)
        self.h5.create_dataset("caption_count", data=count)
        if any(lang is not None for lang in self.languages):
            rows = [lang if lang is not None else [self.language] * len(t) for lang, t in zip(self.languages, self.texts)]
            self.h5.create_dataset("caption_language", data=_text_table(rows)[0], dtype=STR)


class TranslationWriter(_Writer):
    """Parallel text: one source and its references (one per training row, several for a test set)."""

    kind = "translation"

    def __init__(self, path, *, dataset: str, split: str, src_lang: str, tgt_lang: str, overwrite: bool = False, attrs=None):
        super().__init__(path, dataset=dataset, split=split, overwrite=overwrite, attrs=attrs)
        self.h5.attrs.update(src_lang=src_lang, tgt_lang=tgt_lang)
        self.sources: list[str] = []

    def add(self, item_id, source: str, references: Sequence[str]) -> None:
        if not str(source).strip():
            raise DataFormatError(f"{self.path}: item {len(self.ids)} (id {item_id!r}) has an empty source")
        self._add_texts(str(item_id), references, what="reference")
        self.sources.append(str(source))

    def _finish(self) -> None:
        refs, count = _text_table(self.texts)
        self.h5.create_dataset("id", data=np.array(self.ids, dtype=object), dtype=STR)
        self.h5.create_dataset("source", data=np.array(self.sources, dtype=object), dtype=STR)
        self.h5.create_dataset("references", data=refs, dtype=STR)
        self.h5.create_dataset("reference_count", data=count)


# ================================================================================= readers
def open_h5(path, prepare_hint: Optional[str] = None) -> h5py.File:
    """Open an HDF5 file read-only, with one clear error for a missing or unreadable file."""
    path = Path(path)
    hint = prepare_hint or PREPARE_HINTS[None]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; prepare it with: {hint}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataFormatError(
            f"{path} is not a readable HDF5 file (corrupt or truncated: {err}); delete it and prepare it again with: {hint}"
        ) from None


class _Reader(Dataset):
    """Validates the whole file on construction; then `ids` (item ids), `texts` (captions or references
    per item) and `attrs` are in memory, audio / images are read lazily per item."""

    kind: str
    required: tuple[str, ...]
    id_name: str
    text_name, count_name, text_what = "captions", "caption_count", "caption"

    def __init__(self, path, *, split: Optional[str] = None, prepare_hint: Optional[str] = None):
        self.path = Path(path)
        self.prepare_hint = prepare_hint or PREPARE_HINTS[self.kind]
        self._h5: Optional[h5py.File] = None
        self._pid: Optional[int] = None
        with open_h5(self.path, self.prepare_hint) as f:
            try:
                self._check_header(f, split)
                self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
                self.ids = list(f[self.id_name].asstr()[()])
                self.texts = self._read_texts(f)
                self._load(f)
            except (OSError, KeyError, RuntimeError) as err:  # damage below the superblock
                raise DataFormatError(f"{self.path} is not a readable HDF5 file (corrupt or truncated: {err}); "
                                      f"delete it and prepare it again with: {self.prepare_hint}") from None

    @classmethod
    def from_split(cls, root, name: str, split: str, prepare_hint: Optional[str] = None):
        """Reader of `<root>/<name>_<split>.hdf5`; a missing file names the split and the command."""
        path = split_path(root, name, split)
        if not path.is_file():
            raise FileNotFoundError(f"split {split!r} of dataset {name!r} not found: {path} does not exist; "
                                    f"prepare it with: {prepare_hint or PREPARE_HINTS[cls.kind]}")
        return cls(path, split=split, prepare_hint=prepare_hint)

    # ---------------------------------------------------------------- validation
    def _fail(self, msg: str):
        raise DataFormatError(f"{self.path}: {msg}")

    def _item(self, i: int) -> str:
        return f"item {i} (id {self.ids[i]!r})" if hasattr(self, "ids") else f"item {i}"

    def _check_header(self, f: h5py.File, split: Optional[str]) -> None:
        kind = f.attrs.get("kind")
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind != self.kind:
            self._fail(f"holds {kind or 'no loramcl layout'!r} data, expected {self.kind!r} "
                       f"(was it written by loramcl.data? prepare it with: {self.prepare_hint})")
        version = int(f.attrs.get("format_version", -1))
        if not 1 <= version <= FORMAT_VERSION:
            self._fail(f"format_version {version} is not supported (this code reads 1..{FORMAT_VERSION}); "
                       f"prepare it again with: {self.prepare_hint}")
        missing = [name for name in self.required if name not in f]
        if missing:
            self._fail(f"dataset(s) {', '.join(map(repr, missing))} missing (has {sorted(f.keys())}); "
                       f"prepare it again with: {self.prepare_hint}")
        if split is not None and f.attrs.get("split") != split:
            self._fail(f"holds split {f.attrs.get('split')!r}, expected {split!r}")
        n = len(f[self.id_name])
        if n == 0:
            self._fail("contains no items")
        if "num_items" not in f.attrs:  # the writers set it last
            self._fail(f"the file is incomplete (no num_items attribute, which is written last: an interrupted "
                       f"preparation?); delete it and prepare it again with: {self.prepare_hint}")
        for name in self.required:
            if name not in ("audio", "audio_offsets") and f[name].shape[0] != n:
                self._fail(f"dataset {name!r} has {f[name].shape[0]} rows but {self.id_name!r} has {n}")

    def _read_texts(self, f: h5py.File) -> list[list[str]]:
        table = f[self.text_name].asstr()[()]
        count = f[self.count_name][()]
        if table.ndim != 2:
            self._fail(f"dataset {self.text_name!r} must be 2-D (items x {self.text_what}s), got shape {table.shape}")
        texts = []
        for i, (row, c) in enumerate(zip(table, count)):
            if c < 1:
                self._fail(f"{self._item(i)} has no {self.text_what}")
            if c > table.shape[1]:
                self._fail(f"{self._item(i)} claims {c} {self.text_what}s, the table holds {table.shape[1]}")
            row = list(row[:c])
            for j, t in enumerate(row):
                if not t.strip():
                    self._fail(f"{self._item(i)} has an empty {self.text_what} (number {j})")
            texts.append(row)
        return texts

    def _load(self, f: h5py.File) -> None:
        """Subclass checks and small per-item tables kept in memory."""

    # ---------------------------------------------------------------- access
    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():  # one handle per DataLoader worker
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        self._h5 = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"] = None
        return state

    def __len__(self) -> int:
        return len(self.ids)

    def _index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.path}: index {i} out of range for {len(self)} items")
        return i % len(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self)} items)"


class AudioCaptionH5(_Reader):
    """Audio-captioning split: item = {"id", "audio" (float32, 16 kHz mono), "sample_rate", "captions"}."""

    kind = "audio_caption"
    required = ("audio", "audio_offsets", "file_name", "captions", "caption_count")
    id_name = "file_name"

    def _load(self, f: h5py.File) -> None:
        rate = f.attrs.get("sample_rate")
        if rate is None or int(rate) != SAMPLE_RATE:
            self._fail(f"audio is stored at {rate} Hz, the models need {SAMPLE_RATE} Hz; prepare it again "
                       f"(the preparation resamples to 16 kHz) with: {self.prepare_hint}")
        offsets = f["audio_offsets"][()]
        n = len(self.ids)
        if offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != f["audio"].shape[0]:
            self._fail(f"audio_offsets (shape {offsets.shape}, ends {offsets[[0, -1]].tolist() if offsets.size else []}) "
                       f"does not index {n} clips in an audio array of {f['audio'].shape[0]} samples")
        lengths = np.diff(offsets)
        if (lengths <= 0).any():
            self._fail(f"{self._item(int(np.argmax(lengths <= 0)))} has no audio")
        self.offsets = offsets
        self.sample_rate = SAMPLE_RATE

    def duration(self, i: int) -> float:
        i = self._index(i)
        return float(self.offsets[i + 1] - self.offsets[i]) / SAMPLE_RATE

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._index(i)
        audio = self._file()["audio"][self.offsets[i] : self.offsets[i + 1]]
        return {"id": self.ids[i], "audio": audio, "sample_rate": SAMPLE_RATE, "captions": list(self.texts[i])}


class ImageCaptionH5(_Reader):
    """Image-captioning split: item = {"id", "image" (PIL RGB), "captions", "languages"}."""

    kind = "image_caption"
    required = ("image", "image_id", "captions", "caption_count")
    id_name = "image_id"

    def _load(self, f: h5py.File) -> None:
        language = self.attrs.get("language", "en")
        if "caption_language" in f:
            table = f["caption_language"].asstr()[()]
            if table.shape[0] != len(self.ids) or table.shape[1] < max(map(len, self.texts)):
                self._fail(f"caption_language has shape {table.shape}, captions need ({len(self.ids)}, >= {max(map(len, self.texts))})")
            self.languages = [list(row[: len(t)]) for row, t in zip(table, self.texts)]
        else:
            self.languages = [[language] * len(t) for t in self.texts]

    def image_bytes(self, i: int) -> bytes:
        return self._file()["image"][self._index(i)].tobytes()

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        i = self._index(i)
        try:
            image = Image.open(io.BytesIO(self.image_bytes(i)))
            image = image.convert("RGB")
        except Exception as err:  # PIL raises several types for undecodable data
            self._fail(f"{self._item(i)}: the stored image cannot be decoded ({err}); prepare it again with: {self.prepare_hint}")
        return {"id": self.ids[i], "image": image, "captions": list(self.texts[i]), "languages": list(self.languages[i])}


class TranslationH5(_Reader):
    """Translation split: item = {"id", "source", "references"}; `src_lang`, `tgt_lang` attributes."""

    kind = "translation"
    required = ("id", "source", "references", "reference_count")
    id_name = "id"
    text_name, count_name, text_what = "references", "reference_count", "reference"

    def _load(self, f: h5py.File) -> None:
        self.sources = list(f["source"].asstr()[()])
        for i, s in enumerate(self.sources):
            if not s.strip():
                self._fail(f"{self._item(i)} has an empty source")
        self.src_lang = self.attrs.get("src_lang")
        self.tgt_lang = self.attrs.get("tgt_lang")

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._index(i)
        return {"id": self.ids[i], "source": self.sources[i], "references": list(self.texts[i])}


READERS = {"audio_caption": AudioCaptionH5, "image_caption": ImageCaptionH5, "translation": TranslationH5}


def open_dataset(path, *, split: Optional[str] = None, prepare_hint: Optional[str] = None) -> _Reader:
    """The reader matching the file's `kind` attribute."""
    with open_h5(path, prepare_hint) as f:
        kind = f.attrs.get("kind")
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind not in READERS:
        raise DataFormatError(f"{path}: no loramcl layout (attribute kind={kind!r}); prepare it with: "
                              f"{prepare_hint or PREPARE_HINTS[None]}")
    return READERS[kind](path, split=split, prepare_hint=prepare_hint)


def check_split_files(
    root, name: str, splits: Iterable[str] = SPLITS, prepare_hint: Optional[str] = None, kind: Optional[str] = None
) -> dict[str, Path]:
    """Check that `<root>/<name>_<split>.hdf5` exists, opens and validates for every split.

    Cheap (reads attributes, offsets and captions, no audio or image), so call it before building a
    model. All missing splits are named in one FileNotFoundError; otherwise the first invalid file
    raises its DataFormatError (a ValueError). `kind` additionally requires that layout.
    Returns {split: path}.
    """
    splits = list(splits)
    paths = {s: split_path(root, name, s) for s in splits}
    hint = prepare_hint or PREPARE_HINTS[kind]
    missing = [f"{s} ({p})" for s, p in paths.items() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset {name!r} under {Path(root)}: missing split file(s) {', '.join(missing)}; "
                                f"prepare them with: {hint}")
    for split, path in paths.items():
        reader = (READERS[kind](path, split=split, prepare_hint=hint) if kind else
                  open_dataset(path, split=split, prepare_hint=hint))
        reader.close()
    return paths
