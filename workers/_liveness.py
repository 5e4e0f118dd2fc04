"""Liveness: every worker beats, one worker leads, and no worker leaves work behind.

* **Heartbeats.** Each worker process writes ``workers.heartbeat_at`` every
  ``BATCHER_HEARTBEAT_INTERVAL_S`` (5 s) from a thread of its own, and every claim records the
  claiming worker on the request. A worker whose heartbeat is older than
  ``BATCHER_WORKER_LAPSE_S`` (20 s) is dead.
* **Leadership.** The recovery sweep and the evaluation schedules need one runner, not a separate
  process: every worker (and ``batcher beat``, if you run one) tries to hold a Postgres session
  advisory lock; the holder is the leader and runs the sweep every ``BATCHER_RECOVERY_INTERVAL_S``
  (5 s) and the schedule tick. The lock is tied to one connection: a leader killed or cut off loses
  it as soon as Postgres sees the connection go, and another worker takes over at its next try.
  The sweep's statements run on that same connection, so a leader that lost its session cannot
  finish a sweep on a stale belief (the fence). A new leader waits one lapse before reaping, so
  workers that could not beat while Postgres was away are not taken for dead.
* **Dispatching.** The leader also runs the dispatcher (``batcher._dispatch``) in a thread of its
  own, every ``BATCHER_DISPATCH_INTERVAL_S`` (0.1 s) or when a submission wakes it: it keeps the
  broker's window topped up from the backlog in Postgres. It ticks only while this process holds
  the lock; a new leader's dispatcher continues from Postgres (it keeps nothing that matters).
* **Timings.** A killed worker's requests are queued again 20 to 25 s after the kill (lapse + one
  sweep interval) and re-run at once; a killed leader is replaced within one interval.
* **Graceful shutdown** (SIGTERM, a rolling deploy): the worker stops taking messages (Celery's
  warm shutdown), marks itself ``stopping``, lets in-flight calls finish for
  ``BATCHER_SHUTDOWN_GRACE_S`` (30 s), then hands back what is still running: the requests are
  queued again (no attempt spent) and their messages, and those it had reserved but not started,
  go back to the queue at once. Then it exits.

Embedded mode runs the same loops in its process, against SQLite, without the lock (one process
owns the file's work).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from batcher._db import recovery
from workers._broker import worker_transport_options
from workers._context import WorkerContext
from workers._recovery import SweepState, broker_messages, publish_each, sweep

log = logging.getLogger("batcher.liveness")

EXIT_AFTER_HANDOVER = 0
"""Exit status of a worker that handed its remaining work back at the end of its grace period."""


class Liveness:
    """The liveness of one process: a heartbeat thread (workers) and a leadership thread."""

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        heartbeat: bool = True,
        queues: list[str] | None = None,
        concurrency: int = 0,
        eval_tick: Callable[[], Any] | None = None,
    ) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.beats = heartbeat
        self.queues = queues or [self.settings.queue, self.settings.race_queue]
        self.concurrency = concurrency
        self.eval_tick = eval_tick
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock_conn: Connection | None = None
        self._leader_since: float | None = None
        self._last_sweep: float | None = None
        self._next_tick = 0.0
        self._state = SweepState()
        self._cluster = ctx.store.cluster  # False: one process owns the database (SQLite) and leads alone
        self.is_leader = False
        self.stopping = False

    # --- life -------------------------------------------------------------------------------------

    def start(self) -> Liveness:
        if self.beats:
            self._beat()  # registered before the first claim
            self._spawn("batcher-heartbeat", self._heartbeat_loop)
        if self.candidate:
            self._spawn("batcher-leader", self._leader_loop)
            self._spawn("batcher-dispatch", self._dispatch_loop)
        return self

    @property
    def candidate(self) -> bool:
        """Whether this process stands for leadership: not a worker that takes only races (``batcher worker``'s
        race process), whose threads and GIL are kept for races; the batch workers lead (the supervisor
        keeps them running)."""
        return not self.beats or self.settings.queue in self.queues

    def stop(self) -> None:
        """Stop the loops and give up leadership (the connection holding the lock closes)."""
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)
        self._drop_leadership()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # --- heartbeat --------------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            self._beat()

    def _beat(self) -> None:
        ctx = self.ctx
        try:
            with ctx.engine.begin() as conn:
                if not recovery.heartbeat(conn, ctx.worker_id):
                    recovery.register_worker(
                        conn,
                        worker_id=ctx.worker_id,
                        hostname=socket.gethostname(),
                        pid=os.getpid(),
                        queues=self.queues,
                        concurrency=self.concurrency,
                    )
                    log.info("worker %s registered", ctx.worker_id)
        except SQLAlchemyError as exc:
            log.warning("heartbeat failed (the database is unreachable?): %s", _first_line(exc))

    # --- leadership -------------------------------------------------------------------------------

    def _leader_loop(self) -> None:
        interval = self.settings.recovery_interval_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if self._lead():
                    self._sweep()
                    self._tick()
            except Exception:  # never let the loop die: log and try again next interval
                log.exception("leader loop failed; retrying")
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _dispatch_loop(self) -> None:
        from batcher._dispatch import Dispatcher
        from batcher._submit import publisher_for

        ctx = self.ctx
        publisher = publisher_for(ctx.app)
        dispatcher = Dispatcher(
            ctx.engine,
            ctx.store,
            ctx.redis,
            publisher.publish_requests,
            self.settings,
        )
        dispatcher.run(self._stop, lambda: self.is_leader and not self.stopping)

    def _lead(self) -> bool:
        """Hold (or try to take) the leadership lock; True while this process leads."""
        if not self._cluster:
            if self._leader_since is None:
                self._leader_since = time.monotonic()
            self.is_leader = True
            return True
        if self._lock_conn is not None:
            return True
        try_lock, _ = recovery.leader_lock_sql()
        conn = self.ctx.engine.connect()
        try:
            got = bool(conn.exec_driver_sql(try_lock).scalar())
            conn.commit()
        except SQLAlchemyError:
            conn.invalidate()
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._lock_conn = conn
        self._leader_since = time.monotonic()
        self._last_sweep = None
        self.is_leader = True
        log.info("%s leads the cluster: it runs the recovery sweep and the evaluation schedules", self.ctx.worker_id)
        return True

    def _drop_leadership(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        self.is_leader = False
        self._leader_since = None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()  # the session ends, and its advisory lock with it

    def _sweep(self) -> None:
        now = time.monotonic()
        lapse = self.settings.worker_lapse_s
        if self._last_sweep is not None and now - self._last_sweep > lapse / 2:
            # This leader was itself cut off (or stalled) long enough for heartbeats to lapse
            # unseen: look again for one lapse before declaring anyone dead.
            self._leader_since = now
        self._last_sweep = now
        reap = self._leader_since is not None and now - self._leader_since >= lapse
        try:
            sweep(self.ctx, self._lock_conn, reap=reap, state=self._state)
            self._last_sweep = time.monotonic()
        except DBAPIError as exc:
            if exc.connection_invalidated or self._lock_conn is None or self._lock_conn.invalidated:
                log.warning("lost the database session that held leadership: %s", _first_line(exc))
                self._drop_leadership()
                return
            raise
        except SQLAlchemyError as exc:
            log.warning("recovery sweep failed: %s", _first_line(exc))
            self._drop_leadership()

    def _tick(self) -> None:
        if self.eval_tick is None or not self._cluster:
            return
        from batcher.evals.settings import EvalSettings

        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + EvalSettings().tick_interval_s
        try:
            self.eval_tick()
        except Exception:  # schedules must keep firing after an outage: log, try at the next tick
            log.exception("evaluation schedule tick failed")

    # --- graceful shutdown --------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """SIGTERM: Celery stops consuming; we mark the worker ``stopping`` and hand back after the grace."""
        if self.stopping:
            return
        self.stopping = True
        threading.Thread(target=self._drain, name="batcher-drain", daemon=True).start()

    def _drain(self) -> None:
        ctx = self.ctx
        try:
            with ctx.engine.begin() as conn:
                recovery.mark_stopping(conn, ctx.worker_id)
        except SQLAlchemyError as exc:
            log.warning("could not mark this worker stopping: %s", _first_line(exc))
        grace = self.settings.shutdown_grace_s
        if ctx.wait_idle(grace):
            return  # everything finished: Celery's warm shutdown goes on and returns what was reserved
        log.warning(
            "shutdown grace of %g s is over with %d requests in flight: handing them back", grace, ctx.in_flight_count
        )
        self.hand_back()
        _flush_logs()
        os._exit(EXIT_AFTER_HANDOVER)

    def hand_back(self) -> int:
        """Give every request this worker holds back to the cluster; returns how many were running."""
        ctx = self.ctx
        with ctx.engine.begin() as conn:
            released = recovery.release_held(conn, ctx.worker_id)
            recovery.mark_stopped(conn, ctx.worker_id)
        broker = broker_messages(ctx)
        moved: set[tuple[uuid.UUID, int]] = set()
        if broker is not None:  # every message this worker holds (its own set), running or reserved
            mine = list(broker.held([ctx.worker_id]))
            broker.move_back(mine)
            moved = {(m.job_id, m.idx) for m in mine}
        publish_each(ctx, [r for r in released if (r.job_id, r.idx) not in moved])
        log.info("handed back %d running requests (%d messages back in the queue)", len(released), len(moved))
        return len(released)

    def mark_stopped(self) -> None:
        try:
            with self.ctx.engine.begin() as conn:
                recovery.mark_stopped(conn, self.ctx.worker_id)
        except SQLAlchemyError as exc:
            log.warning("could not mark this worker stopped: %s", _first_line(exc))


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # best effort, right before exiting
            handler.flush()


# --- Celery wiring (worker processes) -----------------------------------------------------------

_running: dict[int, Liveness] = {}
_running_lock = threading.Lock()


def for_app(app: Any) -> Liveness | None:
    """The liveness started for this app in this process, if any."""
    return _running.get(id(app))


def start_for(
    app: Any,
    *,
    concurrency: int = 0,
    eval_tick: Callable[[], Any] | None = None,
    queues: list[str] | None = None,
) -> Liveness:
    """Start (once per app and process) the heartbeat and leadership loops of a worker."""
    from workers._context import get_context

    with _running_lock:
        liveness = _running.get(id(app))
        if liveness is None:
            ctx = get_context(app)
            liveness = Liveness(ctx, concurrency=concurrency, eval_tick=eval_tick, queues=queues).start()
            _running[id(app)] = liveness
        return liveness


def stop_for(app: Any, *, stopped: bool = True) -> None:
    with _running_lock:
        liveness = _running.pop(id(app), None)
    if liveness is not None:
        if stopped:
            liveness.mark_stopped()
        liveness.stop()


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """Before the consumer connects: this worker's own unacknowledged sets (see ``workers._broker``)."""
    from workers._context import get_context

    app = sender.app
    if str(app.conf.broker_url or "").startswith(("redis://", "rediss://")):
        options = dict(app.conf.broker_transport_options or {})
        options.update(worker_transport_options(get_context(app).worker_id))
        app.conf.broker_transport_options = options


_LITERAL_START = re.compile(r"[\w:./-]+")


def _model_names(adapter: Any) -> str:
    """How a person spots a provider's models: its prefixes and the literal starts of its families'
    alternatives (``^(gpt-|chatgpt-)`` reads ``gpt-*, chatgpt-*``); ``...`` for what reads no such way."""
    shown = [f"{prefix}*" for prefix in adapter.prefixes]
    hidden = False
    for family in adapter.families:
        pattern = family.removeprefix("^")
        if pattern.startswith("(") and pattern.endswith(")"):
            pattern = pattern[1:-1]
        depth, start, alternatives = 0, 0, []
        for i, char in enumerate(pattern):
            depth += (char == "(") - (char == ")")
            if char == "|" and depth == 0:
                alternatives.append(pattern[start:i])
                start = i + 1
        alternatives.append(pattern[start:])
        for alternative in alternatives:
            literal = _LITERAL_START.match(alternative)
            if literal is not None and len(literal[0]) >= 2:
                shown.append(f"{literal[0]}*")
            else:
                hidden = True
    return ", ".join(shown) + (", ..." if hidden else "")


def warn_missing_provider_keys(environ: Mapping[str, str] | None = None) -> list[str]:
    """At a worker's start: one WARNING per registered provider with no API key in its environment, naming
    the models that will fail unless their job carries its own ``api_key``. Returns those providers."""
    from batcher import _providers

    env = os.environ if environ is None else environ
    missing = []
    for name, adapter in _providers.PROVIDERS.items():
        if not adapter.api_key_env_vars or _providers.resolve_api_key(name, None, env) is not None:
            continue
        missing.append(name)
        log.warning(
            "no API key for %s in this worker's environment (set %s): its models (%s) will fail with "
            "AuthenticationError unless their job carries api_key=",
            name,
            " or ".join(adapter.api_key_env_vars),
            _model_names(adapter),
        )
    return missing


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    app = sender.app
    if not str(app.conf.broker_url or "").startswith("memory://"):  # embedded mode's submitter checks keys itself
        warn_missing_provider_keys()
    controller = getattr(sender, "controller", None)
    concurrency = int(getattr(controller, "concurrency", 0) or 0)

    def eval_tick() -> Any:
        from batcher.evals.schedules import tick
        from workers.eval_tasks import _get_runner

        return tick(_get_runner(app))

    # The queues this worker consumes (``batcher worker``'s race process takes only the race queue), so the
    # dispatcher and the "no worker" check see who consumes what; both of batcher's when Celery does not say.
    consumed = getattr(getattr(app.amqp, "queues", None), "consume_from", None) or {}
    start_for(app, concurrency=concurrency, eval_tick=eval_tick, queues=sorted(consumed) or None)


def _on_worker_shutting_down(sender: Any = None, **_: Any) -> None:
    for liveness in list(_running.values()):
        liveness.begin_shutdown()


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None:
        stop_for(app)


def install_celery_hooks() -> None:
    """Connect the worker signals (once per process: Celery signals are process-wide)."""
    from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down

    worker_init.connect(_on_worker_init, weak=False, dispatch_uid="batcher.liveness.init")
    worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="batcher.liveness.ready")
    worker_shutting_down.connect(_on_worker_shutting_down, weak=False, dispatch_uid="batcher.liveness.shutting_down")
    worker_shutdown.connect(_on_worker_shutdown, weak=False, dispatch_uid="batcher.liveness.shutdown")
