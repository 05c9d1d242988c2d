"""Training schemes as data: LoRA-MLE, LoRA-MCL and LoRA-MoE, what they are called and how they sort.

A run's scheme follows from its mcl config (or a checkpoint's meta): mode "moe" is LoRA-MoE, K = 1
is LoRA-MLE, anything else LoRA-MCL with its winner-takes-all mode. Decoding methods declare the
schemes they suit by these kinds, every evaluation logs the kind as a param, and the collector sorts
its rows by `Scheme.order` (baselines first), never by parsing a label.
"""

from __future__ import annotations

from dataclasses import dataclass

MLE, MCL, MOE = "mle", "mcl", "moe"
ORDER = {MLE: 0, MOE: 1, MCL: 2}  # table rows: the baselines, then LoRA-MCL


@dataclass(frozen=True)
class Scheme:
    kind: str  # mle | mcl | moe
    label: str  # human-readable, e.g. "LoRA-MCL (relaxed-wta)"
    num_hypotheses: int

    @classmethod
    def of(cls, mode: str, num_hypotheses: int) -> "Scheme":
        K = int(num_hypotheses)
        if mode == "moe":
            return cls(MOE, "LoRA-MoE", K)
        if K == 1:
            return cls(MLE, "LoRA-MLE", K)
        return cls(MCL, f"LoRA-MCL ({mode})", K)

    @classmethod
    def of_config(cls, cfg) -> "Scheme":
        """From a composed config's `mcl` group (or an MCLConfig)."""
        mcl = cfg.mcl if hasattr(cfg, "mcl") else cfg
        return cls.of(str(mcl.mode), int(mcl.num_hypotheses))

    @property
    def order(self) -> int:
        return ORDER[self.kind]

    @property
    def checkpoint_folder(self) -> str:
        """checkpoints/<this>/ of a task=finetune run: K{K} for MLE and MCL, moe{K} for LoRA-MoE."""
        return f"moe{self.num_hypotheses}" if self.kind == MOE else f"K{self.num_hypotheses}"
