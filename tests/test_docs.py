"""The README and docs/ stay true to the repository: every relative link (and its #anchor) leads
somewhere, and every command of the README names scripts, config options and tables that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_somewhere(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_readmes_commands_name_what_exists():
    """Scripts, `experiment=` / `table=` / `decoding=` / `data=` / `trainer=` choices of every command."""
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"(?<!`)`((?:python|bash|sbatch|\.venv/bin/python) [^`\n]*)`(?!`)", text)
    assert len(commands) >= 15
    missing = []
    for command in commands:
        for word in command.split():
            if re.fullmatch(r"(scripts|bench)/[\w/.-]+\.(py|sh)|[\w-]+\.py", word) and not (ROOT / word).exists():
                missing.append((command, word))
            group, _, values = word.partition("=")
            if group in ("experiment", "table", "decoding", "data", "trainer", "mcl") and "<" not in values:
                for value in values.split(","):
                    if not (ROOT / "configs" / group / f"{value}.yaml").is_file():
                        missing.append((command, f"{group}={value}"))
    assert not missing, missing
