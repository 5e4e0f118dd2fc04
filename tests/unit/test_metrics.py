"""Metric definitions and the worker exporter, without a cluster."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest
import redis
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from batcher import _metrics
from batcher._config import Settings


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_observe_functions_count_by_provider_model_and_outcome() -> None:
    model = f"m-{uuid.uuid4().hex[:6]}"
    _metrics.observe_request("openai", model, "succeeded", 1.5)
    _metrics.observe_request("openai", model, "succeeded", 0.2)
    _metrics.observe_request("openai", model, "failed")  # no answer, no latency
    _metrics.observe_retry("openai", model, "RateLimitError")
    _metrics.observe_deferral("openai", model, 3.0)

    assert _value("batcher_requests_total", provider="openai", model=model, outcome="succeeded") == 2
    assert _value("batcher_requests_total", provider="openai", model=model, outcome="failed") == 1
    assert _value("batcher_provider_latency_seconds_count", provider="openai", model=model) == 2
    assert _value("batcher_provider_latency_seconds_sum", provider="openai", model=model) == pytest.approx(1.7)
    assert _value("batcher_provider_latency_seconds_bucket", provider="openai", model=model, le="0.25") == 1
    assert _value("batcher_retries_total", provider="openai", model=model, error_type="RateLimitError") == 1
    assert _value("batcher_ratelimit_deferrals_total", provider="openai", model=model) == 1
    assert _value("batcher_ratelimit_wait_seconds_sum", provider="openai", model=model) == 3.0


def _occupied_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_exporter_takes_the_next_free_port_when_another_worker_holds_the_first() -> None:
    with _occupied_port() as taken:
        first = taken.getsockname()[1]
        served = _metrics.serve_metrics(first, 20, "127.0.0.1")
        assert served is not None
        server, port = served
        try:
            assert first < port < first + 20
            body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            names = {family.name for family in text_string_to_metric_families(body)}
            assert {"batcher_requests", "batcher_provider_latency_seconds", "batcher_retries"} <= names
        finally:
            server.shutdown()
            server.server_close()


def test_exporter_gives_up_quietly_when_every_port_is_taken() -> None:
    with _occupied_port() as taken:
        assert _metrics.serve_metrics(taken.getsockname()[1], 1, "127.0.0.1") is None


def test_exporter_is_off_by_default() -> None:
    assert Settings().metrics_port == 0
    assert _metrics.start_worker_exporter(Settings(metrics_port=0)) is None


def test_unreachable_sources_are_reported_not_fatal() -> None:
    """Postgres and Redis down: the scrape still answers, saying which source failed."""
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", connect_args={"connect_timeout": 2})
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=2)
    collector = _metrics.ClusterCollector(lambda: engine, lambda: client, ["q"])
    try:
        metrics = {m.name: m for m in collector.collect()}
    finally:
        engine.dispose()
        client.close()
    up = {s.labels["source"]: s.value for s in metrics["batcher_metrics_source_up"].samples}
    assert up == {"postgres": 0.0, "redis": 0.0}
    assert "batcher_jobs" not in metrics


def test_render_speaks_openmetrics_when_asked() -> None:
    registry = _metrics.api_registry(Settings(), lambda: create_engine("sqlite://"), lambda: None)
    _body, content_type = _metrics.render(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    _body, content_type = _metrics.render(registry, None)
    assert content_type.startswith("text/plain")
