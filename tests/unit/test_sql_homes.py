"""Each feature's SQL lives in its store module (``docs/design.md``, "Where the SQL lives").

SQL text may appear only in ``batcher/_db/`` (the job store, recovery) and in a feature's store
module (``*_store.py`` beside the feature, ``store.py`` in a feature's package, and the API's
listings in ``pagination.py``). Elsewhere: connectivity probes (``SELECT 1``) and creating the
database before migrating it (``_migrate.py``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SQL = re.compile(
    r"\b(SELECT\s+[\w*(]|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|COPY\s*\(|COPY\s+\w+\s*\(|CREATE\s+DATABASE)"
    r"|\bpg_\w+\("
)
PROBE = "SELECT 1"
OUTSIDE_STORES = {"batcher/_migrate.py"}
"""Creating the database itself, before any migration runs."""


def _is_store(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return (
        path.startswith("batcher/_db/")
        or name.endswith("_store.py")
        or name == "store.py"
        or path == "batcher/api/pagination.py"
        or path in OUTSIDE_STORES
    )


def _docstrings(tree: ast.Module) -> set[int]:
    """Docstrings (of modules, classes, functions, and of attributes) describe SQL, they do not run it."""
    found: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
                continue
            if i == 0 or isinstance(body[i - 1], ast.Assign | ast.AnnAssign):
                found.add(id(stmt.value))
    return found


def _sql_in(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of each string literal in ``source`` that holds SQL (probes and docstrings aside)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and node.value.strip() != PROBE
        and SQL.search(node.value)
    ]


def _sql_outside_stores() -> list[str]:
    found = []
    for top in ("batcher", "workers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not _is_store(rel):
                found += [f"{rel}:{line}: {text.strip()[:60]!r}" for line, text in _sql_in(path.read_text("utf-8"))]
    return found


def test_sql_lives_only_in_store_modules() -> None:
    assert _sql_outside_stores() == []


def test_the_check_sees_sql_but_not_docstrings_nor_probes() -> None:
    source = "\n".join(
        [
            '"""About SELECT id FROM jobs."""',
            'Q = "SELECT id FROM jobs WHERE x"',
            '"""UPDATE jobs SET: Q\'s doc."""',
            'P = "SELECT 1"',
        ]
    )
    assert _sql_in(source) == [(2, "SELECT id FROM jobs WHERE x")]
