"""``docs/design.md`` is the map: every module of ``batcher/`` and ``workers/`` has a row in "Who owns what".

A cell names modules in backticks; a name without a ``/`` sits in the folder of the cell's last
path (``batcher/_providers/_openai.py``, ``_anthropic.py``), and a folder (``batcher/testing/``)
names its ``__init__.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("batcher", "workers")


def _section(title: str) -> str:
    text = (ROOT / "docs" / "design.md").read_text()
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def named_modules(section: str) -> set[str]:
    named: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        folder = ""
        for token in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if token.endswith("/"):
                folder = token
                named.add(f"{token}__init__.py")
            elif "/" in token:
                folder = token.rsplit("/", 1)[0] + "/"
                named.add(token)
            elif folder and token.endswith(".py"):
                named.add(folder + token)
    return named


def modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def test_every_module_has_a_row_and_every_row_a_module() -> None:
    named = named_modules(_section("Who owns what"))
    present = modules()
    assert sorted(present - named) == [], "add these modules to docs/design.md, 'Who owns what'"
    assert sorted(named - present) == [], "docs/design.md names modules that no longer exist"


def test_the_reader_sees_a_missing_module() -> None:
    section = "| `batcher/a.py`, `b.py` | x |\n| `batcher/testing/` | y |\n| not a row `batcher/c.py` |\n"
    assert named_modules(section) == {"batcher/a.py", "batcher/b.py", "batcher/testing/__init__.py"}
