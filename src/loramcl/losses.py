"""Per-sequence losses and the winner-takes-all family (SPEC section 2).

For sample i and hypothesis k, with supervised positions M_i (label != -100 and attention_mask == 1
after the causal shift):

    L[k, i] = (1 / |M_i|) * sum_{t in M_i} -log p_k(y_t | y_<t, x)          # (K, B)

The aggregations weight L with detached weights w[k, i] and average over samples:

    loss = mean_i sum_k w[k, i] L[k, i]

    wta           w = one-hot(argmin_k L)                       (ties: lowest index)
    relaxed-wta   w = 1 - eps for the winner, eps / (K - 1) for the others
    annealed-wta  w = softmax_k(-L / tau), plain wta once tau <= tau_min
    random-wta    w = one-hot(uniformly random k)               ("LoRA-Random" baseline)

With K = 1 every mode is the plain mean NLL. Evaluation always uses plain wta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from loramcl.config import MCLConfig

IGNORE_INDEX = -100


def sequence_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token NLL per sequence, in float32.

    Args:
        logits: (N, S, V) next-token logits at every position.
        labels: (N, S) target ids aligned with the inputs (shifted here).
        attention_mask: (N, S), 0 for padding; positions whose label is padding are not scored.
    Returns:
        nll: (N,) mean NLL over the supervised positions (0 where there is none).
        count: (N,) number of supervised positions.
    """
    logits = logits[:, :-1]  # (N, S-1, V) predicts labels[:, 1:]
    targets = labels[:, 1:]
    mask = targets != ignore_index
    if attention_mask is not None:
        mask = mask & attention_mask[:, 1:].bool()
    token_nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.masked_fill(~mask, 0).reshape(-1),
        reduction="none",
    ).view_as(targets)  # (N, S-1)
    count = mask.sum(dim=1)
    nll = (token_nll * mask).sum(dim=1) / count.clamp(min=1)
    return nll, count


@dataclass
class MCLLoss:
    """Result of aggregating a (K, B) loss matrix."""

    loss: torch.Tensor  # scalar
    weights: torch.Tensor  # (K, B), detached
    winners: torch.Tensor  # (B,) argmin_k L[k, i], whatever the mode
    temperature: Optional[float] = None


def mcl_weights(
    losses: torch.Tensor,
    mode: str,
    epsilon: float = 0.0,
    temperature: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Detached (K, B) weights of the given mode (see the module docstring)."""
    losses = losses.detach()
    K, B = losses.shape
    winners = losses.argmin(dim=0)  # first minimum on ties
    one_hot = F.one_hot(winners, K).T.to(losses.dtype)  # (K, B)
    if K == 1 or mode == "wta" or (mode == "annealed-wta" and temperature is None):
        return one_hot
    if mode == "relaxed-wta":
        return (1.0 - epsilon) * one_hot + epsilon / (K - 1) * (1.0 - one_hot)
    if mode == "annealed-wta":
        # log-sum-exp safe: the best hypothesis has logit 0, the others finite or -inf.
        z = -(losses - losses.min(dim=0, keepdim=True).values) / temperature
        return torch.softmax(z, dim=0)
    if mode == "random-wta":
        pick = torch.randint(K, (B,), generator=generator, device="cpu").to(losses.device)
        return F.one_hot(pick, K).T.to(losses.dtype)
    raise ValueError(f"unknown mcl mode {mode!r}")


def mcl_loss(
    losses: torch.Tensor,
    cfg: MCLConfig,
    step: int = 0,
    epoch: int = 0,
    training: bool = True,
    valid: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> MCLLoss:
    """Aggregate per-hypothesis, per-sample losses (K, B) into the training (or evaluation) loss.

    `valid` (B,) excludes samples without any supervised token from the mean.
    """
    mode = cfg.mode if training else "wta"
    temperature = cfg.temperature(step, epoch) if mode == "annealed-wta" else None
    weights = mcl_weights(losses, mode, cfg.epsilon, temperature, generator)
    per_sample = (weights * losses).sum(dim=0)  # (B,)
    if valid is not None:
        per_sample = per_sample[valid]
    loss = per_sample.mean() if per_sample.numel() else losses.sum() * 0.0
    return MCLLoss(loss, weights, losses.detach().argmin(dim=0), temperature)


def win_counts(winners: torch.Tensor, num_hypotheses: int) -> torch.Tensor:
    """(K,) how many samples each hypothesis wins."""
    return torch.bincount(winners.flatten().cpu(), minlength=num_hypotheses)


def win_fractions(winners: torch.Tensor, num_hypotheses: int) -> torch.Tensor:
    """(K,) fraction of samples each hypothesis wins (a collapsed hypothesis shows 0)."""
    counts = win_counts(winners, num_hypotheses).float()
    return counts / counts.sum().clamp(min=1)
