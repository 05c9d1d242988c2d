"""`AdapterModel`: a frozen causal LM with K LoRA adapters, the shared base of LoRA-MCL and LoRA-MoE.

It owns what both schemes share: injecting the K-way layers (`loramcl.layers`) into the target
linear layers, routing them (`route`), reading and writing the adapter tensors (safetensors folders,
checkpoint states), merging one adapter into the backbone, and `generate` under a routing. The two
schemes are small subclasses: `loramcl.model.MCLModel` (K hypotheses in competition, batch
replicated K times, winner-takes-all losses) and `loramcl.moe.MoEModel` (K experts mixed per token
by routers, one model trained by mean NLL).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from torch import nn
from transformers.utils import ModelOutput

from loramcl.checkpoints import CheckpointMeta
from loramcl.config import LoRAConfig, MCLConfig
from loramcl.errors import ConfigError
from loramcl.layers import (
    Routing,
    adapter_state_dict,
    count_parameters,
    inject_adapters,
    lora_layers,
    replace_with_merged,
    set_routing,
)
from loramcl.losses import sequence_nll

ADAPTER_FILE = "mcl_adapters.safetensors"
CONFIG_FILE = "mcl_config.json"


@dataclass
class MCLOutput(ModelOutput):
    """Output of an adapter model's forward.

    loss: scalar loss (None without labels): the MCL loss, or the mean NLL of one hypothesis / the MoE mixture.
    logits: (K, B, S, V) with all hypotheses, (B, S, V) with one hypothesis or an MoE routing.
    hypothesis_losses: (K, B) per-sequence mean NLL ((1, B) with one hypothesis or the MoE mixture).
    weights: (K, B) detached weights the loss used ((1, B) ones for the MoE mixture).
    winners: (B,) index of the best hypothesis per sequence (zeros for the MoE mixture).
    """

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hypothesis_losses: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None
    winners: Optional[torch.Tensor] = None


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


class AdapterModel(nn.Module):
    """A frozen backbone whose target linear layers carry K LoRA adapters (see the subclasses)."""

    # The loss is a mean over samples and ignores `num_items_in_batch`. Without this flag the HF
    # Trainer sees `**kwargs` in `forward`, assumes the model normalises by that count, and skips
    # dividing by gradient_accumulation_steps (gradients and logged loss G times too large).
    accepts_loss_kwargs = False
    has_router = False  # LoRA-MoE layers carry a token router
    compares_hypotheses = True  # K outputs in competition (per-hypothesis losses and win rates mean something)
    default_routing: Routing = 0  # what `generate` runs under when no index is given

    def __init__(self, model: nn.Module, mcl: Optional[MCLConfig] = None, lora: Optional[LoRAConfig] = None):
        super().__init__()
        self.mcl_config = mcl or MCLConfig()
        self.lora_config = lora or LoRAConfig()
        self.base_model = model
        decoder, decoder_path, has_encoder = language_model_scope(model)
        scope = decoder_path if has_encoder and not self.lora_config.adapt_encoders else None
        self.target_names = inject_adapters(model, self.lora_config, self.mcl_config.num_hypotheses, scope,
                                            router=self.has_router)
        self._layers = lora_layers(model)
        # (a tuple: a module attribute would register the language model a second time)
        self._language_model = (decoder, decoder_path, has_encoder)
        self.step = 0
        self.epoch = 0

    @classmethod
    def from_pretrained(cls, model_or_path: Union[str, Path, nn.Module], mcl: Optional[MCLConfig] = None,
                        lora: Optional[LoRAConfig] = None, **load_kwargs: Any) -> "AdapterModel":
        """Wrap a loaded model, or load one with `AutoModelForCausalLM.from_pretrained`."""
        if isinstance(model_or_path, nn.Module):
            return cls(model_or_path, mcl, lora)
        from transformers import AutoModelForCausalLM

        return cls(AutoModelForCausalLM.from_pretrained(str(model_or_path), **load_kwargs), mcl, lora)

    @property
    def num_hypotheses(self) -> int:
        return self.mcl_config.num_hypotheses

    @property
    def config(self):  # the backbone's transformers config (used by HF Trainer and generate)
        return self.base_model.config

    def set_progress(self, step: int, epoch: int = 0) -> None:
        """Tell the model the current optimizer step and epoch (the annealed-wta schedule reads them)."""
        self.step, self.epoch = int(step), int(epoch)

    @property
    def temperature(self) -> Optional[float]:
        return None

    def parameter_counts(self) -> tuple[int, int]:
        return count_parameters(self)

    # ------------------------------------------------------------------ routing
    @contextmanager
    def route(self, routing: Routing) -> Iterator[None]:
        """Run the enclosed calls with a routing (a `Route`, hypothesis k, or one hypothesis id per row)."""
        previous = [layer.routing for layer in self._layers]
        set_routing(self._layers, routing)
        try:
            yield
        finally:
            for layer, r in zip(self._layers, previous):
                layer.routing = r

    def _routed_forward(self, routing: Routing, input_ids: Optional[torch.Tensor],
                        attention_mask: Optional[torch.Tensor], labels: Optional[torch.Tensor], **kwargs: Any) -> MCLOutput:
        """One output per row under `routing` (a hypothesis, a forced expert, the MoE mixture): logits
        (B, S, V) and, with labels, the per-sequence NLL (1, B) and its mean over scored sequences."""
        with self.route(routing):
            out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if labels is None:
            return MCLOutput(logits=out.logits)
        nll, count = sequence_nll(out.logits, labels, attention_mask)
        valid = count > 0
        loss = nll[valid].mean() if valid.any() else nll.sum() * 0.0
        return MCLOutput(loss=loss, logits=out.logits, hypothesis_losses=nll[None])

    def _generate(self, routing: Routing, *args: Any, **kwargs: Any):
        with self.route(routing):
            return self.base_model.generate(*args, **kwargs)

    # ------------------------------------------------------------------ adapters in / out
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return adapter_state_dict(self)

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: Union[str, Path]) -> None:
        """Copy adapter (and router) tensors into this model; refuse any name or shape mismatch."""
        own = dict(self.named_parameters())
        own = {n: own[n] for n in self.adapter_state_dict()}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            example = (missing or unexpected)[0]
            raise ConfigError(f"{source} does not match this backbone's adapted layers ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected, e.g. {example}): was it trained on another backbone?")
        for name, value in state.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ConfigError(f"{source}: {name} has shape {tuple(value.shape)}, this model "
                                  f"{tuple(own[name].shape)} (another K, rank or backbone)")
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value)

    def save_adapters(self, directory: Union[str, Path]) -> Path:
        """Write the K adapters (and routers) as safetensors, and the MCL / LoRA configs; never the backbone."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous().cpu() for k, v in self.adapter_state_dict().items()}
        save_file(tensors, str(directory / ADAPTER_FILE))
        meta = {"mcl": self.mcl_config.to_dict(), "lora": self.lora_config.to_dict(), "targets": self.target_names}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    def load_adapters(self, directory: Union[str, Path]) -> None:
        """Load adapters written by `save_adapters`; refuses another K, rank, scheme or target set."""
        from safetensors.torch import load_file

        directory = Path(directory)
        saved = json.loads((directory / CONFIG_FILE).read_text())
        meta = CheckpointMeta(saved["mcl"]["num_hypotheses"], saved["lora"]["r"], saved["mcl"].get("mode", "wta"),
                              tuple(saved.get("targets") or ()))
        meta.check(self.mcl_config, self.lora_config, directory, own="this model")
        self.load_adapter_state(load_file(str(directory / ADAPTER_FILE)), directory)

    def merge_and_unload(self, hypothesis_idx: int) -> nn.Module:
        """Fold adapter k into the base weights and return the plain backbone (in place)."""
        if not 0 <= hypothesis_idx < self.num_hypotheses:
            raise ValueError(f"hypothesis_idx must be in [0, {self.num_hypotheses - 1}], got {hypothesis_idx}")
        model = replace_with_merged(self.base_model, hypothesis_idx)
        self._layers = []
        return model
