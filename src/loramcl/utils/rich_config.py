"""Print the resolved config as a rich tree and return it as plain text."""

from __future__ import annotations

import io

import rich
import rich.console
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

ORDER = ("task", "experiment", "data", "model", "mcl", "lora", "optim", "trainer", "callbacks", "logger", "paths", "extras")


def config_tree(cfg: DictConfig | dict, print_it: bool = True) -> str:
    """The config as a rich tree, one branch per top-level key (a composed config or its resolved values)."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in ORDER if k in cfg] + [k for k in cfg if k not in ORDER]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, (DictConfig, dict)) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    # printed into a string buffer (not captured: a captured print is not recorded, and the text came out empty)
    console = rich.console.Console(record=True, width=120, file=io.StringIO(), color_system=None)
    console.print(tree)
    if print_it:
        rich.print(tree)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
