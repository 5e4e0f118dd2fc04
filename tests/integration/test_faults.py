"""Nothing lost, nothing paid twice: faults injected into real workers, Redis and the provider."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import redis

from batcher import Client, JobState, MalformedResponseError
from batcher.testing import FakeProvider, ModelBehaviour, max_in_window
from batcher.testing.servers import RedisServer
from tests.integration.helpers import exactly_one_response_each, requests_of, rows, until
from tests.integration.test_liveness import FAST
from tests.support.workers import IsolatedCluster


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


def test_429_and_5xx_storm_every_request_succeeds_within_budget(client: Client, fake_provider: FakeProvider) -> None:
    model = "gpt-storm"
    fake_provider.set_behaviour(model, ModelBehaviour(error_rate_429=0.2, error_rate_5xx=0.1, retry_after_s=0.05))
    n, max_attempts = 300, 12
    job = client.submit(
        model=model,
        messages=[[{"role": "user", "content": f"storm {i}"}] for i in range(n)],
        num_retries=max_attempts - 1,
    )
    status = job.wait(timeout=180)
    assert (status.state, status.succeeded) == (JobState.COMPLETED, n)
    reqs = requests_of(client, job.id)
    assert max(r["attempts"] for r in reqs) <= max_attempts
    assert sum(r["attempts"] for r in reqs) > n  # some really were retried
    # Every attempt the database counts reached the provider, and nothing more.
    assert fake_provider.count(model=model) == sum(r["attempts"] for r in reqs)
    statuses = Counter(r.status for r in fake_provider.requests if r.model == model)
    assert statuses[429] > 0 and statuses[500] > 0


def test_redis_flush_mid_batch_loses_nothing(
    cluster_env: dict[str, str], fake_provider: FakeProvider, log_dir: Path
) -> None:
    """FLUSHALL of a Redis of the test's own: every message of the window and the dispatch epoch are
    gone; the workers' leader releases what is still queued again, by itself (no beat, no call)."""
    model = "gpt-flush"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=100))
    n = 600
    with RedisServer(log_dir) as server:
        overrides = {**FAST, "BATCHER_REDIS_URL": server.url}
        with (
            IsolatedCluster(cluster_env, log_dir, overrides, own_database=True) as cluster,
            cluster.client() as client,
        ):
            job = client.submit(model=model, messages=[[{"role": "user", "content": f"f{i}"}] for i in range(n)])
            until(lambda: job.status().succeeded >= 100, 60, "100 done")
            flusher = server.client()
            flusher.flushall()
            flusher.close()
            status = job.wait(timeout=120)
            assert (status.state, status.succeeded) == (JobState.COMPLETED, n)
            exactly_one_response_each(client, job.id, n)


def test_shared_rate_limit_across_two_workers_is_never_exceeded(
    cluster_env: dict[str, str], fake_provider: FakeProvider, log_dir: Path
) -> None:
    """600 RPM scaled down to 50 per 4 s so the test takes seconds; same mechanism and script."""
    model = "gpt-ratelimited"
    limit, window_s = 50, 4.0
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=20))
    overrides = {"BATCHER_RATE_LIMITS": json.dumps({f"openai/{model}": {"rpm": limit, "window_s": window_s}})}
    n = 150
    with (
        IsolatedCluster(cluster_env, log_dir, overrides, n_workers=2) as cluster,
        cluster.client() as client,
    ):
        job = client.submit(model=model, messages=[[{"role": "user", "content": f"rl{i}"}] for i in range(n)])
        status = job.wait(timeout=120)
        assert (status.state, status.succeeded) == (JobState.COMPLETED, n)
    arrivals = [r.arrived_monotonic for r in fake_provider.requests if r.model == model]
    assert len(arrivals) == n  # no 429 ever came back, so nothing was sent twice
    assert max_in_window(arrivals, window_s) <= limit
    assert max(arrivals) - min(arrivals) >= 2 * window_s * 0.9  # it really was paced: 150 at 50 per 4 s


def test_deadline_expires_what_was_not_sent(client: Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-deadline", ModelBehaviour(latency_ms=400))
    n = 120
    job = client.submit(
        model="gpt-deadline",
        messages=[[{"role": "user", "content": f"d{i}"}] for i in range(n)],
        completion_window="1s",
    )
    status = job.wait(timeout=60)
    assert status.state is JobState.EXPIRED
    assert status.succeeded > 0 and status.expired > 0
    assert status.succeeded + status.expired + status.failed == n
    expired = [r for r in job.results() if r.state.value == "expired"]
    assert len(expired) == status.expired
    assert fake_provider.count(model="gpt-deadline") == status.succeeded


def test_html_and_non_json_answers_are_stored_errors(client: Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-html", ModelBehaviour(malformed="html_200"))
    fake_provider.set_behaviour("gpt-text", ModelBehaviour(malformed="non_json"))
    every = client.submit_all(
        models=["gpt-html", "gpt-text", "gpt-4o-mini"], messages=[{"role": "user", "content": "x"}], num_retries=1
    )
    status = every.wait(timeout=60)
    assert (status.succeeded, status.failed) == (1, 2)
    results = list(every.results())
    assert isinstance(results[0].error, MalformedResponseError) and results[0].attempts == 2
    assert isinstance(results[1].error, MalformedResponseError)


@pytest.fixture
def captured_worker_log(worker: object) -> Path:
    return worker.log_path  # type: ignore[attr-defined, no-any-return]


def test_api_keys_leave_no_trace(
    client: Client, fake_provider: FakeProvider, captured_worker_log: Path, redis_url: str, database_url: str
) -> None:
    from tests.conftest import FAKE_KEYS

    per_call_key = "sk-per-call-SECRET-9f8e7d6c5b4a"
    jobs = [
        client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "env key"}]]),
        client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "call key"}]], api_key=per_call_key),
    ]
    for job in jobs:
        assert job.wait(timeout=30).succeeded == 1
    fake_provider.configure(expected_api_key="sk-something-else")
    try:
        failing = client.submit(model="claude-3-haiku", messages=[[{"role": "user", "content": "bad key"}]])
        assert failing.wait(timeout=30).failed == 1
    finally:
        fake_provider.configure(expected_api_key=None)
    # The per-call key really was used for the call...
    sent = [r for r in fake_provider.requests if r.prompt == "call key"]
    assert sent and sent[-1].api_key == per_call_key
    secrets = [per_call_key, *FAKE_KEYS.values()]
    # ...and is nowhere at rest: not in Postgres, not in the worker's logs, not in Redis.
    dump = json.dumps(
        [
            rows(client, f"SELECT to_jsonb(t.*)::text AS row FROM {table} t")
            for table in ("jobs", "requests", "responses")
        ],
        default=str,
    )
    logs = captured_worker_log.read_text(errors="replace")
    r = redis.Redis.from_url(redis_url)
    redis_text = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        redis_text.append(repr(key))
        if kind == b"string":
            redis_text.append(repr(r.get(key)))
        elif kind == b"list":
            redis_text.append(repr(r.lrange(key, 0, -1)))
        elif kind == b"hash":
            redis_text.append(repr(r.hgetall(key)))
        elif kind == b"zset":
            redis_text.append(repr(r.zrange(key, 0, -1)))
        elif kind == b"set":
            redis_text.append(repr(r.smembers(key)))
    r.close()
    blob = "\n".join(redis_text)
    for secret in secrets:
        assert secret not in dump
        assert secret not in logs
        assert secret not in blob
    error = rows(client, "SELECT error FROM requests WHERE job_id = :id", id=failing.id)[0]["error"]
    assert "401" in error or "auth" in error.lower()
