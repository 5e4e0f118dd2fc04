"""The layout's rules, checked on the source: ``batcher/`` (the user side) never imports ``workers/``
(the execution side) except at its composition roots, and importing a module has no side effects
beyond its definitions (no Celery app built, no signal connected)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION_ROOTS = {"batcher/cli.py", "batcher/_embedded.py", "batcher/_demo.py"}
"""Where the user side may start the execution side: the ``batcher`` command, embedded mode, the demo."""


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_user_side_never_imports_the_execution_side_outside_its_composition_roots() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports_of(path) if m == "workers" or m.startswith("workers."))
        for path in sorted((ROOT / "batcher").rglob("*.py"))
        if str(path.relative_to(ROOT)) not in COMPOSITION_ROOTS
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize(
    "module", ["workers", "workers._execute", "workers._recovery", "workers._liveness", "workers.tasks", "batcher"]
)
def test_importing_a_module_builds_no_celery_app_and_connects_no_signal(module: str) -> None:
    probe = (
        "import sys\n"
        "from celery import signals\n"
        f"import {module}\n"
        "connected = [n for n in ('worker_ready', 'worker_init', 'worker_shutdown', 'worker_shutting_down',"
        " 'task_prerun', 'setup_logging') if getattr(signals, n).receivers]\n"
        "assert 'workers.celery_app' not in sys.modules, 'the workers app was built'\n"
        "assert not connected, connected\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
