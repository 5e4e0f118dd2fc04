"""Zero to first result (issue #14): a fresh clone, Postgres and Redis running, no database.

The README's first Python example runs unchanged, in a subprocess started in a fresh ``git clone`` of
this repository (its committed HEAD), against a database that does not exist yet:

* with a worker running (``batcher worker``, started from the clone) it completes;
* with no worker it fails, with the one-line fix, within ``NO_WORKER_LIMIT_S`` — a timeout on the
  subprocess, not a timed assertion. The limit is counted once batcher is imported: how long Python
  takes to import batcher on this (shared, loaded) machine is measured just before and added, since
  start-up time is the benchmark's business (``bench/``), not this test's.

Only the fake provider stands in (its base URLs and the keys are the environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from batcher.testing import FakeProvider
from tests.acceptance.test_readme_examples import BLOCKS, NO_TEST
from tests.conftest import FAKE_KEYS, PG_ADMIN_URL
from tests.support.processes import REPO_ROOT, ManagedProcess

pytestmark = pytest.mark.acceptance

NO_WORKER_LIMIT_S = 10.0
"""The issue's bound: with no worker, the example fails with the one-line fix within this many seconds."""
WITH_WORKER_LIMIT_S = 120.0
"""Generous: the example's three jobs through a real worker (the fake provider answers at once)."""

FIRST_EXAMPLE = next(block for block in BLOCKS if block.marker != NO_TEST)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("fresh") / "batcher"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(dest)], check=True, timeout=120)
    return dest


@pytest.fixture
def fresh_env(clone: Path, redis_url: str, fake_provider: FakeProvider, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A new user's environment: no database yet (a name nobody uses), queues of its own on the test
    Redis database, the fake provider for every model. Dropped and deleted afterwards."""
    name = f"batcher_zero_{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(clone),  # the clone's batcher, not this checkout's
        "BATCHER_DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}",
        "BATCHER_REDIS_URL": redis_url,
        "BATCHER_QUEUE": f"zero-{tag}",
        "BATCHER_RACE_QUEUE": f"zero-{tag}.race",
        **fake_provider.environ(),
        **FAKE_KEYS,
    }
    yield env
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    client = redis.Redis.from_url(redis_url)
    client.delete(env["BATCHER_QUEUE"], env["BATCHER_RACE_QUEUE"])
    client.close()


def database_exists(env: dict[str, str]) -> bool:
    name = env["BATCHER_DATABASE_URL"].rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            return bool(conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first())
    finally:
        admin.dispose()


def import_seconds(clone: Path, env: dict[str, str]) -> float:
    """How long this machine takes, now, to start Python and import the clone's batcher (checked to be the
    clone's)."""
    started = time.monotonic()
    shown = subprocess.run(
        [sys.executable, "-c", "import batcher; print(batcher.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    took = time.monotonic() - started
    assert Path(shown.stdout.strip()).is_relative_to(clone), shown.stdout
    return took


def run_example(clone: Path, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FIRST_EXAMPLE.code],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_the_first_example_is_the_three_functions() -> None:
    assert "from batcher import batch_completion" in FIRST_EXAMPLE.code


def test_with_no_worker_it_fails_within_10_s_with_the_fix(clone: Path, fresh_env: dict[str, str]) -> None:
    assert not database_exists(fresh_env)
    allowance = import_seconds(clone, fresh_env)
    result = run_example(clone, fresh_env, NO_WORKER_LIMIT_S + allowance)  # raises TimeoutExpired if it hangs
    assert result.returncode != 0
    queue = fresh_env["BATCHER_QUEUE"]
    assert result.stderr.splitlines()[-1] == (
        f"batcher._exceptions.NoWorkerError: no worker is consuming queue {queue!r}: start one with 'batcher worker'"
    )
    assert "During handling of the above exception" not in result.stderr  # one exception, not a chain
    assert database_exists(fresh_env)  # the first use created and migrated it


def test_with_a_worker_it_completes(clone: Path, fresh_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = ManagedProcess("worker", log, stop_timeout_s=30)
    worker.start(
        [sys.executable, "-m", "batcher.cli", "worker", "--concurrency", "4"],  # `batcher worker`, from the clone
        fresh_env,
        lambda: b" ready." in log.read_bytes(),
        cwd=clone,
    )
    try:
        result = run_example(clone, fresh_env, WITH_WORKER_LIMIT_S)
    finally:
        worker.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), result.stderr  # the example prints the three answers
    logged = log.read_text(errors="replace")
    assert "created database" in logged  # the worker's first use made the database
    assert "no API key" not in logged  # every provider has its key here
