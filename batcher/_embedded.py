"""Embedded mode: the same Celery tasks and the same schema, in one process, with nothing else running.

What stands in for what:

- Postgres → a SQLite file (``BATCHER_EMBEDDED_PATH``), migrated by the same Alembic migrations;
- Redis as broker → kombu's in-memory transport with a 10 ms polling interval (the 1 s
  default makes 1,000 tasks take 30 s instead of under one);
- Redis as coordinator (race keys, wake-ups, rate-limit script) → an in-process ``fakeredis``
  server, which implements the same commands, blocking pops and Lua;
- worker processes → one Celery ``WorkController`` on the threads pool, in a daemon thread.

Because the broker lives in memory, a process that dies loses its queue; Postgres (SQLite)
does not, and the recovery sweep run at start-up re-enqueues whatever the last process left
unfinished.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
from pathlib import Path

import fakeredis
from celery import Celery

from batcher._config import Settings
from batcher._migrate import upgrade

log = logging.getLogger("batcher.embedded")

WORKER_READY_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 10.0
QUIET_LOGGERS = ("celery", "kombu", "batcher.worker", "batcher.recovery", "alembic")


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
        upgrade(self.settings)
        self.redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        from batcher._celery import make_celery_app

        self.app: Celery = make_celery_app(self.settings, coordination=self.redis)
        # The threads pool resolves task names through the process's default app (``current_app``
        # in threads that never set one): make that ours.
        self.app.set_default()
        self._start_worker()
        self._recover()
        print(
            f"running embedded: results in {_shown(path)}; set BATCHER_REDIS_URL to use workers",
            file=sys.stderr,
        )

    def _start_worker(self) -> None:
        ready = threading.Event()
        self.worker = self.app.WorkController(
            pool_cls="threads",
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

        Then the same liveness loops as a cluster worker's (heartbeat, recovery sweep), against SQLite.
        """
        from workers._context import get_context
        from workers._liveness import start_for
        from workers._recovery import sweep

        sweep(get_context(self.app))
        start_for(self.app, concurrency=self.settings.worker_concurrency)

    def stop(self) -> None:
        from workers._context import close_context
        from workers._liveness import stop_for

        stop_for(self.app)
        if self._thread.is_alive():
            self.worker.stop(in_sighandler=False)
            self._thread.join(WORKER_STOP_TIMEOUT_S)
        close_context(self.app)  # the worker threads' HTTP clients: no socket left to the GC


def _shown(path: Path) -> str:
    try:
        return f"./{path.relative_to(Path.cwd())}"
    except ValueError:
        return str(path)


_runtime: EmbeddedRuntime | None = None
_lock = threading.Lock()


def get_runtime(settings: Settings) -> EmbeddedRuntime:
    """The process's runtime, started on first use and stopped at exit."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = EmbeddedRuntime(settings)
            atexit.register(stop_runtime)
        return _runtime


def stop_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.stop()
            _runtime = None
