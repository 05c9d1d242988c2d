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
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Sequence, Union

from loramcl.errors import ConfigError

__all__ = ["ConfigError", "LoRAConfig", "MCLConfig", "validated_configs"]


MCL_MODES = ("wta", "relaxed-wta", "annealed-wta", "random-wta")  # K hypotheses, winner-takes-all family
MODES = (*MCL_MODES, "moe")  # "moe": K LoRA experts behind a token router, one model trained by plain NLL
SCHEDULE_UNITS = ("step", "epoch")


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

    def __post_init__(self) -> None:
        if isinstance(self.num_hypotheses, bool) or not isinstance(self.num_hypotheses, int):
            raise ConfigError(f"num_hypotheses must be an integer >= 1, got {self.num_hypotheses!r}")
        if self.num_hypotheses < 1:
            raise ConfigError(f"num_hypotheses must be >= 1, got {self.num_hypotheses}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "moe" and self.num_hypotheses < 2:
            raise ConfigError(
                f"mode 'moe' mixes num_hypotheses >= 2 LoRA experts, got {self.num_hypotheses} "
                f"(one adapter is the MLE baseline: use a wta mode with num_hypotheses=1)"
            )
        if not 0.0 <= float(self.epsilon) < 1.0:
            raise ConfigError(f"epsilon must be in [0, 1), got {self.epsilon}")
        if not float(self.temperature_init) > 0.0:
            raise ConfigError(f"temperature_init must be > 0, got {self.temperature_init}")
        if not float(self.temperature_min) > 0.0:
            raise ConfigError(f"temperature_min must be > 0, got {self.temperature_min}")
        if not 0.0 < float(self.temperature_decay) <= 1.0:
            raise ConfigError(f"temperature_decay must be in (0, 1], got {self.temperature_decay}")
        if self.schedule_unit not in SCHEDULE_UNITS:
            raise ConfigError(
                f"schedule_unit must be one of {', '.join(SCHEDULE_UNITS)}, got {self.schedule_unit!r}"
            )

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
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: Union[str, Sequence[str]] = field(default_factory=lambda: ["q_proj", "v_proj"])
    exclude_modules: Optional[Union[str, Sequence[str]]] = None
    adapt_encoders: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"r must be an integer >= 1, got {self.r!r}")
        if not float(self.alpha) > 0.0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str):
            if not self.target_modules:
                raise ConfigError("target_modules must not be empty")
        else:
            self.target_modules = list(self.target_modules)
            if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
                raise ConfigError(
                    f"target_modules must be a non-empty list of names, a regex or 'all-linear', "
                    f"got {self.target_modules!r}"
                )
        if self.exclude_modules is not None and not isinstance(self.exclude_modules, str):
            self.exclude_modules = list(self.exclude_modules)
        for key in ("target_modules", "exclude_modules"):  # a string is a regex over full module names
            spec = getattr(self, key)
            if isinstance(spec, str) and spec != "all-linear":
                try:
                    re.compile(spec)
                except re.error as err:
                    raise ConfigError(f"{key}={spec!r} is not a valid regular expression ({err})") from None

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
    built = []
    for group, cls, values in (("mcl", MCLConfig, mcl), ("lora", LoRAConfig, OmegaConf.to_container(cfg.lora, resolve=True))):
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"{group} has unknown key(s) {', '.join(unknown)}; known: "
                              f"{', '.join(f.name for f in fields(cls))}")
        try:
            built.append(cls(**values))
        except ConfigError as err:
            raise ConfigError(f"{group}.{err}") from None
    mcl_cfg, lora_cfg = built
    return mcl_cfg, lora_cfg


def num_states(transitions: Any) -> int:
    """The `loramcl.num_states` resolver: S of a list of S x S transition matrices."""
    try:
        return len(transitions[0])
    except (TypeError, IndexError, KeyError):
        raise ConfigError(f"data.transitions must be a non-empty list of S x S matrices, got {transitions!r}") from None


def _register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("loramcl.num_states"):
        OmegaConf.register_new_resolver("loramcl.num_states", num_states)
    if not OmegaConf.has_resolver("loramcl.run_stamp"):
        from loramcl.cluster import run_stamp

        OmegaConf.register_new_resolver("loramcl.run_stamp", run_stamp)


_register_resolver()
