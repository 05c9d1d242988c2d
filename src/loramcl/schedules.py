"""Learning-rate schedules (LambdaLR factories) referenced by the `optim/` configs.

Each takes the optimizer and the total number of optimizer steps (the Lightning module passes
`trainer.estimated_stepping_batches`), so a config never hard-codes the run length.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return int(round(warmup_ratio * total_steps))


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.1, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup to the base lr, then cosine decay to `min_lr_ratio` * base lr at the last step."""
    warmup = _warmup_steps(total_steps, warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_inverse_sqrt(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.01) -> LambdaLR:
    """Linear warmup, then lr proportional to 1 / sqrt(step) (ALMA's schedule)."""
    warmup = max(1, _warmup_steps(total_steps, warmup_ratio))
    return LambdaLR(optimizer, lambda step: (step + 1) / warmup if step < warmup else math.sqrt(warmup / (step + 1)))
