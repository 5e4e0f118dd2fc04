"""What one fault scenario runs on: a private Redis, a fresh database, the fake provider and worker processes.

Everything is started as a child of the benchmark and stopped by its own PID (``pg_ctl`` on its own data
directory for a private PostgreSQL); the database is dropped and the private servers removed at the end.
The private servers are the tests' own (``batcher.testing.servers``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import redis
from sqlalchemy import create_engine, text

from batcher import Client, Settings
from batcher._celery import worker_argv
from batcher._migrate import REPO_ROOT, upgrade
from batcher.testing.servers import RedisServer
from bench._services import FakeProviderProcess

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
API_KEY = "sk-faults-0123456789abcdef"
LEADER_LINE = "leads the cluster"
SWEEP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) .*recovery sweep: \{(.*)\}", re.MULTILINE)
TASK_OUTCOME = re.compile(r"Task batcher\.run_request\[[^\]]+\] succeeded in [\d.e-]+s: '([\w-]+)'")

T = TypeVar("T")


def until(condition: Callable[[], T | None], timeout_s: float, what: str, *, every_s: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy (the event waited for)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"not within {timeout_s:g} s: {what}")


# --- one child process ----------------------------------------------------------------------------


class Child:
    """One child process, its stdout and stderr appended to ``log_path``; stopped or killed by its PID."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, ready: Callable[[Child], bool] | None = None, timeout_s: float = READY_TIMEOUT_S) -> Child:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        if ready is not None:
            deadline = time.monotonic() + timeout_s
            while not ready(self):
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited early:\n{self.log()[-3000:]}")
                if time.monotonic() > deadline:
                    self.kill9()
                    raise RuntimeError(f"{self.name} not ready in {timeout_s:g} s:\n{self.log()[-3000:]}")
                time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> float:
        """``kill -9``; returns the monotonic time of the kill."""
        killed_at = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()
        return killed_at

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()


# --- a fresh database ----------------------------------------------------------------------------


@contextmanager
def fresh_database(admin_url: str, name: str) -> Iterator[str]:
    """A database created and migrated as ``batcher db upgrade`` does; dropped (with its connections) at exit."""
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    upgrade(Settings(database_url=url))
    try:
        yield url
    finally:
        from batcher._db.engine import dispose_engines

        dispose_engines()
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


# --- live messages per request --------------------------------------------------------------------


class LiveMessages(threading.Thread):
    """Samples the broker while a scenario runs: the most live messages (queued + unacknowledged) any one
    request had at once, and Redis' memory.

    One read-only script reads the queues and the workers' unacknowledged sets (kombu's ``unacked`` hash,
    one per worker: ``unacked:<worker id>``) as of one instant (a message moving
    from one to the other between two separate reads would be counted twice) and counts per task id inside
    Redis, so only two numbers cross the wire. It reads the queues 500 messages at a time: one reply of a
    whole queue would take megabytes of the very memory a full Redis lacks.
    """

    SNAPSHOT = """#!lua flags=no-writes
    local counts, worst, total = {}, 0, 0
    local function count(raw)
        local id = string.match(raw, '"id":%s*"([^"]+)"')
        if id then
            local c = (counts[id] or 0) + 1
            counts[id] = c
            total = total + 1
            if c > worst then worst = c end
        end
    end
    local lists = tonumber(ARGV[1])
    for i = 1, lists do
        local start = 0
        while true do
            local chunk = redis.call('LRANGE', KEYS[i], start, start + 499)
            for _, raw in ipairs(chunk) do count(raw) end
            if #chunk < 500 then break end
            start = start + 500
        end
    end
    for h = lists + 1, #KEYS do
        for _, raw in ipairs(redis.call('HVALS', KEYS[h])) do count(raw) end
    end
    return {worst, total}
    """
    PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # kombu's lists per priority step

    def __init__(self, server: RedisServer, queues: Sequence[str], *, every_s: float = 0.5) -> None:
        super().__init__(name="faults-live-messages", daemon=True)
        self.client = server.client()
        self.keys = [q + suffix for q in queues for suffix in self.PRIORITY_SUFFIXES]
        self.every_s = every_s
        self.worst = 0
        self.most_messages = 0
        self.peak_used_memory = 0
        self.samples = 0
        self.errors = 0
        self._done = threading.Event()

    def run(self) -> None:
        snapshot = self.client.register_script(self.SNAPSHOT)
        while not self._done.wait(self.every_s):
            try:
                held = [k for k in self.client.scan_iter(match="unacked*", _type="hash")]  # each worker's own set
                worst, total = snapshot(keys=[*self.keys, *held], args=[len(self.keys)])
                used = int(self.client.info("memory")["used_memory"])
            except redis.RedisError:
                self.errors += 1
                continue
            self.samples += 1
            self.worst = max(self.worst, int(worst))
            self.most_messages = max(self.most_messages, int(total))
            self.peak_used_memory = max(self.peak_used_memory, used)

    def stop(self) -> None:
        self._done.set()
        self.join(30)
        self.client.close()


# --- a cluster ------------------------------------------------------------------------------------


class Cluster:
    """One scenario's services: a private Redis, its own database, the fake provider, workers on demand."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        database_url: str,
        redis: RedisServer,
        fake: FakeProviderProcess,
        overrides: dict[str, str],
        celery_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.database_url = database_url
        self.redis = redis
        self.fake = fake
        self.overrides = overrides
        self.celery_args = list(celery_args)
        self.workers: list[Child] = []
        self._started = 0
        # Every BATCHER_* setting is the scenario's own: a stray one in the caller's shell must not change it.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHER_", "OPENAI_"))}
        self.env = {
            **inherited,
            "BATCHER_DATABASE_URL": database_url,
            "BATCHER_REDIS_URL": redis.url,
            "OPENAI_BASE_URL": fake.openai_base,
            "OPENAI_API_KEY": API_KEY,
            "PYTHONUNBUFFERED": "1",
            **overrides,
        }
        self.settings = Settings(
            database_url=database_url,
            redis_url=redis.url,
            **{k.removeprefix("BATCHER_").lower(): v for k, v in overrides.items()},  # type: ignore[arg-type]
        )

    # --- workers ---

    def start_worker(self) -> Child:
        """``python -m celery -A workers worker`` with the flags of ``batcher worker`` (its defaults)."""
        self._started += 1
        name = f"{self.name}-w{self._started}"
        argv = worker_argv(
            concurrency=self.settings.worker_concurrency,
            queues=[self.settings.queue, self.settings.race_queue],
            loglevel="INFO",  # `batcher worker`'s default
            hostname=f"{name}@%h",
        )
        child = Child(
            name,
            [sys.executable, "-m", "celery", "-A", "workers", *argv, *self.celery_args],
            self.env,
            self.workdir / f"{name}.log",
        )
        self.workers.append(child.start(lambda c: " ready." in c.log()))
        return child

    def start_workers(self, n: int) -> list[Child]:
        return [self.start_worker() for _ in range(n)]

    def alive(self) -> list[Child]:
        return [w for w in self.workers if w.alive()]

    def leader(self) -> Child | None:
        """The live worker that logged taking the leadership last (only one holds the lock at a time)."""
        leading = [w for w in self.alive() if LEADER_LINE in w.log()]
        return max(leading, key=lambda w: w.log().rfind(LEADER_LINE), default=None) if leading else None

    def logs(self) -> str:
        return "\n".join(w.log() for w in self.workers)

    def sweeps(self) -> list[tuple[float, dict[str, int]]]:
        """Every recovery sweep that did something, from the workers' logs: (wall time, its report)."""
        found = []
        for match in SWEEP_LINE.finditer(self.logs()):
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local, as logged
            found.append((at, {k: int(v) for k, v in re.findall(r"'(\w+)': (\d+)", match.group(2))}))
        return sorted(found)

    def task_outcomes(self) -> Counter[str]:
        """What ``run_request`` tasks returned ('succeeded', 'not-claimable', ...), from the workers' logs."""
        return Counter(TASK_OUTCOME.findall(self.logs()))

    def stop(self) -> None:
        for worker in self.workers:
            if worker.alive():
                os.kill(worker.pid, signal.SIGTERM)
        for worker in self.workers:
            worker.stop()

    # --- reading what happened ---

    def client(self) -> Client:
        return Client(self.settings)

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def worker_id(self, worker: Child) -> str | None:
        found = self.rows("SELECT id FROM workers WHERE pid = :pid ORDER BY started_at DESC LIMIT 1", pid=worker.pid)
        return str(found[0]["id"]) if found else None

    def stored_per_prompt(self, job_id: object) -> Counter[int]:
        """How many requests of the job have 0, 1, 2 ... stored responses."""
        per_request = self.rows(
            "SELECT r.idx, count(resp.request_id) AS n FROM requests r "
            "LEFT JOIN responses resp ON resp.request_id = r.id WHERE r.job_id = :id GROUP BY r.idx",
            id=str(job_id),
        )
        return Counter(int(row["n"]) for row in per_request)

    def fake_in_flight(self) -> int:
        """Calls the fake provider is answering right now."""
        return int(self.fake.stats()["in_flight"])

    def sends(self, model: str) -> list[dict[str, Any]]:
        """Every request the fake provider received for ``model`` (without bodies)."""
        response = httpx.get(f"{self.fake.url}/_fake/requests", params={"model": model, "bodies": "0"}, timeout=120)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()["requests"]
        return records


@contextmanager
def cluster(
    name: str,
    workdir: Path,
    *,
    admin_url: str,
    models: dict[str, dict[str, Any]],
    overrides: dict[str, str] | None = None,
    maxmemory: str | None = None,
    celery_args: Sequence[str] = (),
    say: Callable[[str], None] = print,
) -> Iterator[Cluster]:
    """A scenario's services, started fresh and removed at exit (workers first, then Redis and the database)."""
    scenario_dir = workdir / name
    scenario_dir.mkdir(parents=True, exist_ok=True)
    config = {"models": models, "record_bodies": False, "record_headers": False}
    database = f"batcher_faults_{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        stack.callback(lambda: say(f"{name}: stopped every process; dropped {database}"))
        database_url = stack.enter_context(fresh_database(admin_url, database))
        server = RedisServer(scenario_dir, maxmemory=maxmemory).start()
        stack.callback(server.stop)
        fake = FakeProviderProcess(config, scenario_dir).start()
        stack.callback(fake.stop)
        say(f"{name}: database {database}, redis-server :{server.port} (pid {server.pid}), {fake.url}")
        result = Cluster(
            name,
            scenario_dir,
            database_url=database_url,
            redis=server,
            fake=fake,
            overrides=overrides or {},
            celery_args=celery_args,
        )
        stack.callback(result.stop)
        yield result


def prompts(n: int, prefix: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{prefix} {i}"}] for i in range(n)]
