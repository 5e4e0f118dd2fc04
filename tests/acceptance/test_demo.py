"""The README's first command, `batcher demo`, in both modes, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from batcher._demo import DEMO_KEY_TTL_S

DEMO_PROMPTS = "60"


def _demo(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", "demo", "-n", DEMO_PROMPTS, "--latency-ms", "20", "-c", "20"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _assert_ran_end_to_end(result: subprocess.CompletedProcess[str]) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert f"completed: {DEMO_PROMPTS} succeeded, 0 failed" in out
    assert "winner gpt-4o-mini" in out  # the 50 ms model wins the race against 200 and 500 ms
    for model in ("gpt-4o-mini", "claude-3-5-haiku-latest", "command-r"):
        assert model in out


def test_demo_embedded_with_nothing_running(tmp_path: Path) -> None:
    """No URL set and nothing answering: everything in one process, results in ./batcher.db."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHER_", "OPENAI_", "ANTHROPIC_", "CO"))}
    env["BATCHER_MODE"] = "auto"
    # This machine runs Postgres and Redis at the default addresses: make the probe see none, as on
    # a fresh laptop, and let `auto` choose.
    launcher = "import batcher._mode as m; m.answers = lambda host, port: False; from batcher.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", launcher, "demo", "-n", DEMO_PROMPTS, "--latency-ms", "20", "-c", "20"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    _assert_ran_end_to_end(result)
    assert "running embedded: results in ./batcher.db" in result.stderr
    assert (tmp_path / "batcher.db").exists()


@pytest.mark.usefixtures("worker")
def test_demo_against_the_cluster(cluster_env: dict[str, str], tmp_path: Path) -> None:
    """URLs set (the test database and Redis): a real worker process, Postgres and Redis."""
    env = {k: v for k, v in cluster_env.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "CO_"))}
    result = _demo(env, tmp_path)
    _assert_ran_end_to_end(result)
    assert "database migrated" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no batcher.db, no schedule or report files in the working directory
    # One line for the migrations, no log lines of alembic or the fake provider, no colour codes when piped.
    out = result.stdout + result.stderr
    assert "alembic" not in out and "Running upgrade" not in out and "fake provider listening" not in out
    assert "\x1b[" not in out
    # Progress reached the pipe as plain lines.
    assert f"{DEMO_PROMPTS}/{DEMO_PROMPTS} done, {DEMO_PROMPTS} ok, 0 failed" in result.stderr
    # The demo's own queues leave no Redis key behind for good.
    tag = f"demo-{_demo_pid(result.stdout)}"
    client = redis.Redis.from_url(cluster_env["BATCHER_REDIS_URL"])
    keys = list(client.scan_iter(match=f"*{tag}*"))
    assert keys, "the demo's queue bindings should still be there, expiring"
    assert all(0 < client.ttl(key) <= DEMO_KEY_TTL_S for key in keys), keys
    client.close()


def _demo_pid(stdout: str) -> str:
    """The process id in the name of the demo's own queue, which it prints: "... (batcher.demo-1234)"."""
    return stdout.split("on a queue of its own (batcher.demo-", 1)[1].split(")", 1)[0]
