"""A Lightning callback that sends this process a real signal at a chosen training batch (tests)."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """`os.kill(os.getpid(), signum)` when training batch `batch` (counted from 0 in the epoch) starts, once."""

    def __init__(self, batch: int, signum: int = int(signal.SIGTERM)):
        self.batch, self.signum, self.sent = int(batch), int(signum), False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.batch and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
