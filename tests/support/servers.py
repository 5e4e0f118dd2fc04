"""Private Redis and PostgreSQL servers for fault tests: started on free ports of their own, so a
test can restart, stop, flush or starve them without touching the machine's shared services.

Each is stopped by its own PID (or ``pg_ctl stop`` on its own data directory) when the test ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: object, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout_s} s")


class RedisServer:
    """``redis-server`` on a free port, no persistence (a restart loses everything, as Redis may)."""

    def __init__(self, workdir: Path, *, maxmemory: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
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

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
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

    Runs as the ``postgres`` system user when the tests run as root (``initdb`` refuses root), in a
    directory of its own that user can reach (pytest's are private to root); removed at the end.
    """

    def __init__(self) -> None:
        self._as_postgres = os.geteuid() == 0
        self.workdir = Path(tempfile.mkdtemp(prefix="batcher-test-pg-"))
        if self._as_postgres:
            shutil.chown(self.workdir, "postgres")
        self.datadir = self.workdir / "pgdata"
        self.port = free_port()
        self.bin = _pg_bin()

    def url(self, database: str = "batcher") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

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
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-o",
            options,
            "-l",
            str(self.workdir / "pg.log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextmanager
    def running(self) -> Iterator[PostgresServer]:
        self.init()
        self.start()
        try:
            yield self
        finally:
            self.stop("immediate")
            shutil.rmtree(self.workdir, ignore_errors=True)
