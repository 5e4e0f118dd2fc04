"""Private Redis and PostgreSQL servers for fault tests and benchmarks: started on free ports of their
own, so a test can restart, stop, flush or starve them without touching the machine's shared services.

Each is stopped by its own PID (or ``pg_ctl stop`` on its own data directory) and needs the server
binaries (``redis-server``; PostgreSQL's under ``/usr/lib/postgresql/*/bin``)::

    with RedisServer(tmp_path) as redis_server:
        ...  # redis_server.url, .client(), .restart() (everything it held is gone), .stop()

    pg = PostgresServer()
    with pg.running():
        ...  # pg.url("batcher"), pg.admin_url, pg.stop() / pg.start() (an outage), pg.restart()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

__all__ = ["PostgresServer", "RedisServer", "free_port"]

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Callable[[], object], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: S110 - not up yet: ask again
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout_s} s")


class RedisServer:
    """``redis-server`` on a free port, no persistence (a restart loses everything, as Redis may);
    ``maxmemory`` with ``noeviction`` when given. Its log is ``workdir/redis-<port>.log``."""

    def __init__(self, workdir: Path, *, maxmemory: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the Redis server is not running")
        return self.proc.pid

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir)]
        if self.maxmemory:
            argv += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = self.client()
        try:
            _wait(client.ping, f"redis-server on {self.port}")
        finally:
            client.close()
        return self

    def memory(self) -> dict[str, int]:
        """Bytes in use now, and the most it used."""
        with self.client() as client:
            info = client.info("memory")
        return {"used": int(info["used_memory"]), "peak": int(info["used_memory_peak"])}

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port: everything it held is gone."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not versions:
        raise RuntimeError("PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin)")
    return versions[-1].parent


class PostgresServer:
    """A PostgreSQL cluster of its own (``initdb`` in a temporary directory), on a free port.

    Runs as the ``postgres`` system user when run as root (``initdb`` refuses root), in a directory
    of its own that user can reach (pytest's are private to root); removed at the end of ``running``.
    """

    def __init__(self, *, prefix: str = "batcher-pg-") -> None:
        self._as_postgres = os.geteuid() == 0
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        if self._as_postgres:
            shutil.chown(self.workdir, "postgres")
        self.datadir = self.workdir / "pgdata"
        self.port = free_port()
        self.bin = _pg_bin()

    def url(self, database: str = "batcher") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def admin_url(self) -> str:
        """The ``postgres`` database, to create and drop others from."""
        return self.url("postgres")

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = list(argv)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, timeout=120)

    def init(self) -> PostgresServer:
        self._run(str(self.bin / "initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "--no-sync")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.workdir} -c fsync=off"
        pg_ctl = str(self.bin / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.datadir), "-o", options, "-l", str(self.workdir / "pg.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextmanager
    def running(self) -> Iterator[PostgresServer]:
        """``initdb``, start; at exit an immediate stop and the directory removed."""
        self.init()
        self.start()
        try:
            yield self
        finally:
            self.stop("immediate")
            shutil.rmtree(self.workdir, ignore_errors=True)
