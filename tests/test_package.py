"""The installable package: pyproject.toml declares every third-party import of src/loramcl, the built
wheel carries the code and those requirements, and (slow: pip resolves the requirements from the
package registry) installs into a fresh virtual environment where MCLModel trains one step."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from helpers import ROOT, timeout

STDLIB = set(sys.stdlib_module_names)


def _requirement_name(spec: str) -> str:
    import re

    return re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _imports() -> set[str]:
    """Top-level modules imported anywhere in src/loramcl (absolute imports only)."""
    found = set()
    for path in (ROOT / "src" / "loramcl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in STDLIB and m not in ("loramcl", "__future__")}


def test_pyproject_declares_every_third_party_import():
    declared = {_requirement_name(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    owners = packages_distributions()
    missing = {}
    for module in sorted(_imports()):
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        assert dists, f"{module} is imported by src/loramcl but no installed distribution provides it"
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"
    pinned = {_requirement_name(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert declared - {"torch"} <= pinned, f"declared but not pinned in requirements.txt: {declared - pinned - {'torch'}}"


def _build_wheel(where: Path) -> Path:
    """The wheel of a copy of the project (the checkout itself gets no build/ or egg-info)."""
    copy = where / "project"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(where / "dist"), str(copy)], capture_output=True, text=True, timeout=timeout(300))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (where / "dist").glob("loramcl-*.whl")
    return wheel


def test_the_wheel_carries_the_code_and_its_requirements(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = {_requirement_name(line.split(":", 1)[1]) for line in z.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line}
    sources = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src" / "loramcl").rglob("*.py")}
    assert sources <= names, sorted(sources - names)[:5]
    assert {"torch", "transformers", "peft", "lightning", "datasets", "hydra-core"} <= requires


TRY_IT = """
import torch, loramcl, transformers
from loramcl import LoRAConfig, MCLConfig, MCLModel
assert "site-packages" in loramcl.__file__, loramcl.__file__
cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
torch.manual_seed(0)
model = MCLModel(transformers.LlamaForCausalLM(cfg), MCLConfig(num_hypotheses=3),
                 LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
ids = torch.randint(0, 64, (2, 7))
trainable = [p for p in model.parameters() if p.requires_grad]
before = [p.detach().clone() for p in trainable]
optimizer = torch.optim.AdamW(trainable, lr=1e-2)
out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
out.loss.backward()
optimizer.step()
moved = sum(not torch.equal(a, p) for a, p in zip(before, trainable))
print("hypothesis losses", tuple(out.hypothesis_losses.shape), float(out.loss) > 0, "moved", moved > 0)
"""


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_environment_and_mcl_runs(tmp_path):
    """A fresh venv (no system packages), torch first (the CPU wheel where this machine has one, as
    setup_env.sh), then the wheel alone: pip resolves its requirements from pyproject.toml."""
    import torch

    wheel = _build_wheel(tmp_path)
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=timeout(120))
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q"]
    version = torch.__version__.split("+")[0]
    for step in ([f"torch=={version}"], [str(wheel)]):
        proc = subprocess.run(pip + step, capture_output=True, text=True, timeout=timeout(1500))
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([str(env / "bin" / "python"), "-c", TRY_IT], capture_output=True, text=True,
                          cwd=tmp_path, timeout=timeout(300))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hypothesis losses (3, 2) True moved True" in proc.stdout, proc.stdout
