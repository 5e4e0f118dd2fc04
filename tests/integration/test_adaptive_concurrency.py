"""Adaptive concurrency (issue #15) with real worker processes, Redis, Postgres and the fake provider: limits
learned from the provider's headers, a 429-ing model that slows no other, a limit that shrinks on 5xx and
grows back. Each test has a fake provider of its own, so its models and windows are its own."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from batcher import Client, Settings
from batcher._keys import adaptive_key
from batcher.testing import FakeProvider, ModelBehaviour
from tests.support.api_server import free_port
from tests.support.workers import IsolatedCluster

WAIT_S = 90.0


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(port=0) as fp:
        yield fp


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:  # type: ignore[type-arg]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _prompts(tag: str, n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{tag} {i}"}] for i in range(n)]


def _client(cluster: IsolatedCluster, settings: Settings) -> Client:
    env = cluster.env
    return Client(settings.model_copy(update={"queue": env["BATCHER_QUEUE"], "race_queue": env["BATCHER_RACE_QUEUE"]}))


def _state(r: redis.Redis, model: str) -> dict[str, str]:  # type: ignore[type-arg]
    """The adaptive state of the (only) deployment of ``model`` ({} before its first call)."""
    keys = list(r.scan_iter(match=f"batcher:ratelimit:adaptive|openai/{model}|*:s"))
    assert len(keys) <= 1, keys
    return r.hgetall(keys[0]) if keys else {}  # type: ignore[return-value]


def _metric(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait for a condition the system reaches by itself (each look is an event: a metric, a recording)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s:g}s: {what}")
        time.sleep(0.05)


def _env(fake: FakeProvider, **extra: str) -> dict[str, str]:
    return {**fake.environ(), "BATCHER_WORKER_CONCURRENCY": "20", **extra}


def test_a_limit_lower_than_configured_is_learned_from_headers(
    settings: Settings, cluster_env: dict[str, str], fake: FakeProvider, r: redis.Redis, tmp_path: Path
) -> None:
    """The provider enforces 10 requests a minute where 1,000 are configured: the first answer's headers
    teach the real figure, the job completes without a 429, and what exceeds it waits instead of being
    sent."""
    model = f"gpt-learn-{uuid.uuid4().hex[:6]}"
    fake.set_behaviour(model, ModelBehaviour(latency_ms=20, rpm_limit=10))
    port = free_port()
    overrides = _env(
        fake,
        BATCHER_RATE_LIMITS=json.dumps({f"openai/{model}": {"rpm": 1000}}),
        BATCHER_ADAPTIVE_INITIAL_CONCURRENCY="1",  # the first answer teaches before anything else is sent
        BATCHER_METRICS_PORT=str(port),
        BATCHER_METRICS_PORT_RANGE="1",
        BATCHER_METRICS_HOST="127.0.0.1",
    )
    with IsolatedCluster(cluster_env, tmp_path, overrides) as cluster, _client(cluster, settings) as client:
        job = client.submit(model=model, messages=_prompts("learn", 10))
        assert job.wait(timeout=WAIT_S).succeeded == 10
        assert fake.count(status=429) == 0
        assert _state(r, model)["rpm"] == "10"
        assert _metric(port, "batcher_learned_limit_updates_total", provider="openai", model=model) >= 1
        assert _metric(port, "batcher_adaptive_concurrency_limit", provider="openai", model=model) >= 1
        assert int(r.get(adaptive_key("openai", model)) or 0) >= 1

        # The minute's ten are spent: more requests wait (deferred) instead of drawing 429s.
        more = client.submit(model=model, messages=_prompts("more", 3))
        _until(
            lambda: _metric(port, "batcher_ratelimit_deferrals_total", provider="openai", model=model) >= 3,
            "the requests beyond the learned limit are deferred",
        )
        assert fake.count(model=model) == 10
        assert fake.count(status=429) == 0
        more.cancel()


def test_a_model_answering_429_does_not_slow_another(
    settings: Settings, cluster_env: dict[str, str], fake: FakeProvider, r: redis.Redis, tmp_path: Path
) -> None:
    """Model A answers every request 429 with a long retry-after: its deployment is paused. Model B, same
    provider, same base and key, runs alongside without one deferral."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"gpt-hot-{tag}", f"gpt-cool-{tag}"
    fake.set_behaviour(a, ModelBehaviour(fail_always_status=429, retry_after_s=120))
    fake.set_behaviour(b, ModelBehaviour(latency_ms=20))
    port = free_port()
    overrides = _env(
        fake,
        BATCHER_METRICS_PORT=str(port),
        BATCHER_METRICS_PORT_RANGE="1",
        BATCHER_METRICS_HOST="127.0.0.1",
        # As many as the worker's threads: B's own start never waits, so a deferral of B could only be A's doing.
        BATCHER_ADAPTIVE_INITIAL_CONCURRENCY="20",
    )
    with IsolatedCluster(cluster_env, tmp_path, overrides) as cluster, _client(cluster, settings) as client:
        hot = client.submit(model=a, messages=_prompts("hot", 40))
        fake.wait_for_requests(1, model=a, timeout=WAIT_S)
        _until(lambda: float(_state(r, a).get("paused_until", 0)) > time.time(), "model A is paused")
        cool = client.submit(model=b, messages=_prompts("cool", 60))
        assert cool.wait(timeout=WAIT_S).succeeded == 60
        assert _metric(port, "batcher_ratelimit_deferrals_total", provider="openai", model=b) == 0
        assert _metric(port, "batcher_ratelimit_deferrals_total", provider="openai", model=a) >= 1
        # A's deployment was told to wait 2 minutes: no more than its first wave reached the provider.
        assert fake.count(model=a) <= 20
        assert "paused_until" not in _state(r, b)
        hot.cancel()


def test_the_limit_shrinks_on_5xx_and_grows_back(
    settings: Settings, cluster_env: dict[str, str], fake: FakeProvider, r: redis.Redis, tmp_path: Path
) -> None:
    model = f"gpt-aimd-{uuid.uuid4().hex[:6]}"
    fake.set_behaviour(model, ModelBehaviour(latency_ms=20, fail_first_n=6, fail_first_status=503))
    overrides = _env(fake, BATCHER_ADAPTIVE_INITIAL_CONCURRENCY="8")
    with IsolatedCluster(cluster_env, tmp_path, overrides) as cluster, _client(cluster, settings) as client:
        job = client.submit(model=model, messages=_prompts("aimd", 200))
        assert job.wait(timeout=WAIT_S).succeeded == 200
        state = _state(r, model)
    # It shrank (a loss set the slow-start threshold below the initial 8), then successes grew it past that.
    assert float(state["ssthresh"]) < 8
    assert float(state["limit"]) > float(state["ssthresh"]) + 1


def test_a_concurrency_limit_is_found_without_a_header(
    settings: Settings, cluster_env: dict[str, str], fake: FakeProvider, r: redis.Redis, tmp_path: Path
) -> None:
    """The provider serves 4 requests at a time and says nothing else: bare 429s beyond them. The limit
    settles near 4, so most requests are never refused."""
    model = f"gpt-conc-{uuid.uuid4().hex[:6]}"
    fake.set_behaviour(model, ModelBehaviour(latency_ms=30, max_concurrency=4))
    overrides = _env(fake, BATCHER_ADAPTIVE_INITIAL_CONCURRENCY="2", BATCHER_MAX_ATTEMPTS="20")
    with IsolatedCluster(cluster_env, tmp_path, overrides) as cluster, _client(cluster, settings) as client:
        job = client.submit(model=model, messages=_prompts("conc", 200))
        assert job.wait(timeout=WAIT_S).succeeded == 200
        state = _state(r, model)
    refused = fake.count(model=model, status=429)
    assert fake.max_in_flight <= 20
    assert refused < 200 * 0.25, refused
    assert float(state["limit"]) < 12
