"""A sampler that makes mid-epoch resumption exact.

Lightning restores weights, optimizer and step counters from a checkpoint but restarts the
training dataloader at its first batch, so a run resumed mid-epoch would see its first batches
twice and end with other weights than an uninterrupted run. `ResumableSampler` draws one fixed
order per (seed, epoch) and, when iteration starts (after Lightning restored its counters), skips
the samples the checkpointed run already consumed in that epoch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import Dataset, Sampler


class ResumableSampler(Sampler):
    """Keys (index, epoch) over 0..n-1 (shuffled per epoch with `seed + epoch` if `shuffle`), minus a
    resumed prefix; `DrawSeeded` turns a key into the item plus a per-(epoch, index) random seed.

    `consumed()` returns how many samples of the current epoch were already trained on; it is asked
    each time iteration starts.
    """

    def __init__(self, num_items: int, shuffle: bool = True, seed: int = 0,
                 consumed: Optional[Callable[[], int]] = None):
        self.num_items, self.shuffle, self.seed = num_items, shuffle, seed
        self.consumed = consumed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        start = self.consumed() if self.consumed is not None else 0
        return iter([(i, self.epoch) for i in order[start:]])

    def __len__(self) -> int:
        return self.num_items


def consumed_in_epoch(module: Any, batch_size: int, batches_per_epoch: int) -> Callable[[], int]:
    """For a LightningDataModule: samples of the current epoch a restored trainer already used."""

    def consumed() -> int:
        trainer = getattr(module, "trainer", None)
        if trainer is None or trainer.global_step == 0 or batches_per_epoch == 0:
            return 0
        batches = trainer.global_step * trainer.accumulate_grad_batches - trainer.current_epoch * batches_per_epoch
        return batches * batch_size if 0 < batches < batches_per_epoch else 0

    return consumed


class DrawSeeded(Dataset):
    """Wraps a map-style dataset for `ResumableSampler` keys: item + "draw", a seed for the item's
    random choices (e.g. which reference caption) that depends only on (seed, epoch, index), so a
    resumed run draws exactly what the uninterrupted one did, whatever the global RNG did."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        item = self.dataset[index]
        if isinstance(item, dict):
            item = {**item, "draw": (self.seed * 1_000_003 + epoch) * 1_000_003 + index}
        return item
