"""Samplers that make mid-epoch resumption exact, on one process or several.

Lightning restores weights, optimizer and step counters from a checkpoint but restarts the
training dataloader at its first batch, so a run resumed mid-epoch would see its first batches
twice and end with other weights than an uninterrupted run. `ResumableSampler` draws one fixed
order per (seed, epoch) and, when iteration starts (after Lightning restored its counters), skips
the samples the checkpointed run already consumed in that epoch.

Under data parallelism (DDP / FSDP / DeepSpeed, `world_size` processes of `batch_size` items each)
the order is cut into *global* batches of `batch_size * world_size` items and process `rank` takes
its slice of each. A run on W processes with per-device batch B therefore trains on exactly the
batches of a 1-process run with batch W * B, and a checkpoint resumes on any process count with the
same global batch: what was consumed is counted in global items. The data-parallel `ShardSampler`
splits evaluation sets without the padding of torch's DistributedSampler (no item counted twice).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import Dataset, Sampler


class ResumableSampler(Sampler):
    """Keys (index, epoch) over 0..n-1 (shuffled per epoch with `seed + epoch` if `shuffle`), minus a
    resumed prefix; `DrawSeeded` turns a key into the item plus a per-(epoch, index) random seed.

    `consumed()` returns how many samples of the current epoch (global, over all processes) were
    already trained on; it is asked each time iteration starts. With `world_size` > 1, give the
    per-device `batch_size`: process `rank` yields its `batch_size` items of every global batch, and
    an incomplete last global batch is dropped (every process must run the same number of steps).
    """

    def __init__(self, num_items: int, shuffle: bool = True, seed: int = 0,
                 consumed: Optional[Callable[[], int]] = None, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_items, self.shuffle, self.seed = num_items, shuffle, seed
        self.consumed = consumed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def order(self) -> list[int]:
        """This epoch's global order of item indices (what one process of batch W * B trains on)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            return torch.randperm(self.num_items, generator=g).tolist()
        return list(range(self.num_items))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        start = self.consumed() if self.consumed is not None else 0
        if self.world_size == 1:
            return iter([(i, self.epoch) for i in order[start:]])
        width = self.batch_size * self.world_size
        mine = []
        for first in range(start - start % width, len(order) - width + 1, width):
            lo = first + self.rank * self.batch_size
            mine.extend(order[lo:lo + self.batch_size])
        return iter([(i, self.epoch) for i in mine])

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.num_items
        return self.num_items // (self.batch_size * self.world_size) * self.batch_size


def consumed_in_epoch(module: Any, batch_size: int, batches_per_epoch: int) -> Callable[[], int]:
    """For a LightningDataModule: samples of the current epoch a restored trainer already used, in
    global items (`batch_size` per device times the process count). `batches_per_epoch` counts the
    batches of one process."""

    def consumed() -> int:
        trainer = getattr(module, "trainer", None)
        if trainer is None or trainer.global_step == 0 or batches_per_epoch == 0:
            return 0
        batches = trainer.global_step * trainer.accumulate_grad_batches - trainer.current_epoch * batches_per_epoch
        return batches * batch_size * trainer.world_size if 0 < batches < batches_per_epoch else 0

    return consumed


def process_grid(module: Any) -> tuple[int, int]:
    """(rank, world size) of the trainer a DataModule is attached to; (0, 1) outside a fit."""
    trainer = getattr(module, "trainer", None)
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


class ShardSampler(Sampler):
    """Indices rank, rank + W, rank + 2W, ... of 0..n-1: one process's share of an evaluation set,
    every item on exactly one process (shares differ by at most one item; nothing is padded)."""

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1):
        self.num_items, self.rank, self.world_size = num_items, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_items, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))


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
