"""Embedded mode: the same Celery tasks and the same schema, in one process, with nothing else running.

What stands in for what:

- Postgres → a SQLite file (``BATCHER_EMBEDDED_PATH``), migrated by the same Alembic migrations;
- Redis as broker → kombu's in-memory transport with a 10 ms polling interval (the 1 s
  default makes 1,000 tasks take 30 s instead of under one);
- Redis as coordinator (race keys, wake-ups, rate-limit script) → an in-process ``fakeredis``
  server, which implements the same commands, blocking pops and Lua;
- worker processes → one Celery ``WorkController`` on the threads pool, in a daemon thread.

Because the broker lives in memory, a process that dies loses its queue; Postgres (SQLite)
does not: the next process's coordinator has no dispatch epoch, so its dispatcher takes back
whatever the last process had released and releases it again, and the recovery sweep run when the
worker starts re-runs what was running.

The database is opened on first use; the worker starts only when this process has work to run:
at once in a program (``batcher._mode.embedded_worker_on_start``), and in the command line only
for commands that wait (``batcher wait``, ``submit --wait``): ``status``, ``results`` and ``cancel``
only read or write the file, and ``submit`` stores the job for a later ``wait`` to run. At exit
the worker stops before the interpreter's thread pools do (``threading._register_atexit``), so no
message is handed to a pool that is shutting down.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import fakeredis
from celery import Celery
from celery.concurrency.thread import TaskPool
from kombu.transport import memory

from batcher import _mode
from batcher._config import Settings
from batcher._migrate import known_revisions, upgrade

log = logging.getLogger("batcher.embedded")

WORKER_READY_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 10.0
SLOW_STOP_NOTICE_S = 2.0
QUIET_LOGGERS = ("celery", "kombu", "batcher.worker", "batcher.recovery", "batcher.liveness", "alembic")


CONSUMER_CYCLE_S = 0.1
"""How long the consumer loop waits on the in-memory queue before it looks whether it should stop."""


class _EmbeddedPool(TaskPool):  # type: ignore[misc]
    """The threads pool, quiet at exit: a message handed over while the pool shuts down is left to the
    next process (the in-memory queue dies with this one; its request is still queued in the file)."""

    _stopped = False

    def on_stop(self) -> None:
        self._stopped = True
        super().on_stop()

    def on_apply(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().on_apply(*args, **kwargs)
        except RuntimeError as exc:  # "cannot schedule new futures after (interpreter) shutdown"
            if self._stopped or "shutdown" in str(exc):
                return None
            raise


class _MemoryTransport(memory.Transport):  # type: ignore[misc]
    """kombu's in-memory transport, whose consumer notices a stop within ``CONSUMER_CYCLE_S``: Celery's
    loop drains with a 2 s timeout, and the stock transport sleeps through all of it when idle, so
    every command that ran the worker took up to 2 s more to exit."""

    def drain_events(self, connection: Any, timeout: Any = None) -> Any:  # type: ignore[override]
        short = CONSUMER_CYCLE_S if timeout is None else min(timeout, CONSUMER_CYCLE_S)
        return super().drain_events(connection, timeout=short)  # type: ignore[no-untyped-call]


class EmbeddedRuntime:
    """The process's embedded cluster: database, broker, coordinator and worker."""

    def __init__(self, base: Settings) -> None:
        # The in-process worker shares the user's console: keep per-task and migration lines out of it.
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).getEffectiveLevel()))
        path = Path(base.embedded_path).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.settings = base.model_copy(
            update={
                "database_url": f"sqlite:///{path}",
                "redis_url": "memory://localhost/",
                "worker_concurrency": base.embedded_concurrency,
            }
        )
        if not _at_head(path):
            upgrade(self.settings)
        self.redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        from batcher._celery import make_celery_app

        self.app: Celery = make_celery_app(self.settings, coordination=self.redis)
        self.app.conf.broker_transport = f"{__name__}:_MemoryTransport"
        # The threads pool resolves task names through the process's default app (``current_app``
        # in threads that never set one): make that ours.
        self.app.set_default()
        self.worker: Any = None
        self._thread: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._stored: list[uuid.UUID] = []  # submitted while no worker ran here: a later `wait` runs them
        print(
            f"running embedded: results in {_shown(path)}; set BATCHER_REDIS_URL to use workers",
            file=sys.stderr,
        )

    def start_worker(self) -> None:
        """Start the in-process worker (once): first the recovery sweep, so requests a previous process
        left unfinished are queued again, then the consumer and the liveness loops."""
        with self._worker_lock:
            if self.worker is not None:
                return
            self._start_worker()
            self._recover()
            self._stored.clear()

    def stored(self, job_id: uuid.UUID) -> None:
        """A job was submitted; without a worker running here it waits for a process that waits for it."""
        if self.worker is None:
            self._stored.append(job_id)

    def _start_worker(self) -> None:
        ready = threading.Event()
        self.worker = self.app.WorkController(
            pool_cls=_EmbeddedPool,
            concurrency=self.settings.worker_concurrency,
            queues=[self.settings.queue, self.settings.race_queue],
            hostname=f"embedded-{os.getpid()}@{socket.gethostname()}",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel=logging.WARNING,
            ready_callback=lambda _consumer: ready.set(),
        )
        self._thread = threading.Thread(target=self.worker.start, name="batcher-embedded-worker", daemon=True)
        self._thread.start()
        if not ready.wait(WORKER_READY_TIMEOUT_S):
            raise RuntimeError("the embedded worker did not start")

    def _recover(self) -> None:
        """Requests a previous process left unfinished: its in-memory queue is gone, the file is not.

        Then the same liveness loops as a cluster worker's (heartbeat, recovery sweep, the dispatcher that
        releases the backlog), against SQLite.
        """
        from workers._context import get_context
        from workers._liveness import start_for
        from workers._recovery import sweep

        sweep(get_context(self.app))
        start_for(self.app, concurrency=self.settings.worker_concurrency)

    def stop(self) -> None:
        if self._stored:
            ids = " ".join(str(j) for j in self._stored)
            print(
                f"embedded: stored in {_shown(self.path)}; it runs while a process waits for it: batcher wait {ids}",
                file=sys.stderr,
            )
            self._stored.clear()
        if self.worker is None or self._thread is None:
            return
        from celery.worker.state import active_requests

        from workers._context import close_context
        from workers._liveness import stop_for

        # Requests in flight are recorded before the process exits (their answers are paid for): say so
        # when that takes a while, rather than hang without a word.
        notice = threading.Timer(
            SLOW_STOP_NOTICE_S,
            lambda: print(
                f"embedded: recording {len(active_requests)} requests still in flight before exiting",
                file=sys.stderr,
            ),
        )
        notice.daemon = True
        notice.start()
        try:
            stop_for(self.app)
            if self._thread.is_alive():
                self.worker.stop(in_sighandler=False)
                self._thread.join(WORKER_STOP_TIMEOUT_S)
        finally:
            notice.cancel()
        close_context(self.app)  # the worker threads' HTTP clients: no socket left to the GC


def _at_head(path: Path) -> bool:
    """The file exists and is migrated to the newest revision: nothing for Alembic to do."""
    if not path.exists():
        return False
    from sqlalchemy import column, create_engine, select, table
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            found: list[str] = list(conn.scalars(select(column("version_num")).select_from(table("alembic_version"))))
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()
    head = known_revisions()[1]  # read from the migration files: no Alembic import
    return head is not None and found == [head]


def _shown(path: Path) -> str:
    try:
        return f"./{path.relative_to(Path.cwd())}"
    except ValueError:
        return str(path)


_runtime: EmbeddedRuntime | None = None
_lock = threading.Lock()


def get_runtime(settings: Settings) -> EmbeddedRuntime:
    """The process's runtime, opened on first use (its worker started too, unless the process said it
    runs work only while it waits: ``batcher._mode.embedded_worker_on_start``) and stopped at exit."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = EmbeddedRuntime(settings)
            _stop_at_exit()
        runtime = _runtime
    if _mode.embedded_worker_on_start:
        runtime.start_worker()
    return runtime


def _stop_at_exit() -> None:
    """Stop the worker before ``concurrent.futures`` shuts the interpreter's thread pools down (its
    hook runs among threading's exit hooks, before ``atexit``'s): a pool that is shut down refuses
    every task the consumer still hands it, and Celery logs each refusal with a traceback."""
    import concurrent.futures.thread  # noqa: F401 - its exit hook first, so ours (run in reverse) goes before

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(stop_runtime)
            return
        except RuntimeError:  # the interpreter is already shutting down
            pass
    atexit.register(stop_runtime)


def stop_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.stop()
            _runtime = None
