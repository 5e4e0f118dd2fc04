"""The fault benchmark at its smallest, so it cannot rot: ``python -m bench.faults --quick --scenarios leader``.

It starts what every scenario starts (a private ``redis-server``, a database of its own, the fake provider,
two worker processes as deployed), kills the leader, writes its section and removes everything. No timing is
asserted: only that it ran, wrote its row and left nothing behind.
"""

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


def test_quick_fault_benchmark_runs_and_cleans_up(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    output.write_text("# Benchmarks\n\n## Kept\n\nuntouched\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHER_", "OPENAI_"))}
    env["BATCHER_BENCH_PG_ADMIN_URL"] = PG_ADMIN_URL
    proc = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--quick", "--scenarios", "leader", "--output", str(output)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    report = output.read_text()
    assert report.startswith("# Benchmarks\n\n## Kept\n\nuntouched\n"), report
    assert "## Faults (issue #11)" in report
    assert re.search(r"^\| leader \| .*leads the cluster", report, flags=re.MULTILINE), report

    # Everything it created is gone: its database was dropped, its redis-server stopped.
    name = re.search(r"dropped (batcher_faults_\w+)", log)
    pid = re.search(r"redis-server :\d+ \(pid (\d+)\)", log)
    assert name and pid, log[-2000:]
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            left = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name.group(1)}).first()
    finally:
        admin.dispose()
    assert left is None
    assert not Path(f"/proc/{pid.group(1)}").exists()
