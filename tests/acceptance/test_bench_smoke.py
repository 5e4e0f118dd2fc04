"""The benchmark harness at tiny sizes, so it cannot rot: ``python -m bench --quick``.

It starts everything a real benchmark run does (its own database, the fake provider as a
process, worker processes, client children; LiteLLM's too when it is installed), checks its
own results and cleans up. No timings are asserted: only that it ran, checked what it
measured, wrote its table and left nothing behind.
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


WORKLOADS = "w1,w2,w4,w5"


def test_quick_benchmark_runs_checks_and_cleans_up(tmp_path: Path, redis_url: str) -> None:
    output = tmp_path / "benchmarks.md"
    # A clean environment: the bench sets every BATCHER_* it needs; the test session's must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHER_", "OPENAI_", "ANTHROPIC_", "CO"))}
    env["BATCHER_BENCH_PG_ADMIN_URL"] = PG_ADMIN_URL
    env["BATCHER_BENCH_REDIS_URL"] = redis_url  # the session's own Redis, not the bench's default database
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--workloads", WORKLOADS, "--no-profile", "--output", str(output)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    report = output.read_text()
    assert "## Results against the targets" in report
    for row in ("| W1: 200 prompts", "| W4: submit 2,000 prompts", "| W5: read back 2,000 results"):
        assert row in report, report
    # W2 beside bare Celery's own W2 (the same threads, the provider's latency as a sleep).
    w2 = r"\| W2: 200 prompts, 2 s latency, 100 slots \| wall s \(ideal 4\.0 s\) \| [\d.]+ "
    ceiling = r"\| \| bare-Celery ceiling, same processes and threads .*\| [\d.]+ \(1 run\) = [\d.]+\u00d7 ideal"
    assert re.search(w2, report), report
    assert re.search(ceiling, report), report
    assert "## CPU per completion by process (W1)" in report

    # Everything it created is gone: its database was dropped.
    name = re.search(r"dropped (batcher_bench_\w+)", log)
    assert name, log[-2000:]
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            left = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name.group(1)}).first()
    finally:
        admin.dispose()
    assert left is None


def test_quick_deployment_benchmark_writes_its_section_and_keeps_the_rest(tmp_path: Path, redis_url: str) -> None:
    """``--deployment default``: `batcher worker` as the README starts it, the ceiling and LiteLLM in one run."""
    from bench._report import NOTES_MARKER

    output = tmp_path / "benchmarks.md"
    output.write_text(f"# Benchmarks\n\ngenerated\n\n{NOTES_MARKER}\n\n## Someone else's section\n\nkept\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHER_", "OPENAI_", "ANTHROPIC_", "CO"))}
    env["BATCHER_BENCH_PG_ADMIN_URL"] = PG_ADMIN_URL
    env["BATCHER_BENCH_REDIS_URL"] = redis_url
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--deployment", "default", "--output", str(output)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    report = output.read_text()
    assert "## Someone else's section\n\nkept" in report
    section = report.split("## Fast out of the box (issue #16)", 1)[1]
    assert "### Default deployment vs ceiling" in section
    for row in ("| batcher (`batcher worker`) |", "| bare-Celery ceiling |", "| W3 fastest of 3"):
        assert row in section, section
    assert "stopped every process; dropped batcher_bench_" in log
