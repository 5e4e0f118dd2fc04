"""What operators see: a worker's /metrics and JSON logs, the API's cluster gauges, Flower.

Real worker processes, Postgres and Redis; the provider is the fake.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from batcher import Client, JobState, Settings
from batcher.api import create_app
from batcher.testing import FakeProvider, ModelBehaviour
from tests.support.api_server import free_port
from tests.support.workers import IsolatedCluster

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(exposition: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _prompts(tag: str, n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{tag} {i}"}] for i in range(n)]


def _client_for(env: dict[str, str], settings: Settings) -> Client:
    return Client(settings.model_copy(update={"queue": env["BATCHER_QUEUE"], "race_queue": env["BATCHER_RACE_QUEUE"]}))


def test_worker_metrics_and_json_logs_show_the_job_just_run(
    settings: Settings, cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    model, limited = f"gpt-obs-{tag}", f"gpt-obs-limited-{tag}"
    fake_provider.set_behaviour(model, ModelBehaviour(fail_first_n=2, fail_first_status=500))
    port = free_port()
    overrides = {
        "BATCHER_LOG_FORMAT": "json",
        "BATCHER_LOG_LEVEL": "DEBUG",  # per-request lines (Celery's received/succeeded, retries) are DEBUG
        "BATCHER_METRICS_PORT": str(port),
        "BATCHER_METRICS_PORT_RANGE": "1",
        "BATCHER_METRICS_HOST": "127.0.0.1",
        # 2 requests per second: the third and fourth prompt are deferred, not sent.
        "BATCHER_RATE_LIMITS": json.dumps({f"openai/{limited}": {"rpm": 2, "window_s": 1}}),
    }
    with IsolatedCluster(cluster_env, tmp_path, overrides) as cluster, _client_for(cluster.env, settings) as client:
        job = client.submit(model=model, messages=_prompts("obs", 5))
        assert job.wait(timeout=60).succeeded == 5
        paced = client.submit(model=limited, messages=_prompts("paced", 4))
        assert paced.wait(timeout=60).succeeded == 4
        samples = _samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        log_text = cluster.logs()

    # Metrics: what this worker did, by provider and model.
    assert _get(samples, "batcher_requests_total", provider="openai", model=model, outcome="succeeded") == 5
    assert _get(samples, "batcher_requests_total", provider="openai", model=model, outcome="failed") == 0
    assert _get(samples, "batcher_retries_total", provider="openai", model=model, error_type="ProviderServerError") == 2
    assert _get(samples, "batcher_provider_latency_seconds_count", provider="openai", model=model) == 5
    assert _get(samples, "batcher_requests_total", provider="openai", model=limited, outcome="succeeded") == 4
    deferrals = _get(samples, "batcher_ratelimit_deferrals_total", provider="openai", model=limited)
    assert deferrals >= 2
    assert _get(samples, "batcher_ratelimit_wait_seconds_count", provider="openai", model=limited) == deferrals

    # Logs: one JSON object per line, and every line about the job carries its id.
    records = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    job_id = str(job.id)
    # (Celery's and kombu's own DEBUG lines, which print whole messages, are their internals, not lines about it.)
    ours = ("batcher", "celery.app.trace", "celery.worker.strategy")
    about_job = [
        r for r in records if job_id in json.dumps(r) and (r["level"] != "DEBUG" or r["logger"].startswith(ours))
    ]
    assert about_job
    assert all(r.get("job_id") == job_id for r in about_job), [r for r in about_job if r.get("job_id") != job_id]
    task_lines = [r for r in records if r["logger"].startswith(("celery.app.trace", "celery.worker.strategy"))]
    assert task_lines and all("job_id" in r for r in task_lines)  # Celery's received/succeeded, finalizer included
    received = [r for r in about_job if r["message"].endswith("received") and r.get("task") == "batcher.run_request"]
    assert len(received) == 5 + 2 and {r["idx"] for r in received} == set(range(5))  # 2 attempts were retried
    retried = [r for r in about_job if r["logger"] == "batcher.worker" and "retrying" in r["message"]]
    assert len(retried) == 2
    assert all((r["provider"], r["model"], r["attempt"], r["level"]) == ("openai", model, 1, "DEBUG") for r in retried)
    assert {"time", "level", "logger", "message"} <= set(retried[0])


@pytest.fixture
def idle_queue(settings: Settings, cluster_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Queues no worker consumes, so what is published stays there to be counted."""
    tag = uuid.uuid4().hex[:8]
    env = {"BATCHER_QUEUE": f"obs-idle-{tag}", "BATCHER_RACE_QUEUE": f"obs-idle-{tag}.race"}
    yield env
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(*env.values())
    client.close()


def test_api_metrics_show_jobs_by_state_and_queue_depth(settings: Settings, idle_queue: dict[str, str]) -> None:
    scoped = settings.model_copy(
        update={"queue": idle_queue["BATCHER_QUEUE"], "race_queue": idle_queue["BATCHER_RACE_QUEUE"]}
    )

    def scrape() -> Samples:
        with TestClient(create_app(scoped)) as http:  # a fresh app: no cached reading
            response = http.get("/metrics")
        assert response.status_code == 200
        return _samples(response.text)

    before = scrape()
    with Client(scoped) as client:
        job = client.submit(model="gpt-obs-idle", messages=_prompts("idle", 3))
        during = scrape()
        assert job.cancel().state == JobState.CANCELLED
    after = scrape()

    queue = idle_queue["BATCHER_QUEUE"]
    # No worker consumes this queue: the job stays in the backlog (Postgres), the broker holds none of it.
    assert _get(during, "batcher_queue_depth", queue=queue) == 0
    assert _get(during, "batcher_backlog_requests") >= _get(before, "batcher_backlog_requests") + 3
    assert _get(during, "batcher_jobs", state="queued") == _get(before, "batcher_jobs", state="queued") + 1
    assert _get(during, "batcher_active_requests", state="queued") >= 3
    assert _get(after, "batcher_jobs", state="cancelled") == _get(before, "batcher_jobs", state="cancelled") + 1
    assert _get(after, "batcher_metrics_source_up", source="postgres") == 1
    assert _get(after, "batcher_metrics_source_up", source="redis") == 1


def _wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_flower_shows_the_tasks_of_a_job(cluster_env: dict[str, str], client: Client, tmp_path: Path) -> None:
    """``batcher flower`` on the cluster's broker sees each request's task through the workers' events."""
    port = free_port()
    log_path = tmp_path / "flower.log"
    env = {**cluster_env, "FLOWER_UNAUTHENTICATED_API": "true", "BATCHER_LOG_FORMAT": "text"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batcher.cli", "flower", f"--port={port}", "--address=127.0.0.1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(lambda: b"Connected to redis" in log_path.read_bytes(), 60, "Flower to connect to the broker")

            def listed(job_id: object) -> bool:
                tasks = httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=5).json()
                ids = {f"{job_id}:{i}" for i in range(3)}
                return all(
                    tasks.get(t, {}).get("state") == "SUCCESS" and tasks[t].get("name") == "batcher.run_request"
                    for t in ids
                )

            # Events are broadcast: Flower sees only those sent after it subscribed, a moment after it
            # connected. So run jobs until one has been seen whole (the first, unless that moment was long).
            deadline = time.monotonic() + 60
            while True:
                job = client.submit(model="gpt-flower", messages=_prompts("flower", 3))
                job.wait(timeout=30)
                try:
                    _wait_for(lambda job_id=job.id: listed(job_id), 5, f"Flower to list the tasks of job {job.id}")
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
