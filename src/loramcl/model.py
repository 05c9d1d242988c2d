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

With `MCLConfig(mode="moe")` the same class is the LoRA-MoE baseline: the K adapters are experts
mixed per token by a softmax router in every adapted layer, the batch is not replicated, and the
loss is the plain mean NLL of the one mixture model (`generate()` decodes the mixture; routing=
"moe-sample" draws one expert per token; hypothesis_idx=k forces expert k).

The backbone is frozen; K low-rank adapters are injected into the target linear layers (see
`loramcl.layers`). A training forward replicates the batch K times, hypothesis-major, and runs all
hypotheses in one pass. The object trains with the plain `transformers.Trainer`; `MCLTrainer`
additionally feeds the optimizer step to `annealed-wta`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn
from transformers.utils import ModelOutput

from loramcl.config import LoRAConfig, MCLConfig
from loramcl.layers import (
    MOE_ROUTINGS,
    Routing,
    adapter_state_dict,
    check_routing_ids,
    count_parameters,
    inject_adapters,
    lora_layers,
    replace_with_merged,
    set_routing,
)
from loramcl.losses import mcl_loss, sequence_nll

ADAPTER_FILE = "mcl_adapters.safetensors"
CONFIG_FILE = "mcl_config.json"


@dataclass
class MCLOutput(ModelOutput):
    """Output of `MCLModel.forward`.

    loss: scalar MCL loss (None without labels); for LoRA-MoE the mean NLL of the mixture.
    logits: (K, B, S, V) with all hypotheses, (B, S, V) with one `hypothesis_idx` or an MoE routing.
    hypothesis_losses: (K, B) per-sequence mean NLL ((1, B) with one hypothesis or the MoE mixture).
    weights: (K, B) detached weights the loss used ((1, B) ones for the MoE mixture).
    winners: (B,) index of the best hypothesis per sequence (zeros for the MoE mixture).
    """

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hypothesis_losses: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None
    winners: Optional[torch.Tensor] = None


def replicate(value: Any, num_hypotheses: int, batch_size: int) -> Any:
    """Repeat a batch tensor K times along dim 0, hypothesis-major; leave everything else."""
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch_size:
        return value.repeat(num_hypotheses, *([1] * (value.ndim - 1)))
    return value


# Batch-shaped inputs of a language model that are replicated K times at its entrance.
REPLICATED_KEYS = ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "token_type_ids")


def language_model_scope(model: nn.Module) -> tuple[Optional[nn.Module], Optional[str], bool]:
    """(language model module, its path, whether modules with weights lie outside it).

    The language model is `model.get_decoder()` (transformers' public accessor: the decoder of a
    causal LM, the `language_model` of Qwen2-Audio or LLaVA-NeXT). Weights outside it other than the
    output layer mean a frozen encoder (audio / vision tower, projector).
    """
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        return None, None, False
    path = next((name for name, m in model.named_modules() if m is decoder and name), None)
    if path is None:
        return None, None, False
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inside = {id(p) for p in decoder.parameters()} | {id(p) for p in (output.parameters() if output else [])}
    has_encoder = any(id(p) not in inside for p in model.parameters())
    return decoder, path, has_encoder


class MCLModel(nn.Module):
    """A frozen causal LM with K LoRA hypotheses trained by a winner-takes-all loss."""

    # The loss is a mean over samples and ignores `num_items_in_batch`. Without this flag the HF
    # Trainer sees `**kwargs` in `forward`, assumes the model normalises by that count, and skips
    # dividing by gradient_accumulation_steps (gradients and logged loss G times too large).
    accepts_loss_kwargs = False

    def __init__(self, model: nn.Module, mcl: Optional[MCLConfig] = None, lora: Optional[LoRAConfig] = None,
                 share_encoder: bool = True):
        super().__init__()
        self.mcl_config = mcl or MCLConfig()
        self.lora_config = lora or LoRAConfig()
        self.base_model = model
        decoder, decoder_path, has_encoder = language_model_scope(model)
        scope = decoder_path if has_encoder and not self.lora_config.adapt_encoders else None
        self.target_names = inject_adapters(model, self.lora_config, self.mcl_config.num_hypotheses, scope,
                                            router=self.mcl_config.is_moe)
        self._layers = lora_layers(model)
        # With every adapter inside the language model, the K replicas are made at its entrance:
        # a frozen encoder then runs once per batch and its output is shared by the K replicas.
        inside = decoder_path is not None and all(n.startswith(decoder_path + ".") for n in self.target_names)
        # (share_encoder=False replicates the whole input instead: for benchmarks and checks)
        self._replica_point: Optional[nn.Module] = decoder if inside and has_encoder and share_encoder else None
        self.step = 0
        self.epoch = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model_or_path: Union[str, Path, nn.Module],
        mcl: Optional[MCLConfig] = None,
        lora: Optional[LoRAConfig] = None,
        **load_kwargs: Any,
    ) -> "MCLModel":
        """Wrap a loaded model, or load one with `AutoModelForCausalLM.from_pretrained`."""
        if isinstance(model_or_path, nn.Module):
            return cls(model_or_path, mcl, lora)
        from transformers import AutoModelForCausalLM

        return cls(AutoModelForCausalLM.from_pretrained(str(model_or_path), **load_kwargs), mcl, lora)

    @property
    def num_hypotheses(self) -> int:
        return self.mcl_config.num_hypotheses

    @property
    def is_moe(self) -> bool:
        """LoRA-MoE baseline: K experts mixed per token by routers, one model trained by mean NLL."""
        return self.mcl_config.is_moe

    @property
    def config(self):  # the backbone's transformers config (used by HF Trainer and generate)
        return self.base_model.config

    def set_progress(self, step: int, epoch: int = 0) -> None:
        """Tell the annealed-wta schedule the current optimizer step and epoch."""
        self.step, self.epoch = int(step), int(epoch)

    @property
    def temperature(self) -> Optional[float]:
        if self.mcl_config.mode != "annealed-wta":
            return None
        return self.mcl_config.temperature(self.step, self.epoch)

    def parameter_counts(self) -> tuple[int, int]:
        return count_parameters(self)

    # ------------------------------------------------------------------ routing
    @contextmanager
    def route(self, routing: Routing) -> Iterator[None]:
        """Run the enclosed calls with a routing (None: replicated batch; k; per-row ids; "base";
        for an MoE model also "moe" / "moe-sample")."""
        previous = [layer.routing for layer in self._layers]
        if isinstance(routing, (list, tuple)) or isinstance(routing, torch.Tensor) and routing.ndim == 1:
            routing = check_routing_ids(routing, self.num_hypotheses)
        set_routing(self._layers, routing)
        try:
            yield
        finally:
            for layer, r in zip(self._layers, previous):
                layer.routing = r

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        hypothesis_idx: Optional[int] = None,
        routing: Optional[str] = None,
        **kwargs: Any,
    ) -> MCLOutput:
        """All K hypotheses in one pass (default), or hypothesis `hypothesis_idx` alone.

        LoRA-MoE model: the mixture ("moe", default) or sampled experts (`routing="moe-sample"`) on
        the un-replicated batch, loss = mean per-sequence NLL; `hypothesis_idx=k` forces expert k.
        """
        routing = self._check_routing(hypothesis_idx, routing)
        if routing is None and self.is_moe and hypothesis_idx is None:
            routing = "moe"
        if routing is not None or hypothesis_idx is not None:
            with self.route(routing if routing is not None else int(hypothesis_idx)):
                out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            logits = out.logits
            if labels is None:
                return MCLOutput(logits=logits)
            nll, count = sequence_nll(logits, labels, attention_mask)
            valid = count > 0
            loss = nll[valid].mean() if valid.any() else nll.sum() * 0.0
            if routing is None:
                return MCLOutput(loss=loss, logits=logits, hypothesis_losses=nll[None])
            # the MoE mixture is one model: a single "hypothesis" that wins every sequence
            return MCLOutput(loss=loss, logits=logits, hypothesis_losses=nll[None], weights=torch.ones_like(nll)[None],
                             winners=torch.zeros(nll.shape[0], dtype=torch.long, device=nll.device))

        K = self.num_hypotheses
        ref = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        B = ref.shape[0]
        with self.route(None):
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

    def _check_routing(self, hypothesis_idx: Any, routing: Optional[str]) -> Optional[str]:
        """`routing` is only for LoRA-MoE models, and excludes `hypothesis_idx`."""
        if routing is None:
            return None
        if routing not in MOE_ROUTINGS:
            raise ValueError(f"routing must be one of {', '.join(map(repr, MOE_ROUTINGS))}, got {routing!r}")
        if not self.is_moe:
            raise ValueError(
                f"routing={routing!r} needs a LoRA-MoE model (mcl mode 'moe'); this model has "
                f"{self.num_hypotheses} {self.mcl_config.mode} hypotheses without router: pass hypothesis_idx"
            )
        if hypothesis_idx is not None:
            raise ValueError(f"pass either routing={routing!r} or hypothesis_idx={hypothesis_idx!r}, not both")
        return routing

    @torch.no_grad()
    def generate(self, *args: Any, hypothesis_idx: Union[int, Sequence[int], torch.Tensor, None] = None,
                 routing: Optional[str] = None, **kwargs: Any):
        """`generate` of the backbone with hypothesis k (int) or one hypothesis per input row (ids).

        LoRA-MoE model: the mixture by default (`routing="moe"`), `routing="moe-sample"` draws one
        expert per token and layer from the router (on the global RNG), `hypothesis_idx=k` forces expert k.
        """
        routing = self._check_routing(hypothesis_idx, routing)
        if routing is not None:
            hypothesis_idx = routing
        elif hypothesis_idx is None and self.is_moe:
            hypothesis_idx = "moe"
        elif hypothesis_idx is None:
            if self.num_hypotheses > 1:
                raise ValueError(
                    f"this model has {self.num_hypotheses} hypotheses: pass hypothesis_idx=k "
                    f"(0..{self.num_hypotheses - 1}) or one index per input row"
                )
            hypothesis_idx = 0
        with self.route(hypothesis_idx):
            return self.base_model.generate(*args, **kwargs)

    # ------------------------------------------------------------------ adapters in / out
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return adapter_state_dict(self)

    def save_adapters(self, directory: Union[str, Path]) -> Path:
        """Write the K adapters (and MoE routers) as safetensors, and the MCL / LoRA configs; never the backbone."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous().cpu() for k, v in self.adapter_state_dict().items()}
        save_file(tensors, str(directory / ADAPTER_FILE))
        meta = {"mcl": self.mcl_config.to_dict(), "lora": self.lora_config.to_dict(), "targets": self.target_names}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    def load_adapters(self, directory: Union[str, Path]) -> None:
        """Load adapters written by `save_adapters`; refuses another K, rank or target set, and
        MoE adapters (with routers) into an MCL model or the reverse."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text())
        saved_mode = meta["mcl"].get("mode", "wta")
        if (saved_mode == "moe") != self.is_moe:
            raise ValueError(mode_mismatch(f"{directory} holds", saved_mode, self.mcl_config.mode))
        saved_k, saved_r = meta["mcl"]["num_hypotheses"], meta["lora"]["r"]
        if saved_k != self.num_hypotheses or saved_r != self.lora_config.r:
            raise ValueError(
                f"{directory} holds adapters with K={saved_k}, r={saved_r}; this model has "
                f"K={self.num_hypotheses}, r={self.lora_config.r}"
            )
        state = load_file(str(directory / ADAPTER_FILE))
        own = self.adapter_state_dict()
        if set(state) != set(own):
            missing = sorted(set(own) - set(state))[:3]
            raise ValueError(f"{directory} does not match this model's adapted layers (e.g. missing {missing})")
        with torch.no_grad():
            params = dict(self.named_parameters())
            for name, value in state.items():
                params[name].copy_(value)

    def merge_and_unload(self, hypothesis_idx: int) -> nn.Module:
        """Fold hypothesis k into the base weights and return the plain backbone (in place).

        For a LoRA-MoE model this is expert k forced (the router is dropped)."""
        if not 0 <= hypothesis_idx < self.num_hypotheses:
            raise ValueError(f"hypothesis_idx must be in [0, {self.num_hypotheses - 1}], got {hypothesis_idx}")
        model = replace_with_merged(self.base_model, hypothesis_idx)
        self._layers = []
        return model



def mode_mismatch(what: str, saved_mode: str, own_mode: str) -> str:
    """The message for MoE adapters (with routers) offered to an MCL model, or the reverse."""

    def kind(mode: str) -> str:
        return "LoRA-MoE experts with token routers (mcl mode 'moe')" if mode == "moe" else \
            f"LoRA-MCL hypotheses without router (mcl mode {mode!r})"

    return f"{what} {kind(saved_mode)}; this model has {kind(own_mode)}: build it with the same mcl mode"
