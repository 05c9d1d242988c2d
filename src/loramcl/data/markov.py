"""`MarkovDataModule`: sequences from a mixture of Markov chains (the toy experiment, SPEC 5).

The whole training stream (`max_steps` batches) and the validation set are drawn up front from
seeded generators, so the MLE and the MCL model of one run see exactly the same data in the same
order. Tokens are the chain states themselves (vocabulary = number of states), no BOS token:
the model predicts x_2..x_T from prefixes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from loramcl.data.sampling import ResumableSampler, ShardSampler, consumed_in_epoch, process_grid
from loramcl.toy.markov import MarkovMixture, sample


class TokenDataset(Dataset):
    """Fixed-length token rows served as causal-LM batches (labels = inputs, no padding)."""

    def __init__(self, tokens: torch.Tensor, chain_ids: Optional[torch.Tensor] = None):
        self.tokens = tokens
        self.chain_ids = chain_ids

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        x = self.tokens[key[0] if isinstance(key, tuple) else key]  # ResumableSampler keys: (index, epoch)
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}


class MarkovDataModule(L.LightningDataModule):
    def __init__(
        self,
        transitions: Sequence[Sequence[Sequence[float]]],
        weights: Optional[Sequence[float]] = None,
        init: str = "uniform",
        seq_len: int = 32,
        batch_size: int = 128,
        num_train_batches: int = 1000,
        num_val_sequences: int = 2000,
        val_batch_size: int = 1000,
        seed: int = 0,
    ):
        super().__init__()
        self.mixture = MarkovMixture(transitions=[list(map(list, p)) for p in transitions],
                                     weights=None if weights is None else list(weights), init=init)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_train_batches = num_train_batches
        self.num_val_sequences = num_val_sequences
        self.val_batch_size = val_batch_size
        self.seed = seed
        self.train_set: Optional[TokenDataset] = None
        self.val_set: Optional[TokenDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            g_train = torch.Generator().manual_seed(self.seed)
            g_val = torch.Generator().manual_seed(self.seed + 10_000)
            self.train_set = TokenDataset(*sample(self.mixture, self.num_train_batches * self.batch_size, self.seq_len, g_train))
            self.val_set = TokenDataset(*sample(self.mixture, self.num_val_sequences, self.seq_len, g_val))

    def train_dataloader(self) -> DataLoader:
        # the stream is already i.i.d.: no shuffling; the sampler makes mid-run resumption exact and,
        # under data parallelism, gives each process its slice of every global batch
        rank, world = process_grid(self)
        sampler = ResumableSampler(len(self.train_set), shuffle=False, batch_size=self.batch_size, rank=rank,
                                   world_size=world)
        sampler.consumed = consumed_in_epoch(self, self.batch_size, len(sampler) // self.batch_size)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        rank, world = process_grid(self)
        sampler = ShardSampler(len(self.val_set), rank, world) if world > 1 else None
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False, sampler=sampler)
