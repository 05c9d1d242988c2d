"""`MCLTrainer`: the Hugging Face `Trainer` with the optimizer step fed to `annealed-wta` and
adapter-only saving.

The plain `transformers.Trainer` already trains an `MCLModel` (its forward returns the MCL loss),
but it can only save a model that is not a `PreTrainedModel` as one full state dict (the frozen
backbone included, and safetensors refuses tied embeddings). This subclass tells the model the
current `global_step` and epoch before each loss (the annealed-wta schedule tau_t = tau_0 * rho ** t
needs it) and saves only the K adapters with `MCLModel.save_adapters` (final model and the
checkpoints written during training alike).
"""

from __future__ import annotations

from typing import Optional

from transformers import Trainer

from loramcl.model import MCLModel


class MCLTrainer(Trainer):
    """`Trainer` that keeps `MCLModel.step` / `.epoch` equal to the trainer state and saves adapters only."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        inner = self.accelerator.unwrap_model(model)
        if isinstance(inner, MCLModel):
            inner.set_progress(self.state.global_step, int(self.state.epoch or 0))
        return super().compute_loss(model, inputs, *args, **kwargs)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        inner = self.accelerator.unwrap_model(self.model)
        if not isinstance(inner, MCLModel):
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            inner.save_adapters(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
