"""A config as plain Python values, for the schema's models (below every other schema module)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from loramcl.errors import ConfigError


def plain(node: Any, key: str = "", skip: tuple[str, ...] = ("hydra",), lenient: bool = False) -> Any:
    """`node` as plain Python values, interpolations resolved. A value that can be resolved only
    inside a running Hydra job (`${hydra:...}`) is left out; any other that cannot is an error
    (`lenient`: left out too, for tools that read a config no run will use as it is)."""
    if isinstance(node, DictConfig):
        out = {}
        for name in node.keys():
            if not key and name in skip:  # Hydra's own node: Hydra checks it
                continue
            try:
                value = node[name]
            except Exception as err:  # an interpolation that does not resolve, or a missing (???) value
                raw = OmegaConf.to_container(node, resolve=False).get(name)
                if raw == "???":
                    continue
                if lenient or (isinstance(raw, str) and "${hydra:" in raw) or "HydraConfig was not set" in str(err):
                    continue  # resolved once Hydra runs the job
                sub = f"{key}.{name}" if key else str(name)
                raise ConfigError(f"{sub}={raw} cannot be resolved: {' '.join(str(err).split())[:200]}") from None
            out[str(name)] = plain(value, f"{key}.{name}" if key else str(name), skip, lenient)
        return out
    if isinstance(node, ListConfig):
        return [plain(node[i], f"{key}[{i}]", skip, lenient) for i in range(len(node))]
    return node
