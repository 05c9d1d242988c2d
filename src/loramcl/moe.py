"""`MoEModel`: the LoRA-MoE baseline, K LoRA experts mixed per token by routers, one model.

    from loramcl.moe import MoEModel
    from loramcl.layers import Route
    model = MoEModel(backbone, MCLConfig(num_hypotheses=3, mode="moe"), LoRAConfig(r=8))
    out = model(input_ids=ids, attention_mask=mask, labels=labels)   # the mixture's mean NLL
    model.generate(ids, max_new_tokens=40)                         # the mixture (Route.MIXTURE)
    model.generate(ids, routing=Route.SAMPLED, max_new_tokens=40)  # one expert drawn per token
    model.generate(ids, routing=2, max_new_tokens=40)              # expert 2 forced

Every adapted layer has a zero-initialised softmax router R (K, d_in):
y = W x + (alpha / r) sum_k softmax(R x)_k B_k A_k dropout(x). The batch is not replicated and the
loss is the plain mean per-sequence NLL, so the model is one MLE model with a routed adapter; the K
experts are not in competition (no per-expert losses or win rates are logged in training).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from loramcl.adapters import AdapterModel, MCLOutput
from loramcl.layers import ROUTED, Route, Routing, as_routing


class MoEModel(AdapterModel):
    """A frozen causal LM with K LoRA experts behind per-layer token routers, trained by mean NLL."""

    has_router = True
    compares_hypotheses = False
    default_routing = Route.MIXTURE

    def __init__(self, model: torch.nn.Module, mcl: Any = None, lora: Any = None):
        if mcl is None or not mcl.is_moe:
            raise ValueError("MoEModel needs an MCLConfig with mode 'moe' (and num_hypotheses >= 2 experts)")
        super().__init__(model, mcl, lora)

    def _check(self, routing: Union[Routing, str]) -> Routing:
        """Route.MIXTURE / Route.SAMPLED (or their values "mixture" / "sampled"), a forced expert k, or
        one forced expert per row."""
        if isinstance(routing, str):
            try:
                routing = Route(routing)
            except ValueError:
                raise ValueError(f"routing must be 'mixture' or 'sampled', got {routing!r}") from None
        routing = as_routing(routing, self.num_hypotheses)
        if isinstance(routing, Route) and routing not in ROUTED:
            raise ValueError(f"a LoRA-MoE model runs under Route.MIXTURE, Route.SAMPLED or forced experts, "
                             f"got {routing}")
        return routing

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, routing: Union[Routing, str] = Route.MIXTURE,
                **kwargs: Any) -> MCLOutput:
        """The mixture (default), sampled experts (`Route.SAMPLED`) or expert k forced (`routing=k`);
        loss = mean per-sequence NLL. The mixture is one model: one "hypothesis" that wins every sequence."""
        out = self._routed_forward(self._check(routing), input_ids, attention_mask, labels, **kwargs)
        if out.hypothesis_losses is not None:
            nll = out.hypothesis_losses[0]
            out.weights = torch.ones_like(nll)[None]
            out.winners = torch.zeros(nll.shape[0], dtype=torch.long, device=nll.device)
        return out

    @torch.no_grad()
    def generate(self, *args: Any, routing: Union[Routing, str] = Route.MIXTURE, **kwargs: Any):
        """`generate` of the backbone under the mixture (default), sampled experts (`Route.SAMPLED`, on
        the global RNG) or a forced expert k."""
        return self._generate(self._check(routing), *args, **kwargs)
