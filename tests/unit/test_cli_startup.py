"""``batcher --help`` and ``import batcher`` load almost nothing: the heavy modules (the openai SDK,
SQLAlchemy, Celery, pydantic) are imported by the commands and names that use them. How long start-up
takes is measured by ``python -m bench.startup`` (docs/benchmarks.md), not here."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("openai", "sqlalchemy", "celery", "kombu", "pydantic", "httpx", "fakeredis", "alembic", "rich")

PROBE = """
import sys
{statement}
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))) or "-")
"""


def _heavy_after(statement: str) -> str:
    code = PROBE.format(statement=statement, heavy=HEAVY)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout


def test_help_imports_none_of_the_heavy_modules() -> None:
    help_run = (
        "from click.testing import CliRunner\nfrom batcher.cli import main\n"
        "result = CliRunner().invoke(main, ['--help'])\nassert result.exit_code == 0, result.output\n"
        "assert 'fake-provider' in result.output and 'worker' in result.output"
    )
    assert _heavy_after(help_run).strip() == "-"


def test_import_batcher_imports_a_public_name_only_when_it_is_used() -> None:
    assert _heavy_after("import batcher").strip() == "-"
    assert "openai" in _heavy_after("import batcher\nbatcher.RateLimitError")


def test_a_lazily_registered_command_shows_its_own_help() -> None:
    code = (
        "from click.testing import CliRunner\nfrom batcher.cli import main\n"
        "r = CliRunner().invoke(main, ['fake-provider', '--help'])\nprint(r.exit_code, r.output)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.startswith("0 Usage: main fake-provider") and "--latency-ms" in out, out
