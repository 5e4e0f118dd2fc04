"""Every ```python example in README.md runs against the test cluster, so the docs cannot rot.

Each block runs on its own, in a fresh namespace, in a temporary working directory, with the
cluster's environment (real worker, Postgres and Redis; the fake provider answers every model).
Two markers, on the line before the opening fence:

* ``<!-- continues -->``: the block runs after, and in the namespace of, the block before it.
* ``<!-- no-test -->``: the block is not run (it needs a service the suite does not start).
  Keep these rare: the test fails when more than a quarter of the blocks opt out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from batcher._config import get_settings

pytestmark = pytest.mark.acceptance

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\s`]*)")
NO_TEST = "<!-- no-test -->"
CONTINUES = "<!-- continues -->"
MAX_OPT_OUT_FRACTION = 0.25


@dataclass
class Block:
    line: int
    code: str
    marker: str | None


@dataclass
class Example:
    blocks: list[Block] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"README.md:{self.blocks[0].line}"


def python_blocks(text: str) -> list[Block]:
    """Fenced blocks whose info string is ``python`` (or ``py``), with the marker above each."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:])
            j += 1
        if opening["info"].lower() in ("python", "py", "python3"):
            previous = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            marker = previous if previous in (NO_TEST, CONTINUES) else None
            blocks.append(Block(line=i + 1, code="\n".join(body) + "\n", marker=marker))
        i = j + 1
    return blocks


def examples(blocks: list[Block]) -> list[Example]:
    chains: list[Example] = []
    for block in blocks:
        if block.marker == NO_TEST:
            continue
        if block.marker == CONTINUES and chains:
            chains[-1].blocks.append(block)
        else:
            chains.append(Example([block]))
    return chains


BLOCKS = python_blocks(README.read_text())
EXAMPLES = examples(BLOCKS)


def test_readme_has_python_examples_and_few_opt_outs() -> None:
    assert BLOCKS, "README.md has no ```python example: the parser or the README changed"
    opted_out = [b.line for b in BLOCKS if b.marker == NO_TEST]
    assert len(opted_out) <= MAX_OPT_OUT_FRACTION * len(BLOCKS), (
        f"{len(opted_out)} of {len(BLOCKS)} README examples are marked {NO_TEST} (lines {opted_out}): "
        "make them runnable against the test cluster instead"
    )


def test_the_parser_handles_markers_and_chains() -> None:
    text = "\n".join(
        [
            "```python",
            "a = 1",
            "```",
            CONTINUES,
            "```python",
            "assert a == 1",
            "```",
            NO_TEST,
            "```python",
            "import nowhere",
            "```",
            "```bash",
            "echo not python",
            "```",
            "```py",
            "b = 2",
            "```",
        ]
    )
    chains = examples(python_blocks(text))
    assert [[b.line for b in c.blocks] for c in chains] == [[1, 5], [15]]
    assert chains[0].blocks[1].code == "assert a == 1\n"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_readme_example_runs(example: Example, client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``client`` brings up the session's worker and exports the cluster environment."""
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()  # read the cluster's BATCHER_* settings, as a fresh process would
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        for block in example.blocks:
            exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)  # noqa: S102
    finally:
        get_settings.cache_clear()
