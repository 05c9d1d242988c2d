"""`MCLTrainer`: the Hugging Face `Trainer` with the optimizer step fed to `annealed-wta`.

The plain `transformers.Trainer` already trains an `MCLModel` (its forward returns the MCL loss);
this subclass only tells the model the current `global_step` and epoch before each loss, which the
annealed-wta temperature schedule tau_t = tau_0 * rho ** t needs.
"""

from __future__ import annotations

from transformers import Trainer

from loramcl.model import MCLModel


class MCLTrainer(Trainer):
    """`Trainer` that keeps `MCLModel.step` / `MCLModel.epoch` equal to the trainer state."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        inner = self.accelerator.unwrap_model(model)
        if isinstance(inner, MCLModel):
            inner.set_progress(self.state.global_step, int(self.state.epoch or 0))
        return super().compute_loss(model, inputs, *args, **kwargs)
