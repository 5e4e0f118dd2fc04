"""``batcher demo``: a real batch, end to end, on this machine.

Starts the fake provider (real HTTP, the providers' wire formats) and ``batcher worker`` as the
README starts it (one Celery worker process per core and one for races, supervised), migrates the
database, then runs the three batch functions' jobs through Redis and Postgres with a live progress
bar. Uses queues of its own, so workers of another deployment on the same Redis never pick up its
tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, cast

import redis
from rich.console import Console
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from batcher._config import Settings
from batcher._jobs import Result
from batcher._migrate import REPO_ROOT, upgrade
from batcher._mode import EMBEDDED, resolve_mode

DEMO_MODELS = ("gpt-4o-mini", "claude-3-5-haiku-latest", "command-r")
RACE_LATENCIES_MS = {"gpt-4o-mini": 50, "claude-3-5-haiku-latest": 200, "command-r": 500}
WORKER_READY_TIMEOUT_S = 120.0
"""The workers of `batcher worker` (one per core and the race process) start together; on a loaded machine slowly."""
DEMO_KEY_TTL_S = 3_600
"""Redis keys of a demo's own queues expire an hour after it ends."""


def _check_services(settings: Settings, console: Console) -> None:
    try:
        redis.Redis.from_url(settings.redis_url, socket_timeout=3).ping()
    except redis.RedisError as exc:
        console.print(
            f"[red]Redis at {settings.redis_url} does not answer ({exc}).[/] Start it or set BATCHER_REDIS_URL."
        )
        sys.exit(2)
    admin = create_engine(settings.database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        console.print(f"[red]Postgres does not answer ({exc.orig}).[/] Start it or set BATCHER_DATABASE_URL.")
        sys.exit(2)
    finally:
        admin.dispose()


def _start_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    """``batcher worker`` (the default deployment), with ``concurrency`` threads per process."""
    handle = log.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from batcher.cli import main; main()",
            "worker",
            f"--concurrency={concurrency}",
            "--log-level=WARNING",
            f"--name={_worker_name()}",
        ],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )
    handle.close()
    return proc


def _worker_name() -> str:
    return f"demo-{os.getpid()}"


def _deployment(total: int) -> tuple[int, int]:
    """(processes, threads per process) of ``batcher worker`` for ``total`` calls in flight."""
    from batcher._supervisor import processes_for

    processes = processes_for(Settings().worker_processes)
    return processes, max(1, -(-total // processes))


def run_demo(*, prompts: int, latency_ms: int, concurrency: int) -> None:
    from batcher.testing import FakeProvider, FakeProviderConfig, ModelBehaviour

    # No guessed colours on numbers, paths and ids; long lines are not cut at 80 columns when piped.
    console = Console(highlight=False, soft_wrap=True)
    base = Settings()
    embedded = resolve_mode(base) == EMBEDDED
    if embedded:
        console.print("[bold]batcher demo[/]: no Postgres/Redis set or answering, so everything runs in this process")
    else:
        _check_services(base, console)
        console.print(f"[bold]batcher demo[/]: Postgres {base.database_url.split('@')[-1]}, Redis {base.redis_url}")
        with _quiet("alembic"):  # one line, not one per migration
            upgrade(base)
        console.print("database migrated")

    config = FakeProviderConfig(
        default=ModelBehaviour(latency_ms=latency_ms),
        models={m: ModelBehaviour(latency_ms=ms) for m, ms in RACE_LATENCIES_MS.items()},
    )
    with _quiet("batcher.testing"), FakeProvider(port=0, config=config) as fake, tempfile.TemporaryDirectory() as tmp:
        tag = f"demo-{os.getpid()}"
        env = {
            **os.environ,
            "BATCHER_QUEUE": f"batcher.{tag}",
            "BATCHER_RACE_QUEUE": f"batcher.{tag}.race",
            "BATCHER_WORKER_CONCURRENCY": str(concurrency),
            "BATCHER_EMBEDDED_CONCURRENCY": str(concurrency),
            **fake.environ(),  # every provider's base URL, pointing at the fake
            "OPENAI_API_KEY": "sk-demo",
            "ANTHROPIC_API_KEY": "sk-ant-demo",
            "COHERE_API_KEY": "co-demo",
        }
        saved = dict(os.environ)
        os.environ.update(env)
        worker: subprocess.Popen[bytes] | None = None
        in_flight = concurrency
        try:
            if embedded:
                console.print(f"fake provider on {fake.url}; in-process worker ({concurrency} threads)")
            else:
                processes, threads = _deployment(concurrency)
                in_flight = processes * threads
                console.print(
                    f"fake provider on {fake.url}; starting `batcher worker` ({processes} processes x {threads} "
                    f"threads, + 1 for races) on a queue of its own ({env['BATCHER_QUEUE']})"
                )
                log = Path(tmp) / "worker.log"
                worker = _start_worker(env, threads, log)
                _wait_ready(worker, log, processes + (1 if base.worker_race_concurrency else 0) if processes > 1 else 1)
            ok = _run_jobs(console, prompts, latency_ms, in_flight)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            if worker is not None:
                worker.terminate()
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
                _expire_demo_keys(base.redis_url, tag)
    if not ok:
        sys.exit(1)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """``logger`` at WARNING for the duration (its INFO lines are noise in the demo's output)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _expire_demo_keys(redis_url: str, tag: str) -> int:
    """Give every Redis key of the demo's own queues a TTL (kombu's bindings never expire by themselves),
    so demos leave nothing behind for good. Returns how many keys got one."""
    client = redis.Redis.from_url(redis_url, socket_timeout=3)
    try:
        keys = [k for pattern in (f"*{tag}*",) for k in client.scan_iter(match=pattern, count=1_000)]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.expire(key, DEMO_KEY_TTL_S)
        pipe.execute()
        return len(keys)
    except redis.RedisError:
        return 0
    finally:
        client.close()


def _wait_ready(worker: subprocess.Popen[bytes], log: Path, expected: int) -> None:
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited:\n{log.read_text()[-2000:]}")
        # The workers log at WARNING; ping them through the broker instead of reading "ready". Only their own
        # answers count: other workers on the same Redis answer pings too.
        from batcher._celery import make_celery_app

        app = make_celery_app(Settings())
        mine = _worker_name()
        try:
            answered = {name for reply in app.control.ping(timeout=0.5) for name in reply}
        finally:
            app.close()
        if sum(1 for name in answered if name.split("@")[0] == mine or name.startswith(f"{mine}-")) >= expected:
            return
    raise SystemExit(f"the workers did not start in {WORKER_READY_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


def _run_jobs(console: Console, prompts: int, latency_ms: int, concurrency: int) -> bool:
    from batcher._client import Client

    with Client(Settings()) as client:
        return bool(_run_three_jobs(client, console, prompts, latency_ms, concurrency))


def _run_three_jobs(client: Any, console: Console, prompts: int, latency_ms: int, concurrency: int) -> bool:
    conversations = [[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}] for i in range(prompts)]
    ideal_s = prompts * latency_ms / 1000 / concurrency
    console.rule(f"1. batch_completion: {prompts} prompts to gpt-4o-mini")
    started = time.perf_counter()
    job = client.submit(model="gpt-4o-mini", messages=conversations, temperature=0.2)
    console.print(f"job {job.id} submitted in {time.perf_counter() - started:.2f} s")
    status = job.wait(progress=True)
    elapsed = time.perf_counter() - started
    failed_style = "red" if status.failed else "dim"
    console.print(
        f"{status.state.value}: [green]{status.succeeded} succeeded[/], [{failed_style}]{status.failed} failed[/] "
        f"in {elapsed:.1f} s ({status.total / elapsed:.0f} completions/s; ideal {ideal_s:.1f} s at {concurrency} "
        "in flight)"
    )
    results = cast(Generator[Result, None, None], job.results())
    for result in islice(results, 2):
        text_ = result.response.choices[0].message.content if result.response else result.error
        console.print(f"  [{result.index}] {text_}")
    results.close()

    console.rule("2. batch_completion_models: fastest of 3 providers (50 / 200 / 500 ms)")
    message = [{"role": "user", "content": "Hey, how's it going"}]
    started = time.perf_counter()
    race = client.submit_fastest(models=list(DEMO_MODELS), messages=message)
    winner = race.first_response(timeout=30)
    console.print(
        f"winner {winner.model} ({winner.provider}) after {(time.perf_counter() - started) * 1000:.0f} ms: "
        f"{winner.choices[0].message.content}"
    )

    console.rule("3. batch_completion_models_all_responses: every answer, in order")
    every = client.submit_all(models=list(DEMO_MODELS), messages=message)
    every.wait(timeout=30)
    for result in every.results():
        console.print(f"  {result.model:<26} {result.state.value:<10} {result.latency_ms or 0:.0f} ms")
    where = "SQLite (embedded mode)" if client.settings.database_url.startswith("sqlite") else "Postgres"
    console.print(f"\nstored in {where}; reattach with: batcher status {job.id}")
    return bool(status.succeeded == prompts)
