"""The K-way LoRA linear layer and its injection into any PyTorch / Hugging Face model.

`MultiLoRALinear` wraps a frozen `nn.Linear` W and holds K low-rank pairs (A_k, B_k):

    y_k = W x + (alpha / r) * B_k A_k dropout(x)

All K hypotheses run in ONE forward pass: the caller replicates the batch K times, hypothesis-major
(rows [k * B, (k + 1) * B) belong to hypothesis k), and the layer routes each block to its adapter
with two batched matmuls. The same layer also runs one chosen hypothesis on an un-replicated batch,
or an arbitrary row -> hypothesis map (used by batched decoding, where beam search multiplies the
rows). The routing is a plain attribute set by `set_routing` (or the `MCLModel.route` context).

Per-row routing avoids per-row adapter copies: ids that are K contiguous equal blocks in hypothesis
order (batched decoding, beams included) take the replicated path; other ids, on short rows (a
decoding step), multiply by all K adapters at once and keep each row's own block.
`implementation="reference"` (`lora.implementation`) runs the former code (per-row gather), for benchmarks.

With `router=True` the layer is a token-level LoRA mixture of experts (the LoRA-MoE baseline): a
linear router g(x) = softmax(R x), R (K, d_in) zero-initialised (uniform gate 1/K at start), mixes
the K experts per token, y = W x + (alpha / r) sum_k g_k(x) B_k A_k dropout(x).
"""

from __future__ import annotations

import enum
import math
import numbers
import re
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn

from loramcl.config import LoRAConfig
from loramcl.schema.groups import LORA_IMPLEMENTATIONS as IMPLEMENTATIONS  # "fast", "reference"


class Route(enum.Enum):
    """How a K-way layer routes its rows, besides one hypothesis index (int) or per-row ids (LongTensor)."""

    REPLICATED = "replicated"  # the batch is K replicas, hypothesis-major; replica k -> adapter k
    BASE = "base"  # adapters off: plain W x
    MIXTURE = "mixture"  # LoRA-MoE: per token, the router-weighted sum of the K experts
    SAMPLED = "sampled"  # LoRA-MoE: per token, one expert drawn from the router


ROUTED = (Route.MIXTURE, Route.SAMPLED)  # need a token router
Routing = Union[Route, int, torch.Tensor]  # a Route, hypothesis k, or one hypothesis id per row
MASKED_TOKENS_MAX = 64  # per-row ids in any order: masked products up to K * (tokens per row) = 64, else gather


class MultiLoRALinear(nn.Module):
    """A frozen linear layer with K LoRA adapters (`lora_A`: (K, r, d_in), `lora_B`: (K, d_out, r)).

    Routing (attribute `routing`, a `Routing`):
        Route.REPLICATED: the batch is K replicas, hypothesis-major; replica k goes through adapter k.
        int k: every row goes through adapter k (un-replicated batch).
        LongTensor ids of shape (N,): row n goes through adapter ids[n]; if the batch has
            m * N rows (beam search expands each row into m contiguous rows), ids are repeated.
        Route.BASE: adapters disabled, plain W x.
        Route.MIXTURE (layers with a router): per token, the softmax-weighted sum of the K experts,
            y = W x + (alpha / r) sum_k softmax(R x)_k B_k A_k dropout(x).
        Route.SAMPLED (layers with a router): per token, one expert k ~ softmax(R x) drawn with
            `torch.multinomial` on the global RNG (seeded runs reproduce it); only its delta is added.

    `router=True` adds `router`, an fp32 `nn.Linear(d_in, K, bias=False)` initialised to zero.

    Implementation (argument and attribute `implementation`, `lora.implementation` in configs; switched
    on a built model with `set_implementation`), for benchmarks:
        "fast" (default): per-row ids without per-row adapter copies (K contiguous blocks in hypothesis
            order take the replicated path; any other order computes h = x [A_1; ...; A_K]^T, zeroes all
            blocks but the row's own and multiplies by [B_1 ... B_K], unless rows are long: a prompt
            keeps the gather, cheaper there); under torch.autocast the input is not copied to fp32
            first (the matmuls cast it to the autocast dtype themselves).
        "reference": the former code: per-row ids gather (N, r, d_in) and (N, d_out, r) copies of the
            adapters, and the adapter input is always cast to fp32.
    Both give the same outputs, bit for bit except per-row ids (same up to float rounding).
    """

    def __init__(self, base_layer: nn.Linear, num_hypotheses: int, r: int, alpha: float, dropout: float = 0.0,
                 router: bool = False, implementation: str = "fast"):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"MultiLoRALinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.implementation = _checked_implementation(implementation)
        self.base_layer = base_layer
        self.num_hypotheses = num_hypotheses
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        d_out, d_in = base_layer.weight.shape
        factory = {"device": base_layer.weight.device, "dtype": torch.float32}
        self.lora_A = nn.Parameter(torch.empty(num_hypotheses, r, d_in, **factory))
        self.lora_B = nn.Parameter(torch.zeros(num_hypotheses, d_out, r, **factory))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.router: Optional[nn.Linear] = nn.Linear(d_in, num_hypotheses, bias=False, **factory) if router else None
        self.routing: Routing = Route.REPLICATED
        self._plan: Optional[tuple] = None  # (ids, their version, rows, device, plan): see `_routed_plan`
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LoRA init per hypothesis: A_k Kaiming-uniform (a = sqrt 5), B_k = 0, so y_k = W x at start.

        The router (if any) starts at zero: a uniform gate 1/K on every token.
        """
        with torch.no_grad():
            for k in range(self.num_hypotheses):
                nn.init.kaiming_uniform_(self.lora_A[k], a=math.sqrt(5))
            self.lora_B.zero_()
            if self.router is not None:
                self.router.weight.zero_()

    def extra_repr(self) -> str:
        d_out, d_in = self.base_layer.weight.shape
        return (f"in={d_in}, out={d_out}, num_hypotheses={self.num_hypotheses}, r={self.r}, scaling={self.scaling:g}"
                + (", router=True" if self.router is not None else ""))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self.implementation == "fast"
        result = self.base_layer(x)
        routing = self.routing
        if routing is Route.BASE:
            return result
        x_in = self.lora_dropout(x)
        if not (fast and torch.is_autocast_enabled(x.device.type)):
            # outside autocast the adapter arithmetic is fp32; under autocast the matmuls cast x to the
            # autocast dtype anyway, so an fp32 copy would only be cast back (losslessly: same result)
            x_in = x_in.to(self.lora_A.dtype)
        if isinstance(routing, Route) and routing in ROUTED:  # (checked by set_routing)
            delta = self._mixture_delta(x, x_in, sample=routing is Route.SAMPLED)
        elif routing is Route.REPLICATED:
            delta = self._replicated_delta(x_in)
        elif isinstance(routing, int):
            delta = self._single_delta(x_in, routing)
        elif fast:
            delta = self._routed_delta(x_in, routing)
        else:
            delta = self._gathered_delta(x_in, routing)
        return result + (self.scaling * delta).to(result.dtype)

    def _single_delta(self, x: torch.Tensor, k: int) -> torch.Tensor:
        # (..., d_in) -> (..., r) -> (..., d_out)
        return (x @ self.lora_A[k].T) @ self.lora_B[k].T

    def _replicated_delta(self, x: torch.Tensor) -> torch.Tensor:
        K = self.num_hypotheses
        if x.shape[0] % K:
            raise ValueError(
                f"all-hypotheses forward expects a batch replicated {K} times, got {x.shape[0]} rows"
            )
        xs = x.reshape(K, -1, x.shape[-1])  # (K, M, d_in), M = B * seq
        h = torch.bmm(xs, self.lora_A.transpose(1, 2))  # (K, M, r)
        delta = torch.bmm(h, self.lora_B.transpose(1, 2))  # (K, M, d_out)
        return delta.reshape(*x.shape[:-1], delta.shape[-1])

    def _routed_plan(self, ids: torch.Tensor, n: int, device: torch.device) -> Union[Route, int, torch.Tensor]:
        """How to run per-row `ids` on n rows: Route.REPLICATED when they are K contiguous equal blocks
        in hypothesis order, k when all rows use adapter k, else a (n, K * r) mask of each row's block.

        Cached, since every decoding step (and every layer call of a step) reuses the same ids tensor;
        the key holds the tensor itself and its version counter, so an in-place edit is noticed.
        """
        key = (ids._version, n, device)
        if self._plan is not None and self._plan[0] is ids and self._plan[1:4] == key:
            return self._plan[4]
        if n != ids.shape[0] and (not ids.shape[0] or n % ids.shape[0]):
            raise ValueError(f"routing has {ids.shape[0]} rows but the batch has {n}")
        host = ids.cpu()  # one sync per routing, not per step
        if n != ids.shape[0]:
            host = host.repeat_interleave(n // ids.shape[0])  # beam search: each row into m contiguous rows
        K, r = self.num_hypotheses, self.r
        if n and n % K == 0 and torch.equal(host, torch.arange(K).repeat_interleave(n // K)):
            plan: Union[Route, int, torch.Tensor] = Route.REPLICATED
        elif n and bool((host == host[0]).all()):
            plan = int(host[0])
        else:
            blocks = torch.eye(K, dtype=torch.bool).repeat_interleave(r, dim=1)  # (K, K * r)
            plan = blocks[host].to(device)  # (n, K * r): row n keeps columns [ids[n] r, (ids[n] + 1) r)
        self._plan = (ids, *key, plan)
        return plan

    def _routed_delta(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Row n through adapter ids[n] (see `_routed_plan`); per-row adapter copies only for long rows."""
        n = x.shape[0]
        plan = self._routed_plan(ids, n, x.device)
        if plan is Route.REPLICATED:
            return self._replicated_delta(x)
        if isinstance(plan, int):
            return self._single_delta(x, plan)
        K, r = self.num_hypotheses, self.r
        if math.prod(x.shape[1:-1]) * K > MASKED_TOKENS_MAX:
            # long rows (a prompt): the per-row copies are amortised over the row's tokens, while the
            # masked products cost K times the flops (measured: equal at K L = 80, d = 1024, r = 8)
            return self._gathered_delta(x, ids)
        d_out = self.lora_B.shape[1]
        h = x @ self.lora_A.reshape(K * r, -1).T  # (..., K r): every adapter's A on every row
        h = h * plan.view(n, *[1] * (h.ndim - 2), K * r)  # keep the row's own block (exact: x * 1, x * 0)
        B_cat = self.lora_B.transpose(1, 2).reshape(K * r, d_out)  # (K r, d_out), rows k r + j = B_k[:, j]
        return h @ B_cat  # (..., d_out)

    def _gathered_delta(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The reference per-row routing: (N, r, d_in) and (N, d_out, r) copies of the adapters."""
        n = x.shape[0]
        if n != ids.shape[0]:
            if n % ids.shape[0]:
                raise ValueError(f"routing has {ids.shape[0]} rows but the batch has {n}")
            ids = ids.repeat_interleave(n // ids.shape[0])
        ids = ids.to(x.device)
        xs = x.reshape(n, -1, x.shape[-1])  # (N, L, d_in)
        h = torch.bmm(xs, self.lora_A[ids].transpose(1, 2))  # (N, L, r)
        delta = torch.bmm(h, self.lora_B[ids].transpose(1, 2))  # (N, L, d_out)
        return delta.reshape(*x.shape[:-1], delta.shape[-1])

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Router probabilities softmax(R x) per token, in fp32: (..., d_in) -> (..., K)."""
        if self.router is None:
            raise ValueError("this layer has no router (LoRA-MCL adapters); only LoRA-MoE layers have a gate")
        return torch.softmax(self.router(x.to(self.router.weight.dtype)), dim=-1)

    def _mixture_delta(self, x: torch.Tensor, x_in: torch.Tensor, sample: bool) -> torch.Tensor:
        """sum_k g_k B_k A_k x_in per token; g = softmax(R x), or one-hot of a k drawn from it."""
        gate = self.gate(x)  # (..., K); the router sees the un-dropped input
        if sample:
            probs = gate.detach().reshape(-1, self.num_hypotheses)
            picks = torch.multinomial(probs, 1).view(gate.shape[:-1])  # (...,) one expert per token
            gate = nn.functional.one_hot(picks, self.num_hypotheses).to(gate.dtype)
        h = torch.einsum("...i,kri->...kr", x_in, self.lora_A)  # (..., K, r), all experts at once
        return torch.einsum("...kr,kor->...o", h * gate[..., None], self.lora_B)  # (..., d_out)

    @torch.no_grad()
    def merged_weight(self, k: int) -> torch.Tensor:
        """W + (alpha / r) B_k A_k, in the base weight's dtype."""
        w = self.base_layer.weight
        update = self.scaling * (self.lora_B[k] @ self.lora_A[k])
        return (w.float() + update.to(w.device)).to(w.dtype)

    def merged_linear(self, k: int) -> nn.Linear:
        """A plain nn.Linear equal to hypothesis k of this layer (without dropout)."""
        base = self.base_layer
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                        device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.merged_weight(k))
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out


def _checked_implementation(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {name!r}")
    return name


def set_implementation(layers: Iterable[MultiLoRALinear], name: str) -> None:
    """Switch the forward of these K-way layers of a built model ("fast" or "reference"; see
    `MultiLoRALinear`), e.g. `set_implementation(lora_layers(model), "reference")` in a benchmark."""
    name = _checked_implementation(name)
    for layer in layers:
        layer.implementation = name


def _matches(name: str, spec: Union[str, Sequence[str]]) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def find_target_modules(model: nn.Module, cfg: LoRAConfig, scope: Optional[str] = None) -> list[str]:
    """Names of the modules that `cfg` selects (peft-like matching), in model order.

    `scope`: only modules below this module path are considered (e.g. the language model).
    """
    output_layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        if not name or isinstance(module, MultiLoRALinear):
            continue
        if scope and not name.startswith(scope + "."):
            continue
        if cfg.target_modules == "all-linear":
            selected = isinstance(module, nn.Linear) and module is not output_layer
        else:
            selected = _matches(name, cfg.target_modules)
        if selected and cfg.exclude_modules is not None and _matches(name, cfg.exclude_modules):
            selected = False
        if selected:
            names.append(name)
    return names


def inject_adapters(model: nn.Module, cfg: LoRAConfig, num_hypotheses: int, scope: Optional[str] = None,
                    router: bool = False) -> list[str]:
    """Freeze `model` and replace every selected nn.Linear by a `MultiLoRALinear`; return the names.

    `router=True` gives every adapted layer a token router (LoRA-MoE); its weights are trainable.

    Raises ValueError when nothing matches (listing some linear layers that exist) or when a
    selected module is not an nn.Linear.
    """
    names = find_target_modules(model, cfg, scope)
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and (not scope or n.startswith(scope + "."))]
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(
            f"lora.target_modules={cfg.target_modules!r} matches no module of "
            f"{type(model).__name__}{f' (language model {scope})' if scope else ''}; its linear layers end "
            f"with: {', '.join(suffixes) or 'none'}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"lora.target_modules selects {name!r}, a {type(module).__name__}; only nn.Linear "
                f"layers can carry K-way adapters (narrow target_modules)"
            )
        setattr(parent, child, MultiLoRALinear(module, num_hypotheses, cfg.r, cfg.alpha, cfg.dropout, router=router,
                                               implementation=cfg.implementation))
    return names


def lora_layers(model: nn.Module) -> list[MultiLoRALinear]:
    return [m for m in model.modules() if isinstance(m, MultiLoRALinear)]


def as_routing(routing: object, num_hypotheses: int) -> Routing:
    """Check and normalise a routing: a `Route`, a hypothesis index (Python or numpy int, 0-d tensor)
    or one hypothesis id per row (sequence or 1-d tensor)."""
    if isinstance(routing, Route):
        return routing
    if isinstance(routing, torch.Tensor) and routing.ndim == 0:
        routing = int(routing)
    if isinstance(routing, numbers.Integral) and not isinstance(routing, bool):  # numpy ints too
        if not 0 <= int(routing) < num_hypotheses:
            raise ValueError(f"hypothesis_idx must be in [0, {num_hypotheses - 1}], got {int(routing)}")
        return int(routing)
    if isinstance(routing, (list, tuple)) or isinstance(routing, torch.Tensor) and routing.ndim == 1:
        ids = torch.as_tensor(routing, dtype=torch.long)
        if ids.numel() and (ids.min() < 0 or ids.max() >= num_hypotheses):
            raise ValueError(f"hypothesis ids must be in [0, {num_hypotheses - 1}], got {ids.tolist()}")
        return ids
    raise TypeError(f"routing must be a Route ({', '.join(r.name for r in Route)}), a hypothesis index or one "
                    f"index per row, got {routing!r}")


def set_routing(layers: Iterable[MultiLoRALinear], routing: object) -> None:
    """Route every K-way layer (see `MultiLoRALinear`). Every layer is checked before any is changed."""
    layers = list(layers)
    if not layers:
        return
    routing = as_routing(routing, layers[0].num_hypotheses)
    for layer in layers:
        if isinstance(routing, int) and not 0 <= routing < layer.num_hypotheses:
            raise ValueError(f"hypothesis_idx must be in [0, {layer.num_hypotheses - 1}], got {routing}")
        if isinstance(routing, Route) and routing in ROUTED and layer.router is None:
            raise ValueError(f"routing {routing} needs a token router, and these layers have none (LoRA-MCL "
                             f"adapters); build a LoRA-MoE model (mcl mode 'moe'), or pick a hypothesis index")
    for layer in layers:
        layer.routing = routing


def replace_with_merged(model: nn.Module, k: int) -> nn.Module:
    """Replace every K-way layer of `model` (in place) by the plain nn.Linear of hypothesis k."""
    for name, module in list(model.named_modules()):
        if isinstance(module, MultiLoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged_linear(k))
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the trainable adapter tensors (what checkpoints hold: A, B and routers), keyed by their path."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, MultiLoRALinear):
            prefix = f"{name}." if name else ""
            state[f"{prefix}lora_A"] = module.lora_A.detach()
            state[f"{prefix}lora_B"] = module.lora_B.detach()
            if module.router is not None:
                state[f"{prefix}router.weight"] = module.router.weight.detach()
    return state


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
