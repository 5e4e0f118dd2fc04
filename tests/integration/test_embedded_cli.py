"""The command line in embedded mode (no services: a SQLite file in the working directory, the worker inside
the process), as a user runs it: every command prints its answer and a clean stderr, ``status`` and
``results`` only read (nothing is sent to the provider), the job runs while ``batcher wait`` waits, and a
process that stops with requests in flight exits without a traceback. ``batcher worker`` has no cluster to
join there and says so in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from batcher.testing import FakeProvider, ModelBehaviour

NOISE = ("Traceback", "RuntimeError", "CRITICAL", "cannot schedule new futures")


@pytest.fixture
def embedded_env(fake_provider: FakeProvider) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHER_", "OPENAI_", "ANTHROPIC_", "CO_"))}
    return {
        **env,
        **fake_provider.environ(),
        "BATCHER_MODE": "embedded",
        "BATCHER_EMBEDDED_CONCURRENCY": "8",
        "OPENAI_API_KEY": "sk-test-openai-0123456789abcdef",
    }


def _batcher(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180
    )


def _clean(result: subprocess.CompletedProcess[str]) -> None:
    assert not [n for n in NOISE if n in result.stderr], result.stderr[-3000:]


def _prompts(path: Path, tag: str, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": f"{tag} {i}"}]}) + "\n" for i in range(n))
    )
    return path


def _sent(fake_provider: FakeProvider, model: str) -> int:
    return sum(1 for r in fake_provider.requests if r.model == model)


def test_submit_status_wait_results_in_a_fresh_directory(
    embedded_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = f"gpt-emb-{uuid.uuid4().hex[:6]}"
    prompts = _prompts(tmp_path / "prompts.jsonl", "emb", 12)

    submitted = _batcher(embedded_env, tmp_path, "submit", str(prompts), "--model", model)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert str(uuid.UUID(job_id)) == job_id
    assert submitted.stderr.splitlines() == [
        "running embedded: results in ./batcher.db; set BATCHER_REDIS_URL to use workers",
        f"embedded: stored in ./batcher.db; it runs while a process waits for it: batcher wait {job_id}",
    ]

    status = _batcher(embedded_env, tmp_path, "status", job_id)
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == (
        f"{job_id}  batch  queued  0/12 done: 0 succeeded, 0 failed, 0 cancelled, 0 expired"
    )
    assert status.stderr.splitlines() == [
        "running embedded: results in ./batcher.db; set BATCHER_REDIS_URL to use workers"
    ]
    assert _sent(fake_provider, model) == 0  # reading a job sends nothing

    waited = _batcher(embedded_env, tmp_path, "wait", job_id)
    assert waited.returncode == 0, waited.stderr
    assert f"{job_id}  batch  completed  12/12 done: 12 succeeded" in waited.stdout
    _clean(waited)
    assert _sent(fake_provider, model) == 12

    results = _batcher(embedded_env, tmp_path, "results", job_id)
    assert results.returncode == 0, results.stderr
    lines = [json.loads(line) for line in results.stdout.splitlines()]
    assert [line["index"] for line in lines] == list(range(12))
    assert lines[3]["response"]["choices"][0]["message"]["content"] == "echo: emb 3"
    _clean(results)
    assert _sent(fake_provider, model) == 12


def test_a_wait_that_gives_up_with_requests_in_flight_exits_cleanly(
    embedded_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = f"gpt-emb-slow-{uuid.uuid4().hex[:6]}"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=400))
    prompts = _prompts(tmp_path / "prompts.jsonl", "slow", 200)

    submitted = _batcher(embedded_env, tmp_path, "submit", str(prompts), "--model", model)
    job_id = submitted.stdout.strip()
    gave_up = _batcher(embedded_env, tmp_path, "wait", job_id, "--timeout", "1")
    assert gave_up.returncode == 4, gave_up.stderr  # EXIT_WAIT_TIMEOUT
    assert "error: job" in gave_up.stderr
    _clean(gave_up)


def test_worker_refuses_embedded_mode_in_one_line(embedded_env: dict[str, str], tmp_path: Path) -> None:
    result = _batcher(embedded_env, tmp_path, "worker")
    assert result.returncode == 2
    assert result.stderr == (
        "error: BATCHER_MODE=embedded runs its worker inside the process that waits for a job (batcher wait, or "
        "your program): there is no worker to start; set BATCHER_MODE=cluster with BATCHER_DATABASE_URL and "
        "BATCHER_REDIS_URL to run workers\n"
    )
    assert not (tmp_path / "batcher.db").exists()
