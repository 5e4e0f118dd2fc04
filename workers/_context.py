"""Per-process resources of a worker, created on first use and shared by its threads.

One pooled ``httpx.Client`` (keep-alive connections reused across tasks), one SQLAlchemy
engine sized to the concurrency, one Redis client. ``worker_process_init`` is not sent by
the threads pool, so these are created lazily under a lock rather than in a signal.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

import httpx
import redis
from celery import Celery
from sqlalchemy import Engine

from batcher._config import Settings
from batcher._db.engine import get_engine
from batcher._ratelimit import RateLimiter
from batcher._retry import RetryPolicy

CONNECT_TIMEOUT_S = 10.0


@dataclass
class WorkerContext:
    settings: Settings
    app: Celery

    @cached_property
    def engine(self) -> Engine:
        return get_engine(self.settings)

    @cached_property
    def db(self) -> Engine:
        """Autocommit on Postgres: every hot-path write is one statement, so BEGIN/COMMIT would only add
        round trips. SQLite (embedded) runs its several statements per write in a transaction."""
        if self.engine.dialect.name == "sqlite":
            return self.engine
        return self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @cached_property
    def redis(self) -> redis.Redis[bytes]:
        override = self.app.conf.get("batcher_coordination")
        if override is not None:  # embedded mode's in-process server
            return override  # type: ignore[no-any-return]
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, health_check_interval=30)

    @cached_property
    def http(self) -> httpx.Client:
        n = self.settings.worker_concurrency
        return httpx.Client(
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            timeout=httpx.Timeout(self.settings.request_timeout_s, connect=CONNECT_TIMEOUT_S),
            follow_redirects=False,
        )

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.redis, self.settings.rate_limits)

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(max_attempts=s.max_attempts, backoff_base_s=s.backoff_base_s, backoff_max_s=s.backoff_max_s)


_lock = threading.Lock()
_contexts: dict[int, WorkerContext] = {}


def get_context(app: Celery) -> WorkerContext:
    """The app's context, built once per process (double-checked under a lock for the threads pool)."""
    ctx = _contexts.get(id(app))
    if ctx is None:
        with _lock:
            ctx = _contexts.get(id(app))
            if ctx is None:
                ctx = WorkerContext(settings=app.conf.batcher_settings, app=app)
                # Touch the cached properties now, under the lock, so threads never race to build them.
                _ = ctx.engine, ctx.db, ctx.redis, ctx.http, ctx.limiter, ctx.retry_policy
                _contexts[id(app)] = ctx
    return ctx
