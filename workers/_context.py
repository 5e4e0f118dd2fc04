"""Per-process resources of a worker, created on first use and shared by its threads.

One SQLAlchemy engine sized to the concurrency, one Redis client, and one small
HTTP transport (``EgressTransport``, an httpcore pool) per worker thread (keep-alive
connections reused across that thread's tasks). ``worker_process_init`` is not sent by the
threads pool, so these are created lazily under a lock rather than in a signal.

Why a transport per thread rather than one shared pool: every request through a shared
httpcore pool takes the pool's lock and scans its connections, so with 100 threads on one
pool the lock is contended and the scan grows with the pool (encode/httpcore#1035).
Measured here (100 threads, 100 ms fake provider): one shared client 7.1 CPU-ms per
request, a client per thread 3.7 CPU-ms, and 50 % more requests per second.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import httpx
import redis
from celery import Celery
from celery.signals import worker_shutdown
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from batcher._config import Settings
from batcher._db.contract import JobStore, store_for
from batcher._db.engine import get_engine
from batcher._db.rows import Answer, Claim, ClaimedRequest, Progress
from batcher._egress import EgressPolicy, EgressTransport
from batcher._group import GroupRunner
from batcher._ratelimit import RateLimiter
from batcher._retry import RetryPolicy

log = logging.getLogger("batcher.worker")

CONNECTIONS_PER_THREAD = 4
"""Keep-alive connections each thread keeps (one per provider host it talks to, typically)."""
LIMITER_DRAIN_S = 5.0
"""At shutdown, the posted lease releases still queued get this long to reach Redis."""


@dataclass
class WorkerContext:
    settings: Settings
    app: Celery

    @cached_property
    def engine(self) -> Engine:
        return get_engine(self.settings)

    @cached_property
    def store(self) -> JobStore:
        """The job store of this worker's database (Postgres or SQLite), chosen once."""
        return store_for(self.engine)

    @cached_property
    def worker_id(self) -> str:
        """This process's name in ``workers`` and on the requests it claims (unique per start)."""
        return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    # --- in-flight requests (what a graceful shutdown waits for) ------------------------------

    @cached_property
    def _in_flight(self) -> set[str]:
        """Task ids (``<job>:<index>``) this process is running."""
        return set()

    @cached_property
    def _idle(self) -> threading.Condition:
        return threading.Condition()

    def started(self, key: str) -> bool:
        """Record a request this process starts; False if one of its threads runs it already."""
        with self._idle:
            if key in self._in_flight:
                return False
            self._in_flight.add(key)
            return True

    def finished(self, key: str) -> None:
        with self._idle:
            self._in_flight.discard(key)
            if not self._in_flight:
                self._idle.notify_all()

    @property
    def in_flight_count(self) -> int:
        with self._idle:
            return len(self._in_flight)

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no request is in flight (True) or ``timeout_s`` passed (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._in_flight, timeout=timeout_s)

    @cached_property
    def db(self) -> Engine:
        """Autocommit on Postgres: every hot-path write is one statement, so BEGIN/COMMIT would only add
        round trips. SQLite (embedded) runs its several statements per write in a transaction."""
        if self.engine.dialect.name == "sqlite":
            return self.engine
        return self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @cached_property
    def success_writer(self) -> GroupRunner[tuple[ClaimedRequest, Answer], Progress | None]:
        """Group commit of answers: the stores the threads queue, run in one round trip (``batcher._group``)."""
        return GroupRunner(self._store_successes, name="batcher-store")

    def _store_successes(self, items: Sequence[tuple[ClaimedRequest, Answer]]) -> list[Progress | BaseException | None]:
        """One write for the batch; if it fails for a reason other than the database being away (which
        every item's thread retries), each item alone, so only the item at fault gets the error."""
        try:
            with self.db.begin() as conn:
                return list(self.store.record_successes(conn, list(items)))
        except OperationalError:
            raise
        except Exception:
            if len(items) == 1:
                raise
        outcomes: list[Progress | BaseException | None] = []
        for claimed, answer in items:
            try:
                with self.db.begin() as conn:
                    outcomes.append(self.store.record_success(conn, claimed, answer))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    @cached_property
    def claimer(self) -> GroupRunner[Claim, ClaimedRequest | None]:
        """Claims the threads queue, taken in one round trip (``batcher._group``)."""
        return GroupRunner(self._claim_many, name="batcher-claim")

    def _claim_many(self, claims: Sequence[Claim]) -> list[ClaimedRequest | BaseException | None]:
        """As ``_store_successes``: one write for the batch, else each claim alone."""
        try:
            with self.db.begin() as conn:
                return list(self.store.claim_requests(conn, list(claims)))
        except OperationalError:
            raise
        except Exception:
            if len(claims) == 1:
                raise
        outcomes: list[ClaimedRequest | BaseException | None] = []
        for claim in claims:
            try:
                with self.db.begin() as conn:
                    outcomes.extend(self.store.claim_requests(conn, [claim]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    @cached_property
    def redis(self) -> redis.Redis[bytes]:
        override = self.app.conf.get("batcher_coordination")
        if override is not None:  # embedded mode's in-process server
            return override  # type: ignore[no-any-return]
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, health_check_interval=30)

    @cached_property
    def egress(self) -> EgressPolicy:
        """Where this worker's keys may go and which bases it trusts (its environment and settings)."""
        return EgressPolicy.from_settings(self.settings)

    @property
    def http(self) -> EgressTransport:
        """This thread's HTTP transport (one thread makes one call at a time, so its pool stays tiny).

        It applies the egress policy (``batcher._egress.EgressTransport``): configured and allowed bases
        go out as before; any other URL gets no worker key and is connected only to a public address
        checked at connect time. ``_providers.send`` hands it each request as is: no ``httpx.Client``
        around it, so no cookie jar (nothing one tenant's base sets is kept, let alone sent with another
        tenant's request), no auth or event hooks, and redirects are never followed (they would carry
        the key). The timeout is set on each request (``send``).
        """
        transport: EgressTransport | None = getattr(self._threads, "http", None)
        if transport is None:
            transport = EgressTransport(
                self.egress,
                verify=self._ssl_context,  # built once: loading CA certificates per transport costs ~20 ms
                limits=httpx.Limits(
                    max_connections=CONNECTIONS_PER_THREAD, max_keepalive_connections=CONNECTIONS_PER_THREAD
                ),
            )
            self._threads.http = transport
            with _lock:
                self._http_transports.append(transport)
        return transport

    @cached_property
    def _http_transports(self) -> list[EgressTransport]:
        return []

    def close(self) -> None:
        """At worker shutdown: send the rate-limit leases still queued to go back (``_release`` posts them),
        then close every thread's HTTP transport: no socket is left to the GC."""
        if "limiter" in self.__dict__ and not self.limiter.drain(LIMITER_DRAIN_S):
            log.warning("rate-limit leases still queued at shutdown; they expire by themselves")
        with _lock:
            transports, self._http_transports[:] = list(self._http_transports), []
        for transport in transports:
            transport.close()

    @cached_property
    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context()

    @cached_property
    def _threads(self) -> threading.local:
        return threading.local()

    @cached_property
    def limiter(self) -> RateLimiter:
        s = self.settings
        return RateLimiter(
            self.redis,
            s.rate_limits,
            adaptive=s.adaptive_concurrency,
            initial_concurrency=s.adaptive_initial_concurrency,
            max_concurrency=s.adaptive_max_concurrency,
            lease_margin_s=s.lease_margin_s,
            # A real Redis takes the threads' scripts together (embedded mode's in-process server: alone).
            grouped=self.app.conf.get("batcher_coordination") is None,
        )

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
                _ = (ctx.engine, ctx.store, ctx.db, ctx.redis, ctx.limiter, ctx.retry_policy, ctx.egress)
                _ = (ctx._ssl_context, ctx._threads, ctx._http_transports)
                _ = (ctx.worker_id, ctx._in_flight, ctx._idle, ctx.success_writer, ctx.claimer)
                _contexts[id(app)] = ctx
    return ctx


def close_context(app: Celery) -> None:
    """Forget ``app``'s context and close its HTTP transports (a worker's shutdown, embedded mode's stop)."""
    ctx = _contexts.pop(id(app), None)
    if ctx is not None:
        ctx.close()


def _close_on_shutdown(sender: object = None, **_: object) -> None:
    app = getattr(sender, "app", None)
    if app is not None:
        close_context(app)


def install_celery_hooks() -> None:
    """Close every thread's HTTP transport at worker shutdown (connected by ``workers.celery_app``)."""
    worker_shutdown.connect(_close_on_shutdown, weak=False, dispatch_uid="batcher.context.close")
