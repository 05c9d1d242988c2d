"""`MCLModel`: the public Python API of LoRA-MCL for any Hugging Face causal language model.

    from loramcl import MCLModel, MCLConfig, LoRAConfig
    model = MCLModel.from_pretrained(
        "path/or/hub-name",
        mcl=MCLConfig(num_hypotheses=3, mode="relaxed-wta", epsilon=0.05),
        lora=LoRAConfig(r=16, alpha=16, dropout=0.1, target_modules=["q_proj", "v_proj"]),
    )
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss                    # the MCL loss (plain wta in eval mode)
    out.hypothesis_losses       # (K, B) mean token NLL of every sequence under every hypothesis
    model.generate(ids, hypothesis_idx=1, max_new_tokens=40)

The backbone is frozen; K low-rank adapters are injected into the target linear layers (the shared
`loramcl.adapters.AdapterModel`). A training forward replicates the batch K times, hypothesis-major,
and runs all hypotheses in one pass. The LoRA-MoE baseline is the sibling `loramcl.moe.MoEModel`;
`build_model` picks the class a config's mcl mode asks for. The object trains with the plain
`transformers.Trainer`; `MCLTrainer` additionally feeds the optimizer step to `annealed-wta`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from loramcl.adapters import AdapterModel, MCLOutput
from loramcl.config import LoRAConfig, MCLConfig
from loramcl.layers import Route
from loramcl.losses import mcl_loss, sequence_nll

__all__ = ["MCLModel", "MCLOutput", "build_model", "replicate"]


def replicate(value: Any, num_hypotheses: int, batch_size: int) -> Any:
    """Repeat a batch tensor K times along dim 0, hypothesis-major; leave everything else."""
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch_size:
        return value.repeat(num_hypotheses, *([1] * (value.ndim - 1)))
    return value


# Batch-shaped inputs of a language model that are replicated K times at its entrance.
REPLICATED_KEYS = ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "token_type_ids")


def build_model(backbone: nn.Module, mcl: MCLConfig, lora: LoRAConfig) -> AdapterModel:
    """The adapter model a config asks for: `MoEModel` for mcl mode "moe", else `MCLModel`."""
    if mcl.is_moe:
        from loramcl.moe import MoEModel

        return MoEModel(backbone, mcl, lora)
    return MCLModel(backbone, mcl, lora)


class MCLModel(AdapterModel):
    """A frozen causal LM with K LoRA hypotheses trained by a winner-takes-all loss."""

    def __init__(self, model: nn.Module, mcl: Optional[MCLConfig] = None, lora: Optional[LoRAConfig] = None,
                 share_encoder: bool = True):
        mcl = mcl or MCLConfig()
        if mcl.is_moe:
            raise ValueError("mcl mode 'moe' is the LoRA-MoE baseline: build it with loramcl.moe.MoEModel "
                             "(or loramcl.model.build_model, which picks the class from the mode)")
        super().__init__(model, mcl, lora)
        # With every adapter inside the language model, the K replicas are made at its entrance:
        # a frozen encoder then runs once per batch and its output is shared by the K replicas.
        decoder, path, has_encoder = self._language_model
        inside = path is not None and all(n.startswith(path + ".") for n in self.target_names)
        # (share_encoder=False replicates the whole input instead: for benchmarks and checks)
        self._replica_point: Optional[nn.Module] = decoder if inside and has_encoder and share_encoder else None

    @property
    def temperature(self) -> Optional[float]:
        if self.mcl_config.mode != "annealed-wta":
            return None
        return self.mcl_config.temperature(self.step, self.epoch)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        hypothesis_idx: Optional[int] = None,
        **kwargs: Any,
    ) -> MCLOutput:
        """All K hypotheses in one pass (default), or hypothesis `hypothesis_idx` alone."""
        if hypothesis_idx is not None:
            return self._routed_forward(hypothesis_idx, input_ids, attention_mask, labels, **kwargs)

        K = self.num_hypotheses
        ref = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        B = ref.shape[0]
        with self.route(Route.REPLICATED):
            if self._replica_point is not None:
                out = self._forward_replicated_inside(K, B, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            else:
                rep = {k: replicate(v, K, B) for k, v in kwargs.items()}
                out = self.base_model(
                    input_ids=replicate(input_ids, K, B), attention_mask=replicate(attention_mask, K, B), **rep
                )
        if out.logits.shape[0] != K * B:
            raise RuntimeError(f"expected {K * B} rows of logits (K={K} x B={B}), got {out.logits.shape[0]}")
        logits = out.logits.view(K, B, *out.logits.shape[1:])  # (K, B, S, V)
        if labels is None:
            return MCLOutput(logits=logits)
        nll, count = sequence_nll(out.logits, replicate(labels, K, B), replicate(attention_mask, K, B))
        losses = nll.view(K, B)  # (K, B)
        result = mcl_loss(losses, self.mcl_config, self.step, self.epoch, self.training, valid=count[:B] > 0)
        return MCLOutput(
            loss=result.loss, logits=logits, hypothesis_losses=losses, weights=result.weights, winners=result.winners
        )

    def _forward_replicated_inside(self, K: int, B: int, **inputs: Any):
        """Run the backbone on the B-row batch; its language model receives K replicas of its inputs."""

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            args = tuple(replicate(a, K, B) for a in args)
            kwargs = {k: replicate(v, K, B) if k in REPLICATED_KEYS else v for k, v in kwargs.items()}
            return args, kwargs

        handle = self._replica_point.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            return self.base_model(**inputs)
        finally:
            handle.remove()

    @torch.no_grad()
    def generate(self, *args: Any, hypothesis_idx: Union[int, Sequence[int], torch.Tensor, None] = None,
                 **kwargs: Any):
        """`generate` of the backbone with hypothesis k (int) or one hypothesis per input row (ids)."""
        if hypothesis_idx is None:
            if self.num_hypotheses > 1:
                raise ValueError(
                    f"this model has {self.num_hypotheses} hypotheses: pass hypothesis_idx=k "
                    f"(0..{self.num_hypotheses - 1}) or one index per input row"
                )
            hypothesis_idx = 0
        return self._generate(hypothesis_idx, *args, **kwargs)
