"""Lightning callbacks for tests: a real signal to this process, or non-finite adapters on one process,
at a chosen training batch."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """`os.kill(os.getpid(), signum)` when training batch `batch` (counted from 0 in the epoch; -1: the
    first batch this process trains, also after a resume) starts, once per process."""

    def __init__(self, batch: int, signum: int = int(signal.SIGTERM)):
        self.batch, self.signum, self.sent = int(batch), int(signum), False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (batch_idx == self.batch or self.batch == -1) and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class NonFiniteAt(Callback):
    """Makes the adapters of process `rank` non-finite when its training batch `batch` starts (the other
    processes keep finite ones): the loss of that process alone is NaN in that step."""

    def __init__(self, batch: int, rank: int = 0):
        self.batch, self.rank = int(batch), int(rank)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.batch and trainer.global_rank == self.rank:
            with torch.no_grad():
                for name, param in pl_module.named_parameters():
                    if param.requires_grad:
                        param.fill_(float("nan"))
