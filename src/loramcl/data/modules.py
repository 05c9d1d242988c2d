"""Lightning DataModules over the HDF5 splits of the three tasks.

`H5DataModule.check()` validates every split file in milliseconds (missing, corrupt, wrong sample
rate, item without caption), so a run fails before any model is loaded; with `auto_prepare` set
(the CPU demos) missing synthetic splits are generated instead, once, and reused afterwards (each
file appears under its name only when complete; one that a concurrent job finished first is kept). The
processor or tokenizer is loaded from the backbone's folder in `setup`. Subclasses only say which
reader and which collator they use.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

import lightning as L
from omegaconf import DictConfig, OmegaConf
import torch
from torch.utils.data import DataLoader, Subset

from loramcl.data.collate import (AUDIO_PROMPT, IMAGE_PROMPT, AudioCaptionCollator, ImageCaptionCollator,
                                  TranslationCollator)
from loramcl.data.hdf5 import AudioCaptionH5, ImageCaptionH5, TranslationH5, check_split_files
from loramcl.data.sampling import DrawSeeded, ResumableSampler, ShardSampler, consumed_in_epoch, process_grid

log = logging.getLogger(__name__)


class H5DataModule(L.LightningDataModule):
    """Train / val / test HDF5 splits `<root>/<name>_<split>.hdf5` of one task."""

    kind: str = ""
    reader = None

    def __init__(
        self,
        root: str,
        name: str,
        processor: str,
        batch_size: int = 1,
        val_batch_size: int = 4,
        num_workers: int = 0,
        references: str = "random",
        val_references: str = "all",
        splits: Optional[dict[str, str]] = None,
        max_train_items: Optional[int] = None,
        max_val_items: Optional[int] = None,
        prepare_hint: Optional[str] = None,
        auto_prepare: Optional[dict] = None,
        seed: int = 0,
    ):
        super().__init__()
        self.root, self.name, self.processor_path = Path(root), name, processor
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.references, self.val_references = references, val_references
        self.splits = dict(splits or {"train": "train", "val": "val", "test": "test"})
        self.max_train_items, self.max_val_items = max_train_items, max_val_items
        self.prepare_hint = prepare_hint
        self.auto_prepare = OmegaConf.to_container(auto_prepare) if isinstance(auto_prepare, DictConfig) else auto_prepare
        self.seed = seed
        self.processor: Any = None
        self.sets: dict[str, Any] = {}

    def check(self) -> None:
        """Fail fast on missing or bad split files. With `auto_prepare` (the synthetic sets) the
        missing splits are generated, each exactly as a full generation writes it; files that exist
        are never replaced."""
        files = {s: self.root / f"{self.name}_{s}.hdf5" for s in self.splits.values()}
        missing = [s for s, f in files.items() if not f.exists()]
        if self.auto_prepare and missing:
            from loramcl.data import synthetic

            log.info(f"preparing split(s) {', '.join(missing)} of the synthetic dataset {self.name} under {self.root}")
            args = {k: v for k, v in self.auto_prepare.items() if k != "function"}
            make = getattr(synthetic, self.auto_prepare["function"])
            for split in missing:  # one at a time: a split another process finishes meanwhile is kept
                if files[split].exists():
                    continue
                try:
                    make(out_dir=self.root, name=self.name, only=[split], **args)
                except FileExistsError as err:
                    if files[split].exists():  # a concurrent job wrote the same split first (same seed)
                        log.info(f"split {split} of {self.name} was written by another process meanwhile; using it")
                        continue
                    # a file written with the missing split (e.g. the multi-reference test text)
                    raise FileNotFoundError(f"dataset {self.name!r} under {self.root}: cannot prepare the missing "
                                            f"split(s) {', '.join(f'{s} ({files[s]})' for s in missing)}: "
                                            f"{str(err).split(';')[0]}, and it is written together with them: "
                                            f"delete it too, then run again") from None
        check_split_files(self.root, self.name, self.splits.values(), self.prepare_hint, kind=self.kind)

    def load_processor(self) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(self.processor_path)

    def collator(self, train: bool, references: str) -> Any:
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if self.processor is None:
            self.processor = self.load_processor()
        if not self.sets:
            self.sets = self.load_sets()

    def load_sets(self) -> dict[str, Any]:
        """{role: dataset} of every split (no processor needed: what a page of inputs reads)."""
        return {role: self.reader.from_split(self.root, self.name, split, self.prepare_hint)
                for role, split in self.splits.items()}

    @staticmethod
    def _limited(dataset, limit: Optional[int]):
        return Subset(dataset, range(min(limit, len(dataset)))) if limit else dataset

    def train_dataloader(self) -> DataLoader:
        # a fixed order per (seed, epoch), exact mid-epoch resumption, and per-item seeds for the
        # random reference choice; the loader's own generator keeps the global RNG untouched. Under
        # data parallelism each process takes its slice of every global batch (loramcl.data.sampling)
        train = DrawSeeded(self._limited(self.sets["train"], self.max_train_items), self.seed)
        rank, world = process_grid(self)
        sampler = ResumableSampler(len(train), True, self.seed, batch_size=self.batch_size, rank=rank, world_size=world)
        per_process = math.ceil(len(sampler) / self.batch_size)
        sampler.consumed = consumed_in_epoch(self, self.batch_size, per_process)
        return DataLoader(train, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=self.collator(True, self.references),
                          generator=torch.Generator().manual_seed(self.seed))

    def shard(self, dataset) -> Optional[ShardSampler]:
        """This process's share of an evaluation set under data parallelism (None on one process)."""
        rank, world = process_grid(self)
        return ShardSampler(len(dataset), rank, world) if world > 1 else None

    def val_dataloader(self) -> DataLoader:
        val = self._limited(self.sets["val"], self.max_val_items)
        return DataLoader(val, batch_size=self.val_batch_size, shuffle=False, sampler=self.shard(val),
                          num_workers=self.num_workers, collate_fn=self.collator(True, self.val_references))


class AudioCaptionDataModule(H5DataModule):
    """Clotho / AudioCaps layout -> Qwen2-Audio batches (Whisper features, paper prompt)."""

    kind, reader = "audio_caption", AudioCaptionH5

    def __init__(self, *args: Any, prompt: str = AUDIO_PROMPT, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prompt = prompt

    def collator(self, train: bool, references: str) -> AudioCaptionCollator:
        return AudioCaptionCollator(self.processor, self.prompt, references, train=train, seed=self.seed)


class ImageCaptionDataModule(H5DataModule):
    """TextCaps / COCO layout (and the bilingual set) -> LLaVA-NeXT batches (PIL image processor)."""

    kind, reader = "image_caption", ImageCaptionH5

    def __init__(self, *args: Any, prompt: str = IMAGE_PROMPT, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prompt = prompt

    def collator(self, train: bool, references: str) -> ImageCaptionCollator:
        return ImageCaptionCollator(self.processor, self.prompt, references, train=train, seed=self.seed)

    def test_dataloader(self) -> DataLoader:
        """Generation batches (prompts only, left padded) over the test split."""
        return DataLoader(self.sets["test"], batch_size=self.val_batch_size, shuffle=False,
                          sampler=self.shard(self.sets["test"]), num_workers=self.num_workers, collate_fn=self.collator(False, "first"))


class TranslationDataModule(H5DataModule):
    """Parallel text (optionally multi-reference) -> ALMA prompt batches."""

    kind, reader = "translation", TranslationH5

    def __init__(self, *args: Any, src_lang: str = "en", tgt_lang: str = "de", max_source_tokens: int = 256,
                 max_target_tokens: int = 256, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.max_source_tokens, self.max_target_tokens = max_source_tokens, max_target_tokens

    def load_processor(self) -> Any:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.processor_path)
        if tokenizer.pad_token is None:  # Llama tokenizers have none
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        return tokenizer

    def collator(self, train: bool, references: str) -> TranslationCollator:
        return TranslationCollator(self.processor, self.src_lang, self.tgt_lang, references, train=train,
                                   seed=self.seed, max_source_tokens=self.max_source_tokens,
                                   max_target_tokens=self.max_target_tokens)
