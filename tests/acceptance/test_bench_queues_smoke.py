"""Issue #15's benchmark at tiny sizes, so it cannot rot: ``python -m bench.queues --quick``.

Two scenarios cover every kind of process it starts: ``memory`` (a private ``redis-server``, a database of its
own, the fake provider, two ``batcher worker`` processes, a submission through the Python client) and
``tenants`` (the same plus ``batcher keys create`` and ``batcher api``, two keys submitting over HTTP). No
figure is asserted: only that it ran, printed its rows, wrote its raw numbers and left nothing behind.
"""

from __future__ import annotations

import json
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


def test_quick_queue_benchmark_runs_reports_and_cleans_up(tmp_path: Path) -> None:
    raw = tmp_path / "queues.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHER_", "OPENAI_"))}
    env["BATCHER_BENCH_PG_ADMIN_URL"] = PG_ADMIN_URL
    argv = ["--quick", "--scenarios", "memory,tenants", "--memory-window-s", "1", "--tenant-prompts", "300"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.queues", *argv, "--tenant-delay-s", "1", "--json", str(raw)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    assert "| scenario | figure | issue (before) | now | goal | met? |" in proc.stdout
    assert re.search(r"^\| memory \| Redis used_memory growth, 2,000-prompt job", proc.stdout, re.MULTILINE), log
    assert re.search(r"^\| tenants \| 2 API keys, 300 prompts each", proc.stdout, re.MULTILINE), log
    data = json.loads(raw.read_text())
    assert data["failures"] == []
    # The job's messages and the workers' delivery records were in Redis while it ran (right after the
    # submission the workers may already have taken more than the dispatcher put in: not a fixed point).
    memory = data["scenarios"]["memory"]
    assert memory["used_memory_peak_sampled"] > memory["used_memory_before"], memory
    assert set(data["scenarios"]["tenants"]["samples"]) == {"A", "B"}

    # Everything it created is gone: both databases dropped, both redis-servers stopped.
    names = re.findall(r"dropped (batcher_faults_\w+)", log)
    pids = re.findall(r"redis-server :\d+ \(pid (\d+)\)", log)
    assert len(names) == len(pids) == 2, log[-2000:]
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            left = conn.execute(text("SELECT datname FROM pg_database WHERE datname = ANY(:n)"), {"n": names}).all()
    finally:
        admin.dispose()
    assert left == []
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
