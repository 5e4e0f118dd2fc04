"""What a benchmark run starts and stops: its database, its Redis keys, the fake provider and workers.

Every process is started here as a child and stopped by its PID; the database is dropped and
the run's Redis keys deleted at the end, whatever happened in between.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, text

from batcher._config import Settings
from batcher._migrate import REPO_ROOT, upgrade

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time; by PID only."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


class BenchDatabase:
    """A database of the run's own on this machine's Postgres: created + migrated, dropped at the end."""

    def __init__(self, admin_url: str, tag: str) -> None:
        self.admin_url = admin_url
        self.name = f"batcher_bench_{tag}"
        self.url = admin_url.rsplit("/", 1)[0] + f"/{self.name}"

    def create(self) -> None:
        upgrade(Settings(database_url=self.url))

    def drop(self) -> None:
        from batcher._db.engine import dispose_engines

        dispose_engines()
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        finally:
            admin.dispose()

    def scalar(self, sql: str, **params: Any) -> Any:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return conn.execute(text(sql), params).scalar()
        finally:
            engine.dispose()

    def execute(self, sql: str, **params: Any) -> None:
        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                conn.execute(text(sql), params)
        finally:
            engine.dispose()


class BenchRedis:
    """The run's view of Redis: its queues, their memory, and cleaning up after itself."""

    def __init__(self, url: str, tag: str) -> None:
        self.url = url
        self.tag = tag
        self.client = redis.Redis.from_url(url)

    def queue_keys(self, queue: str) -> list[bytes]:
        # kombu keeps one list per priority step: "<queue>" and "<queue>\x06\x16<n>".
        return [
            k for k in self.client.scan_iter(match=f"{queue}*", count=1_000) if k.split(b"\x06")[0] == queue.encode()
        ]

    def queue_length(self, queue: str) -> int:
        return sum(int(self.client.llen(k)) for k in self.queue_keys(queue))

    def queue_memory(self, queue: str) -> int:
        return sum(int(self.client.memory_usage(k, samples=0) or 0) for k in self.queue_keys(queue))

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def purge(self, queue: str) -> int:
        keys = self.queue_keys(queue)
        return int(self.client.delete(*keys)) if keys else 0

    def cleanup(self, job_ids: list[str]) -> None:
        """Delete every key naming this run's tag (queues, bindings) or one of its jobs."""
        doomed = [k for k in self.client.scan_iter(match=f"*{self.tag}*", count=1_000)]
        if job_ids:
            ids = [j.encode() for j in job_ids]
            for key in self.client.scan_iter(match="batcher:*", count=1_000):
                if any(j in key for j in ids):
                    doomed.append(key)
        for i in range(0, len(doomed), 500):
            self.client.delete(*doomed[i : i + 500])
        self.client.close()


class FakeProviderProcess:
    """``batcher fake-provider`` as a child process (its CPU is its own), controlled over HTTP."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def openai_base(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> FakeProviderProcess:
        cfg = self.workdir / "fake_provider.json"
        cfg.write_text(json.dumps(self.config))
        log = self.workdir / "fake_provider.log"
        with log.open("wb") as handle:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from batcher.cli import main; main()",
                    "fake-provider",
                    "--port",
                    "0",
                    "--config",
                    str(cfg),
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", log.read_text())
            if found:
                self.url = found.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the fake provider did not start:\n{log.read_text()[-2000:]}")

    def reset(self) -> None:
        httpx.post(f"{self.url}/_fake/reset", timeout=30).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_fake/stats", timeout=60)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def stop(self) -> None:
        stop_process(self.proc)


class Workers:
    """Real Celery worker processes (threads pool), as ``batcher worker`` / the tests start them."""

    app_module = "workers"
    name = "bench"

    def __init__(self, env: dict[str, str], workdir: Path, *, count: int, concurrency: int) -> None:
        self.env = {
            **env,
            "BATCHER_WORKER_CONCURRENCY": str(concurrency),
        }
        self.workdir = workdir
        self.count = count
        self.concurrency = concurrency
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> Workers:
        from batcher._celery import worker_argv

        queues = [self.env["BATCHER_QUEUE"], self.env["BATCHER_RACE_QUEUE"]]
        for i in range(self.count):
            log = self.workdir / f"worker{i}.log"
            with log.open("ab") as handle:
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "bench._worker",  # = python -m celery, plus the what-ifs (see there)
                            "-A",
                            self.app_module,
                            *worker_argv(  # the flags of `batcher worker`
                                concurrency=self.concurrency,
                                queues=queues,
                                loglevel="WARNING",
                                hostname=f"{self.name}{i}-{os.getpid()}@%h",
                            ),
                        ],
                        env=self.env,
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        cwd=REPO_ROOT,
                    )
                )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        from batcher._celery import make_celery_app

        settings = Settings(
            **{k.removeprefix("BATCHER_").lower(): v for k, v in self.env.items() if k in _PING_SETTINGS}
        )
        app = make_celery_app(settings)
        deadline = time.monotonic() + READY_TIMEOUT_S
        names = {f"{self.name}{i}-{os.getpid()}" for i in range(self.count)}
        try:
            while time.monotonic() < deadline:
                for i, proc in enumerate(self.procs):
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker {i} exited:\n{self.log_tail(i)}")
                replies = app.control.ping(timeout=0.5)
                up = {name.split("@")[0] for reply in replies for name in reply}
                if names <= up:
                    return
        finally:
            app.close()
        raise RuntimeError(f"workers not ready in {READY_TIMEOUT_S} s:\n{self.log_tail(0)}")

    def log_tail(self, i: int) -> str:
        return (self.workdir / f"worker{i}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            stop_process(proc)
        self.procs = []


class DefaultDeployment:
    """``batcher worker`` exactly as the README starts it (no flags): its supervisor and every worker process.

    Ready when each of its workers has logged ``ready.`` (one per core and the race process); ``pids``
    are the supervisor's and its children's, for the CPU and memory meter."""

    def __init__(self, env: dict[str, str], workdir: Path, *, expected: int) -> None:
        self.env = env
        self.workdir = workdir
        self.expected = expected
        self.log = workdir / "deployment.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pids(self) -> list[int]:
        import psutil

        assert self.proc is not None
        try:
            return [self.proc.pid, *(c.pid for c in psutil.Process(self.proc.pid).children(recursive=True))]
        except psutil.Error:
            return [self.proc.pid]

    def start(self) -> DefaultDeployment:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from batcher.cli import main; main()", "worker"],
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"batcher worker exited:\n{self.log_tail()}")
            if self.log.read_bytes().count(b" ready.") >= self.expected:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"batcher worker not ready in {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        stop_process(self.proc, timeout=60)
        self.proc = None


class CeilingWorkers(Workers):
    """The bare-Celery ceiling (``bench/_ceiling.py``): as many processes and threads as the default
    deployment's batch workers, the flags of ``batcher worker``, a task that only bumps the job counter."""

    app_module = "bench._ceiling"
    name = "ceiling"


_PING_SETTINGS = {"BATCHER_REDIS_URL", "BATCHER_QUEUE", "BATCHER_RACE_QUEUE", "BATCHER_DATABASE_URL"}
