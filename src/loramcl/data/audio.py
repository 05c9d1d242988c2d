"""`AudioCaptionDataModule`: Clotho / AudioCaps-layout HDF5 splits -> Qwen2-Audio batches.

`check()` validates every split file in milliseconds (missing, corrupt, wrong sample rate, clip
without caption), so a run fails before any model is loaded; with `auto_prepare` set (the CPU
demos) missing synthetic splits are generated instead, once, and reused afterwards. The processor
(Whisper feature extractor + tokenizer) is loaded from the backbone's folder in `setup`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from loramcl.data.collate import AUDIO_PROMPT, AudioCaptionCollator
from loramcl.data.hdf5 import AudioCaptionH5, check_split_files

log = logging.getLogger(__name__)


class AudioCaptionDataModule(L.LightningDataModule):
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
        prompt: str = AUDIO_PROMPT,
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
        self.references, self.val_references, self.prompt = references, val_references, prompt
        self.splits = dict(splits or {"train": "train", "val": "val", "test": "test"})
        self.max_train_items, self.max_val_items = max_train_items, max_val_items
        self.prepare_hint = prepare_hint
        self.auto_prepare = OmegaConf.to_container(auto_prepare) if isinstance(auto_prepare, DictConfig) else auto_prepare
        self.seed = seed
        self.processor = None

    def check(self) -> None:
        """Fail fast on missing or bad split files (or generate the synthetic ones: `auto_prepare`)."""
        files = [self.root / f"{self.name}_{s}.hdf5" for s in self.splits.values()]
        if self.auto_prepare and not all(f.exists() for f in files):
            from loramcl.data import synthetic

            log.info(f"preparing the synthetic dataset {self.name} under {self.root} (first use)")
            getattr(synthetic, self.auto_prepare["function"])(out_dir=self.root, name=self.name,
                                                               **{k: v for k, v in self.auto_prepare.items() if k != "function"})
        check_split_files(self.root, self.name, self.splits.values(), self.prepare_hint, kind="audio_caption")

    def setup(self, stage: Optional[str] = None) -> None:
        if self.processor is None:
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(self.processor_path)
        self.sets = {role: AudioCaptionH5.from_split(self.root, self.name, split, self.prepare_hint)
                     for role, split in self.splits.items()}

    def _limited(self, dataset, limit: Optional[int]):
        return Subset(dataset, range(min(limit, len(dataset)))) if limit else dataset

    def train_dataloader(self) -> DataLoader:
        collate = AudioCaptionCollator(self.processor, self.prompt, self.references, train=True, seed=self.seed)
        return DataLoader(self._limited(self.sets["train"], self.max_train_items), batch_size=self.batch_size,
                          shuffle=True, num_workers=self.num_workers, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        collate = AudioCaptionCollator(self.processor, self.prompt, self.val_references, train=True, seed=self.seed)
        return DataLoader(self._limited(self.sets["val"], self.max_val_items), batch_size=self.val_batch_size,
                          shuffle=False, num_workers=self.num_workers, collate_fn=collate)
