"""``python -m bench.groups`` at a tiny size, so it cannot rot: it claims and stores a job in groups through the
worker's own calls, prints a figure per group size and kind, and drops the database it made."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.acceptance

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quick_group_benchmark_reports_every_group_and_drops_its_database() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHER_", "OPENAI_"))}
    env["BATCHER_BENCH_PG_ADMIN_URL"] = PG_ADMIN_URL
    argv = ["--prompts", "48", "--reps", "1", "--group", "1", "--group", "8"]
    command = [sys.executable, "-m", "bench.groups", *argv]
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    line = r"^group +(\d+) (claim|store): client [\d.]+ CPU-ms, Postgres [\d.]+ CPU-ms"
    figures = re.findall(line, proc.stdout, re.MULTILINE)
    assert figures == [("1", "claim"), ("1", "store"), ("8", "claim"), ("8", "store")], proc.stdout
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            left = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'batcher_bench_groups_%'"))
            assert left.all() == []
    finally:
        admin.dispose()
