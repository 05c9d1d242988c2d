"""Validated configuration dataclasses of the LoRA-MCL core.

`MCLConfig` says how the K hypotheses compete (the winner-takes-all family of SPEC section 2, or
"moe": the LoRA-MoE baseline, K experts mixed per token by a router and trained as one MLE model),
`LoRAConfig` says where the K low-rank adapters go and how large they are. Both check every value
in `__post_init__` and fail with one specific message per bad value, so that a wrong sweep value
is reported before any model is built. Hydra configs map one-to-one onto these fields;
`validated_configs` names the config group in its messages (`lora.r must be ...`).

Also here, since every consumer of a run config imports this module: the `loramcl.num_states`
config resolver (the number of states of the toy's Markov chains, which the toy backbone's
vocabulary follows: `vocab_size: ${loramcl.num_states:${data.transitions}}`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

from loramcl.errors import ConfigError

__all__ = ["ConfigError", "LoRAConfig", "MCLConfig", "validated_configs"]


from loramcl.schema.errors import validate  # noqa: E402
from loramcl.schema.groups import MCL_MODES, MODES, SCHEDULE_UNITS, LoRASchema, MCLSchema  # noqa: E402,F401


@dataclass
class MCLConfig:
    """How the K hypotheses share the loss.

    Attributes:
        num_hypotheses: K, the number of adapters; K = 1 is the MLE baseline. With mode "moe": the
            number of experts (>= 2).
        mode: "wta", "relaxed-wta", "annealed-wta" or "random-wta"; or "moe", the LoRA-MoE baseline
            (K experts mixed per token by a zero-initialised softmax router, one model, mean NLL).
        epsilon: relaxed-wta weight given to the losers in total (each gets epsilon / (K - 1)).
        temperature_init: annealed-wta tau_0.
        temperature_min: annealed-wta switches to plain wta once tau_t <= tau_min.
        temperature_decay: rho in tau_t = tau_0 * rho ** t.
        schedule_unit: what t counts: optimizer "step" (global_step) or "epoch".
    """

    num_hypotheses: int = 1
    mode: str = "wta"
    epsilon: float = 0.05  # paper, audio captioning
    temperature_init: float = 1.0  # paper
    temperature_min: float = 1e-6  # paper
    temperature_decay: float = 0.999  # paper, per optimizer step
    schedule_unit: str = "step"

    def __post_init__(self) -> None:  # the rules live in the schema (loramcl.schema.groups.MCLSchema)
        checked = validate(MCLSchema, asdict(self))
        for name in ("epsilon", "temperature_init", "temperature_min", "temperature_decay"):
            setattr(self, name, getattr(checked, name))

    def temperature(self, step: int = 0, epoch: int = 0) -> Optional[float]:
        """tau_t = tau_0 * rho ** t, or None once tau_t <= tau_min (plain wta from then on)."""
        t = step if self.schedule_unit == "step" else epoch
        log_tau = math.log(self.temperature_init) + t * math.log(self.temperature_decay)
        if log_tau <= math.log(self.temperature_min):
            return None
        return math.exp(log_tau)

    @property
    def is_moe(self) -> bool:
        """The LoRA-MoE baseline (one routed model) rather than K competing hypotheses."""
        return self.mode == "moe"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoRAConfig:
    """Where the K adapters go and their shape: y_k = W x + (alpha / r) B_k A_k dropout(x).

    Attributes:
        r: rank of each adapter.
        alpha: scaling numerator; the update is multiplied by alpha / r in training and inference.
        dropout: dropout on the adapter input (independent mask per hypothesis).
        target_modules: module-name suffixes (["q_proj", "v_proj"]), a regex string matched
            against the full module name, or "all-linear" (every nn.Linear but the output layer).
        exclude_modules: suffixes or a regex of modules never adapted.
        adapt_encoders: also adapt modules outside the language model (the audio / vision encoder
            of a multimodal backbone). Off by default, as in the paper: the frozen encoder then
            runs once per batch and its output is shared by the K replicas.
        implementation: the K-way layer's forward, "fast" or "reference" (the former per-row
            gather, kept to benchmark against); the same adapters either way (`MultiLoRALinear`).
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: Union[str, Sequence[str]] = field(default_factory=lambda: ["q_proj", "v_proj"])
    exclude_modules: Optional[Union[str, Sequence[str]]] = None
    adapt_encoders: bool = False
    implementation: str = "fast"  # the faster one; "reference" only for benchmarks

    def __post_init__(self) -> None:  # the rules live in the schema (loramcl.schema.groups.LoRASchema)
        checked = validate(LoRASchema, asdict(self))
        self.alpha, self.dropout = checked.alpha, checked.dropout
        self.target_modules, self.exclude_modules = checked.target_modules, checked.exclude_modules

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.r

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validated_configs(cfg: Any, num_hypotheses: Optional[int] = None) -> tuple[MCLConfig, LoRAConfig]:
    """MCLConfig / LoRAConfig from a composed config's `mcl` / `lora` groups (K overridden by
    `num_hypotheses`); raises ConfigError on a bad value."""
    from omegaconf import OmegaConf

    mcl = OmegaConf.to_container(cfg.mcl, resolve=True)
    if num_hypotheses is not None:
        mcl["num_hypotheses"] = num_hypotheses
    lora = OmegaConf.to_container(cfg.lora, resolve=True)
    validate(MCLSchema, mcl, "mcl")  # every value and relation, named with its group
    validate(LoRASchema, lora, "lora")
    return MCLConfig(**mcl), LoRAConfig(**lora)


def num_states(transitions: Any) -> int:
    """The `loramcl.num_states` resolver: S of a list of S x S transition matrices."""
    try:
        return len(transitions[0])
    except (TypeError, IndexError, KeyError):
        raise ConfigError(f"data.transitions must be a non-empty list of S x S matrices, got {transitions!r}") from None


def file_stem(path: Any) -> str:
    """The `loramcl.stem` resolver, a dataset's name from its training file: "data/qa_train.jsonl" ->
    "qa_train", "data/qa/train.jsonl" -> "qa" (a file named train* is named by its folder); a Hub
    name "org/set" -> "org_set"."""
    from pathlib import Path

    text = str(path)
    file = Path(text)
    if not file.suffix:
        return text.replace("/", "_")
    if file.stem.lower().startswith("train") and file.parent.name not in ("", ".", ".."):
        return file.parent.name
    return file.stem


def _register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("loramcl.num_states"):
        OmegaConf.register_new_resolver("loramcl.num_states", num_states)
    if not OmegaConf.has_resolver("loramcl.run_stamp"):
        from loramcl.cluster import run_stamp

        OmegaConf.register_new_resolver("loramcl.run_stamp", run_stamp)
    if not OmegaConf.has_resolver("loramcl.stem"):
        OmegaConf.register_new_resolver("loramcl.stem", file_stem)
    if not OmegaConf.has_resolver("loramcl.slurm"):
        from loramcl.cluster import slurm_default

        OmegaConf.register_new_resolver("loramcl.slurm", slurm_default)


_register_resolver()
