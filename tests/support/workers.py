"""Real Celery worker processes for tests: started with a given environment, stopped by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from batcher import Client, Settings
from batcher._celery import worker_argv
from batcher._migrate import upgrade
from tests.support.processes import READY_TIMEOUT_S, ManagedProcess


class WorkerProcess:
    """``python -m celery -A workers worker`` as a child process, logging to a file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        concurrency: int = 20,
        name: str = "w1",
        celery_args: tuple[str, ...] = (),
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.concurrency = concurrency
        self.name = name
        self.celery_args = celery_args
        self._process = ManagedProcess("worker", log_path, stop_timeout_s=30)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self._process.proc

    def start(self) -> WorkerProcess:
        argv = worker_argv(  # exactly as `batcher worker` starts one
            concurrency=self.concurrency,
            queues=[self.env["BATCHER_QUEUE"], self.env["BATCHER_RACE_QUEUE"]],
            loglevel="INFO",
            hostname=f"{self.name}-{os.getpid()}@%h",
        )
        self._process.start(
            [sys.executable, "-m", "celery", "-A", "workers", *argv, *self.celery_args],
            self.env,
            lambda: b" ready." in self.log_path.read_bytes(),
            timeout_s=READY_TIMEOUT_S,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """``kill -9``: no warm shutdown, unacknowledged messages stay with the broker."""
        self._process.kill()

    def terminate(self) -> None:
        """SIGTERM, as a rolling deploy sends; returns at once (``wait`` for the exit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self._process.stop()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class IsolatedCluster:
    """Workers of their own (own queues, own settings) for tests that kill, flush or throttle them.

    With ``own_database=True`` (or a ``BATCHER_DATABASE_URL`` in ``overrides``) the cluster also has
    a database of its own, so its workers elect their own leader, with the test's timings, and
    nothing else of the session's touches its jobs. The database is dropped at exit.
    """

    def __init__(
        self,
        base_env: dict[str, str],
        log_dir: Path,
        overrides: dict[str, str],
        n_workers: int = 1,
        *,
        own_database: bool = False,
        concurrency: int = 20,
        celery_args: tuple[str, ...] = (),
    ) -> None:
        tag = os.urandom(4).hex()
        self.tag = tag
        self.env = {
            **base_env,
            "BATCHER_QUEUE": f"iso-{tag}",
            "BATCHER_RACE_QUEUE": f"iso-{tag}.race",
            **overrides,
        }
        self._created_database: str | None = None
        self._migrate: str | None = overrides.get("BATCHER_DATABASE_URL")
        if own_database and "BATCHER_DATABASE_URL" not in overrides:
            base_url = base_env["BATCHER_DATABASE_URL"]
            self._created_database = self._migrate = base_url.rsplit("/", 1)[0] + f"/iso_{tag}"
            self.env["BATCHER_DATABASE_URL"] = self._created_database
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.celery_args = celery_args
        self.workers = [self._worker(f"iso{i}-{tag}") for i in range(n_workers)]

    def _worker(self, name: str) -> WorkerProcess:
        return WorkerProcess(
            self.env,
            self.log_dir / f"worker-{name}.log",
            name=name,
            concurrency=self.concurrency,
            celery_args=self.celery_args,
        )

    @property
    def settings(self) -> Settings:
        """The cluster's settings, as its workers read them from their environment."""
        values: dict[str, object] = {}
        for key, value in self.env.items():
            if key.startswith("BATCHER_") and not key.startswith(("BATCHER_TEST_", "BATCHER_BENCH_")):
                name = key.removeprefix("BATCHER_").lower()
                if name in Settings.model_fields:
                    values[name] = json.loads(value) if name == "rate_limits" else value
        return Settings(**values)  # type: ignore[arg-type]

    def client(self) -> Client:
        return Client(self.settings)

    def add_worker(self) -> WorkerProcess:
        worker = self._worker(f"extra{len(self.workers)}-{self.tag}")
        self.workers.append(worker.start())
        return worker

    def __enter__(self) -> IsolatedCluster:
        if self._migrate is not None:
            upgrade(Settings(database_url=self._migrate))
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()
        if self._created_database is not None:
            drop_database(self._created_database)

    def logs(self) -> str:
        return "\n".join(w.log_path.read_text(errors="replace") for w in self.workers if w.log_path.exists())


def drop_database(url: str) -> None:
    """Drop a test's database (and every connection to it)."""
    from sqlalchemy import create_engine, text

    from batcher._db.engine import dispose_engines

    dispose_engines()
    base, name = url.rsplit("/", 1)
    admin = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


class SupervisedWorkers:
    """``batcher worker`` (the supervisor and its Celery workers) as a child process, logging to a file.

    Ready when every worker it starts has logged ``ready.`` (``expected`` of them: the batch processes
    and the race process); the workers are named ``{name}-1@host`` ... ``{name}-race@host``.
    """

    def __init__(self, env: dict[str, str], log_path: Path, *, args: tuple[str, ...] = (), name: str = "sup") -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.name = f"{name}-{os.getpid()}"
        self._process = ManagedProcess("batcher worker", log_path, stop_timeout_s=60)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._process.proc is not None
        return self._process.proc

    def start(self, expected: int) -> SupervisedWorkers:
        self._process.start(
            [sys.executable, "-c", "from batcher.cli import main; main()", "worker", f"--name={self.name}", *self.args],
            self.env,
            lambda: self.ready_count() >= expected,
            timeout_s=READY_TIMEOUT_S,
        )
        return self

    def ready_count(self) -> int:
        return self.log_path.read_bytes().count(b" ready.")

    def children(self) -> dict[str, int]:
        """Live workers by name (``{name}-1``, ..., ``{name}-race``) -> PID."""
        import psutil

        found: dict[str, int] = {}
        for child in psutil.Process(self.proc.pid).children():
            try:
                hostname = next(a for a in child.cmdline() if a.startswith("--hostname="))
            except (StopIteration, psutil.Error):
                continue
            found[hostname.removeprefix("--hostname=").split("@")[0]] = child.pid
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self._process.stop()
