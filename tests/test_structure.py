"""Structure of the package: no import cycles between the modules of src/loramcl.

The import graph is read from the source with `ast` (nothing is imported): every `import loramcl.x`,
`from loramcl.x import y` and relative import, at module level or inside a function, is an edge.
A package `loramcl/a/__init__.py` is the module `loramcl.a`; `from loramcl.a import b` is an edge to
the submodule `loramcl.a.b` when there is one, else to `loramcl.a`. Importing `loramcl.a.b` also runs
`loramcl/a/__init__.py`, but that implicit edge to the parent package is not counted: a package
importing its own submodules is how packages are built, not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

SRC = ROOT / "src"


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` below `src`."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph(src: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: line of the first such import}."""
    modules = module_files(src, package)

    def target(name: str) -> str | None:
        """The module `name` names, or its longest prefix that is a module (an attribute import)."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        is_package = path.name == "__init__.py"

        def add(name: str, line: int) -> None:
            found = target(name)
            if found is not None and found != module:
                edges.setdefault(found, line)

        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package holding this module, `level - 1` up
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    if not base:
                        continue  # above the top package: not ours
                    base_name = ".".join(base + ([node.module] if node.module else []))
                elif node.module == package or (node.module or "").startswith(package + "."):
                    base_name = node.module
                else:
                    continue
                for alias in node.names:
                    submodule = f"{base_name}.{alias.name}"
                    add(submodule if submodule in modules else base_name, node.lineno)
    return graph


def import_cycles(src: Path, package: str) -> list[list[str]]:
    """One cycle (a list of modules, first repeated last) per strongly connected group of modules
    that import each other, directly or through others; [] for an acyclic package."""
    graph = import_graph(src, package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for group in groups:  # the shortest cycle through the group's first module (breadth-first)
        start = min(group)
        parent: dict[str, str] = {}
        frontier, found = [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        found = v
                        break
                    if w in group and w not in parent:
                        parent[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append([start, *reversed(path[:-1]), start])
    return sorted(cycles)


def describe(src: Path, package: str, cycles: list[list[str]]) -> str:
    """The cycles, each import named by its file and line."""
    graph, files = import_graph(src, package), module_files(src, package)
    lines = []
    for cycle in cycles:
        lines.append(" -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            lines.append(f"    {files[a].relative_to(src)}:{graph[a][b]} imports {b}")
    return "\n".join(lines)


def test_no_import_cycles_in_the_package():
    cycles = import_cycles(SRC, "loramcl")
    assert not cycles, "import cycles between modules of loramcl:\n" + describe(SRC, "loramcl", cycles)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_finds_cycles_and_only_cycles(tmp_path):
    """The checker itself, on small packages: absolute, relative and function-level imports."""
    acyclic = _write(tmp_path / "ok", {
        "pkg/__init__.py": "from pkg.core import run\nfrom . import sub\n",
        "pkg/core.py": "import os\nfrom pkg.util import helper\nfrom pkg import sub  # package attribute chain\n",
        "pkg/util.py": "import json\n\ndef helper():\n    from pkg.sub import leaf\n    return leaf\n",
        "pkg/sub/__init__.py": "from .leaf import VALUE\n",
        "pkg/sub/leaf.py": "from ..const import C\nVALUE = C\n",
        "pkg/const.py": "C = 1\nimport other_package.pkg\n",
    })
    graph = import_graph(acyclic, "pkg")
    assert graph["pkg"] == {"pkg.core": 1, "pkg.sub": 2}
    assert graph["pkg.core"] == {"pkg.util": 2, "pkg.sub": 3}
    assert graph["pkg.util"] == {"pkg.sub.leaf": 4}  # inside a function, submodule of a package
    assert graph["pkg.sub"] == {"pkg.sub.leaf": 1}  # relative, from a package's __init__
    assert graph["pkg.sub.leaf"] == {"pkg.const": 1}  # two levels up
    assert graph["pkg.const"] == {}
    assert import_cycles(acyclic, "pkg") == []

    cyclic = _write(tmp_path / "bad", {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def f():\n    from . import c  # a lazy import still closes the cycle\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d/__init__.py": "from pkg.d.e import g\n",
        "pkg/d/e.py": "from pkg import d\n\ndef g():\n    pass\n",
        "pkg/x.py": "import pkg.y as y\n",
        "pkg/y.py": "from pkg.x import *\n",
    })
    cycles = import_cycles(cyclic, "pkg")
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"], ["pkg.d", "pkg.d.e", "pkg.d"], ["pkg.x", "pkg.y", "pkg.x"]]
    text = describe(cyclic, "pkg", cycles)
    assert "pkg/b.py:2 imports pkg.c" in text and "pkg/d/e.py:1 imports pkg.d" in text
