"""Prometheus metrics: every metric batcher exports is defined here.

Two kinds, served from two places:

* **What a process did**: requests by outcome, provider latency, retries, rate-limit deferrals.
  Workers record them with the ``observe_*`` functions; each worker process serves its own on
  ``BATCHER_METRICS_PORT`` (:func:`start_worker_exporter`), and Prometheus sums across processes.
* **What the cluster holds**: jobs by state, active requests by state (Postgres) and queue depth
  (Redis), read at scrape time by :class:`ClusterCollector` with a short cache. Only the API's
  ``/metrics`` serves them, so they are not multiplied by the number of workers.

Model names are labels: batcher serves whatever models users name, so their count is the
operator's to watch (one series per provider/model/outcome, a handful of models in practice).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from batcher._states import JobState, RequestState

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from batcher._config import Settings

log = logging.getLogger("batcher.metrics")

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""LLM calls take from a tenth of a second to minutes (long generations, reasoning models)."""
WAIT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CLUSTER_CACHE_S = 5.0
"""Scrapes within this long of each other share one read of Postgres and Redis."""
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)
"""kombu's Redis transport keeps prioritised messages in sibling lists ``<queue>\\x06\\x16<n>``."""
KOMBU_UNACKED_KEY = "unacked"

REQUESTS = Counter(
    "batcher_requests",
    "Requests that reached a final state on this worker, by outcome (succeeded, failed, expired, skipped, cancelled).",
    ["provider", "model", "outcome"],
)
PROVIDER_LATENCY = Histogram(
    "batcher_provider_latency_seconds",
    "Time from sending a request to the provider to its complete answer (answered calls).",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS_S,
)
RETRIES = Counter(
    "batcher_retries",
    "Attempts that failed with a retryable error and were scheduled again, by error type.",
    ["provider", "model", "error_type"],
)
RATELIMIT_DEFERRALS = Counter(
    "batcher_ratelimit_deferrals",
    "Attempts given back because a shared rate limit (BATCHER_RATE_LIMITS) had no capacity.",
    ["provider", "model"],
)
RATELIMIT_WAIT = Histogram(
    "batcher_ratelimit_wait_seconds",
    "How long deferred attempts were told to wait for rate-limit capacity.",
    ["provider", "model"],
    buckets=WAIT_BUCKETS_S,
)
ADAPTIVE_LIMIT = Gauge(
    "batcher_adaptive_concurrency_limit",
    "The cluster's adaptive limit of calls in flight for a deployment of a model, as this worker last saw "
    "it (the same figure on every worker: aggregate with max). deployment: a short hash of base and key.",
    ["provider", "model", "deployment"],
    multiprocess_mode="max",
)
ADAPTIVE_IN_FLIGHT = Gauge(
    "batcher_adaptive_in_flight",
    "Calls in flight for a deployment of a model, cluster-wide, as this worker last saw it (aggregate with max).",
    ["provider", "model", "deployment"],
    multiprocess_mode="max",
)
LEARNED_LIMIT_UPDATES = Counter(
    "batcher_learned_limit_updates",
    "Times a provider's rate-limit headers changed the requests or tokens per minute learned for a deployment.",
    ["provider", "model"],
)


def observe_request(provider: str, model: str, outcome: str, latency_s: float | None = None) -> None:
    """A request ended with ``outcome``; ``latency_s`` is the provider call's duration when it answered."""
    REQUESTS.labels(provider, model, outcome).inc()
    if latency_s is not None:
        PROVIDER_LATENCY.labels(provider, model).observe(latency_s)


def observe_retry(provider: str, model: str, error_type: str) -> None:
    RETRIES.labels(provider, model, error_type).inc()


def observe_deferral(provider: str, model: str, wait_s: float) -> None:
    RATELIMIT_DEFERRALS.labels(provider, model).inc()
    RATELIMIT_WAIT.labels(provider, model).observe(wait_s)


def observe_adaptive(
    provider: str, model: str, deployment: str, limit: float, in_flight: int, learned_changed: bool
) -> None:
    """A call's release: the slot's limit and in-flight count as the cluster holds them now."""
    ADAPTIVE_LIMIT.labels(provider, model, deployment).set(limit)
    ADAPTIVE_IN_FLIGHT.labels(provider, model, deployment).set(in_flight)
    if learned_changed:
        LEARNED_LIMIT_UPDATES.labels(provider, model).inc()


# --- worker exporter -------------------------------------------------------------------------

_exporter_lock = threading.Lock()
_exporter_port: int | None = None


def serve_metrics(first_port: int, tries: int, host: str = "0.0.0.0") -> tuple[WSGIServer, int] | None:  # noqa: S104
    """Serve this process's metrics on the first free port of ``first_port .. first_port + tries - 1``."""
    for port in range(first_port, first_port + tries):
        try:
            server, _thread = start_http_server(port, addr=host)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return server, port
    return None


def start_worker_exporter(settings: Settings) -> int | None:
    """Start the worker's exporter (once per process); returns its port, or None when off or none was free.

    Several worker processes on one host cannot share a port, so each takes the first free one of
    ``metrics_port .. metrics_port + metrics_port_range - 1``. Metrics are never worth a worker: when
    no port is free it logs a warning and goes on without them.
    """
    global _exporter_port
    if settings.metrics_port == 0:
        return None
    with _exporter_lock:
        if _exporter_port is not None:
            return _exporter_port
        last = settings.metrics_port + settings.metrics_port_range - 1
        try:
            served = serve_metrics(settings.metrics_port, settings.metrics_port_range, settings.metrics_host)
        except OSError as exc:
            log.warning("metrics exporter not started: %s", exc)
            return None
        if served is None:
            log.warning(
                "no free metrics port in %d-%d (set BATCHER_METRICS_PORT_RANGE to at least the number of "
                "workers per host); this worker serves no metrics",
                settings.metrics_port,
                last,
            )
            return None
        _exporter_port = served[1]
        log.info("serving metrics on http://%s:%d/metrics", settings.metrics_host, _exporter_port)
        return _exporter_port


def install_celery_hooks() -> None:
    """Start the exporter when a worker starts (Celery's ``worker_init``; the threads pool is one process)."""
    from celery.signals import worker_init

    worker_init.connect(_on_worker_init, weak=False, dispatch_uid="batcher.metrics.worker_init")


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    from batcher._config import get_settings

    app = getattr(sender, "app", None)
    settings = getattr(getattr(app, "conf", None), "batcher_settings", None) or get_settings()
    start_worker_exporter(settings)


# --- cluster gauges (API) --------------------------------------------------------------------


class ClusterCollector(Collector):
    """Jobs by state, active requests by state and queue depth, read at scrape time (cached briefly).

    A source that cannot be read is reported by ``batcher_metrics_source_up{source} 0`` instead of
    failing the whole scrape, so the process's own metrics are still served.
    """

    def __init__(
        self,
        engine: Callable[[], Engine],
        redis: Callable[[], Any],
        queues: Sequence[str],
        *,
        cache_s: float = CLUSTER_CACHE_S,
    ) -> None:
        self._engine = engine
        self._redis = redis
        self._queues = tuple(dict.fromkeys(queues))
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._read_at = float("-inf")

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._cache_s:
                self._cached = self._read()
                self._read_at = time.monotonic()
            return list(self._cached)

    def _read(self) -> list[Metric]:
        up = GaugeMetricFamily(
            "batcher_metrics_source_up", "1 if the last read of this source worked.", labels=["source"]
        )
        metrics: list[Metric] = []
        try:
            metrics += self._read_postgres()
            up.add_metric(["postgres"], 1)
        except Exception:  # any failure: report it as a gauge, never fail the scrape
            log.warning("metrics: reading job counts from the database failed", exc_info=True)
            up.add_metric(["postgres"], 0)
        try:
            metrics += self._read_redis()
            up.add_metric(["redis"], 1)
        except Exception:
            log.warning("metrics: reading queue depth from Redis failed", exc_info=True)
            up.add_metric(["redis"], 0)
        return [*metrics, up]

    def _read_postgres(self) -> list[Metric]:
        from batcher._db.contract import store_for

        with self._engine().connect() as conn:
            store = store_for(conn)
            jobs = store.jobs_by_state(conn)
            active = store.open_requests_by_state(conn)
            backlog = store.backlog_size(conn)
        by_job_state = GaugeMetricFamily("batcher_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            by_job_state.add_metric([state.value], float(jobs.get(state.value, 0)))
        by_request_state = GaugeMetricFamily(
            "batcher_active_requests",
            "Requests not yet final: queued (waiting for a worker), running, retrying (waiting for a next attempt).",
            labels=["state"],
        )
        for request_state in (RequestState.QUEUED, RequestState.RUNNING, RequestState.RETRYING):
            by_request_state.add_metric([request_state.value], float(active.get(request_state.value, 0)))
        in_backlog = GaugeMetricFamily(
            "batcher_backlog_requests",
            "Queued requests still in Postgres, not yet released to the broker by the dispatcher (issue #15).",
            value=float(backlog),
        )
        return [by_job_state, by_request_state, in_backlog]

    def _read_redis(self) -> list[Metric]:
        client = self._redis()
        pipe = client.pipeline(transaction=False)
        for queue in self._queues:
            pipe.llen(queue)
            for step in KOMBU_PRIORITY_STEPS:
                pipe.llen(f"{queue}{KOMBU_PRIORITY_SEP}{step}")
        pipe.hlen(KOMBU_UNACKED_KEY)
        lengths = pipe.execute()
        depth = GaugeMetricFamily(
            "batcher_queue_depth", "Messages waiting in the broker queue for a worker.", labels=["queue"]
        )
        per_queue = 1 + len(KOMBU_PRIORITY_STEPS)
        for i, queue in enumerate(self._queues):
            depth.add_metric([queue], float(sum(lengths[i * per_queue : (i + 1) * per_queue])))
        unacked = GaugeMetricFamily(
            "batcher_broker_unacked",
            "Messages delivered to workers and not yet acknowledged (running, or holding a retry countdown).",
            value=float(lengths[-1]),
        )
        return [depth, unacked]


class _ProcessMetrics(Collector):
    """This process's own metrics (the default registry), alongside the cluster gauges."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def api_registry(settings: Settings, engine: Callable[[], Engine], redis: Callable[[], Any]) -> CollectorRegistry:
    """What the API's ``/metrics`` serves: this process's metrics plus the cluster gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessMetrics())
    registry.register(ClusterCollector(engine, redis, [settings.queue, settings.race_queue]))
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition in the format the scraper asked for (Prometheus text or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
