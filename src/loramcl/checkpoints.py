"""Adapter-only checkpoints: what loramcl records in them, and the one place that reads them.

Every checkpoint a run writes (Lightning `.ckpt`, or an adapter folder of `save_adapters`) carries a
`CheckpointMeta`: K, the adapter rank, the adapted layers and the training mode (LoRA-MoE adapters
have token routers, LoRA-MCL ones do not). `CheckpointMeta.check` is the one place where a
checkpoint is compared with a configuration, so the K / rank / scheme mismatch messages live here.
`Checkpoint.load` is the one `torch.load` of the project: a missing, truncated or foreign file stops
with one line naming it, before any backbone is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from loramcl.errors import ConfigError, MissingResource

META_KEY = "loramcl"  # checkpoint["loramcl"]: the CheckpointMeta of a Lightning checkpoint
RUN_KEY = "loramcl_run"  # checkpoint["loramcl_run"]: the MLflow run id of the run that wrote it
LIT_PREFIX = "model."  # MCLLitModule keeps the adapter model as `self.model`


def scheme_phrase(mode: str) -> str:
    """How a training mode is named in messages."""
    if mode == "moe":
        return "LoRA-MoE experts with token routers (mcl mode 'moe')"
    return f"LoRA-MCL hypotheses without router (mcl mode {mode!r})"


@dataclass(frozen=True)
class CheckpointMeta:
    """K, rank, adapted layers and training mode of a checkpoint's adapters."""

    num_hypotheses: int
    r: int
    mode: str = "wta"  # checkpoints written before LoRA-MoE existed are MCL
    targets: tuple[str, ...] = field(default=())

    @classmethod
    def of_model(cls, model: Any) -> "CheckpointMeta":
        """The meta of an adapter model (`MCLModel` / `MoEModel`)."""
        return cls(model.num_hypotheses, model.lora_config.r, model.mcl_config.mode, tuple(model.target_names))

    @classmethod
    def from_dict(cls, data: Optional[dict], source: Union[str, Path]) -> "CheckpointMeta":
        if not isinstance(data, dict) or "num_hypotheses" not in data or "r" not in data:
            raise ConfigError(f"{source} was not written by loramcl (no adapter metadata)")
        return cls(int(data["num_hypotheses"]), int(data["r"]), str(data.get("mode") or "wta"),
                   tuple(data.get("targets") or ()))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = list(self.targets)
        return data

    @property
    def is_moe(self) -> bool:
        return self.mode == "moe"

    def check(self, mcl: Any, lora: Any, source: Union[str, Path], own: str = "this run") -> None:
        """Refuse adapters of another scheme (MoE vs MCL), K or rank than `mcl` / `lora` describe."""
        if self.is_moe != (mcl.mode == "moe"):
            raise ConfigError(f"{source} holds {scheme_phrase(self.mode)}; {own} has {scheme_phrase(mcl.mode)}: "
                              f"build it with the same mcl mode")
        if (self.num_hypotheses, self.r) != (int(mcl.num_hypotheses), int(lora.r)):
            raise ConfigError(f"{source} holds K={self.num_hypotheses}, r={self.r} adapters; {own} has "
                              f"K={mcl.num_hypotheses}, r={lora.r} (mcl.num_hypotheses, lora.r)")

    def check_targets(self, names: list[str], source: Union[str, Path]) -> None:
        """Refuse a model whose adapted layers are not the checkpoint's (another backbone or target list)."""
        if self.targets and list(self.targets) != list(names):
            missing = sorted(set(self.targets) - set(names)) or sorted(set(names) - set(self.targets)) or ["(order)"]
            raise ConfigError(f"{source} adapts other layers than this model ({len(self.targets)} against "
                              f"{len(names)}, e.g. {missing[0]}): was it trained on another backbone?")


@dataclass
class Checkpoint:
    """A Lightning checkpoint written by loramcl, read once: its meta, adapters and the raw dict."""

    path: Path
    meta: CheckpointMeta
    raw: dict

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Checkpoint":
        """Read `path` (mmap'd: adapters only, cheap). Missing: MissingResource; unreadable or not
        loramcl's: ConfigError, both naming the file."""
        path = Path(path)
        if not path.is_file():
            raise MissingResource(f"checkpoint {path} does not exist")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as err:  # truncated / not a torch file: torch raises several types
            raise ConfigError(f"{path} cannot be read as a checkpoint ({type(err).__name__}: {err})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} cannot be read as a checkpoint (it holds a {type(raw).__name__})")
        return cls(path, CheckpointMeta.from_dict(raw.get(META_KEY), path), raw)

    @property
    def adapters(self) -> dict[str, torch.Tensor]:
        """The adapter (and router) tensors, keyed as in the adapter model (without `model.`)."""
        state = self.raw.get("state_dict", {})
        return {k[len(LIT_PREFIX):]: v for k, v in state.items() if k.startswith(LIT_PREFIX)}

    @property
    def mlflow_run_id(self) -> Optional[str]:
        """The MLflow run that wrote this checkpoint (None without MLflow)."""
        return (self.raw.get(RUN_KEY) or {}).get("mlflow_run_id")

    def best_model_path(self) -> Optional[Path]:
        """The best checkpoint ModelCheckpoint recorded in this one (its file name, beside this file)."""
        for key, value in self.raw.get("callbacks", {}).items():
            if key.startswith("ModelCheckpoint") and isinstance(value, dict) and value.get("best_model_path"):
                best = self.path.parent / Path(value["best_model_path"]).name
                if best.is_file():
                    return best
        return None


@dataclass
class CheckpointFolder:
    """One model's checkpoint folder, every `*.ckpt` in it read once (mmap'd): the one scan behind
    `newest` (what a run resumes from) and `best` (what an evaluation loads)."""

    folder: Path
    readable: dict[Path, Checkpoint]
    unreadable: dict[Path, str]  # file -> why it cannot be read (truncated by a kill, corrupt, foreign)

    @classmethod
    def scan(cls, folder: Union[str, Path]) -> "CheckpointFolder":
        folder = Path(folder)
        readable, unreadable = {}, {}
        for path in sorted(folder.glob("*.ckpt")):
            try:
                readable[path] = Checkpoint.load(path)
            except (ConfigError, MissingResource) as err:
                unreadable[path] = str(err)
        return cls(folder, readable, unreadable)

    def newest(self) -> Optional[Path]:
        """The readable checkpoint with the most optimizer steps (last.ckpt wins ties); None if none."""
        steps = {path: (int(c.raw.get("global_step", -1)), path.name == "last.ckpt") for path, c in self.readable.items()}
        return max(steps, key=steps.get) if steps else None

    def best(self) -> Optional[Path]:
        """The best checkpoint ModelCheckpoint recorded in last.ckpt, else the newest other one (by
        modification time), else last.ckpt; None when nothing is readable."""
        last = self.readable.get(self.folder / "last.ckpt")
        recorded = last.best_model_path() if last is not None else None
        if recorded is not None and recorded in self.readable:
            return recorded
        others = sorted((p for p in self.readable if p.name != "last.ckpt"), key=lambda p: p.stat().st_mtime,
                        reverse=True)
        return others[0] if others else (last.path if last is not None else None)
