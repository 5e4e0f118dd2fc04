"""Fixtures shared by every test tier.

Integration and acceptance tests talk to the real Postgres of this machine, a real Redis and
real Celery worker processes. A test session uses only what it creates: Postgres databases of its
own (created, then dropped) and a private ``redis-server`` on a free port (started, then stopped),
so two test runs and a deployment can share one machine. ``BATCHER_TEST_REDIS_URL`` names a Redis
database to use instead: it must be empty when the run starts (the run refuses otherwise) and is
emptied when it ends. The only stand-in is the fake provider, a real HTTP server on loopback.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from batcher._config import Settings
from batcher._db.engine import dispose_engines
from batcher.testing import FakeProvider
from batcher.testing.servers import RedisServer
from tests.support.api_server import ApiServer, shared_api_server

PG_ADMIN_URL = os.environ.get("BATCHER_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("BATCHER_TEST_REDIS_URL", "")
"""Empty: the session starts a ``redis-server`` of its own (``redis_url``)."""

FAKE_KEYS = {
    "OPENAI_API_KEY": "sk-test-openai-0123456789abcdef",
    "ANTHROPIC_API_KEY": "sk-ant-test-0123456789abcdef",
    "COHERE_API_KEY": "co-test-0123456789abcdef",
}


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def database_url(run_id: str) -> Iterator[str]:
    """A fresh database migrated to head by ``batcher db upgrade``'s code path; dropped afterwards."""
    from batcher._migrate import upgrade

    name = f"batcher_test_{run_id}"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(Settings(database_url=url))
    yield url
    dispose_engines()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's Redis: a private ``redis-server`` (stopped at the end), or ``BATCHER_TEST_REDIS_URL``."""
    if not REDIS_TEST_URL:
        with RedisServer(tmp_path_factory.mktemp("redis")) as server:
            yield server.url
        return
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        held = int(client.dbsize())
        if held:
            pytest.exit(
                f"BATCHER_TEST_REDIS_URL ({REDIS_TEST_URL}) holds {held} key{'s' * (held != 1)}: the test suite "
                "uses only an empty Redis database and empties it at the end; point the variable at an empty one, "
                "or unset it and the suite starts a redis-server of its own",
                returncode=4,
            )
        yield REDIS_TEST_URL
        client.flushdb()  # empty when this run took it: everything in it is the run's
    finally:
        client.close()


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[FakeProvider]:
    with FakeProvider(port=0) as fp:
        yield fp


@pytest.fixture(scope="session")
def worker_env(
    database_url: str,
    redis_url: str,
    run_id: str,
    fake_provider: FakeProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The environment of worker processes (and, via os.environ, of the submitting test process)."""
    env = {
        "BATCHER_DATABASE_URL": database_url,
        "BATCHER_REDIS_URL": redis_url,
        "BATCHER_QUEUE": f"test-{run_id}",
        "BATCHER_RACE_QUEUE": f"test-{run_id}.race",
        "BATCHER_REQUEST_TIMEOUT_S": "20",
        "BATCHER_LEASE_MARGIN_S": "5",
        "BATCHER_BACKOFF_BASE_S": "0.05",
        "BATCHER_BACKOFF_MAX_S": "0.5",
        "BATCHER_QUEUED_GRACE_S": "2",
        "BATCHER_WORKER_CONCURRENCY": "20",
        # The session worker leads its database's cluster; schedule tests drive the tick themselves.
        "BATCHER_EVAL_TICK_INTERVAL_S": "86400",
        "BATCHER_SECRET_KEY": Fernet.generate_key().decode(),
        **fake_provider.environ(),  # every provider's base URL: the fake
        **FAKE_KEYS,
    }
    return env


@pytest.fixture(scope="session")
def cluster_env(worker_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Export the worker environment into this process too, so clients and workers agree."""
    saved = {k: os.environ.get(k) for k in worker_env}
    os.environ.update(worker_env)
    yield {**os.environ}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def settings(cluster_env: dict[str, str]) -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def worker(cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real worker process for the whole session."""
    from tests.support.workers import WorkerProcess

    log = Path(tmp_path_factory.mktemp("logs")) / "worker.log"
    with WorkerProcess(cluster_env, log, concurrency=20) as proc:
        yield proc


@pytest.fixture
def cluster_client(settings: Settings, worker: object) -> Iterator[object]:
    """A cluster-mode client: Postgres, Redis and the session's worker process."""
    from batcher import Client

    with Client(settings) as c:
        yield c


@pytest.fixture
def client(cluster_client: object) -> object:
    return cluster_client


@pytest.fixture(scope="session")
def embedded_settings(cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Embedded mode: SQLite, in-memory broker, in-process worker (same concurrency as the worker's)."""
    path = Path(tmp_path_factory.mktemp("embedded")) / "batcher.db"
    return Settings(mode="embedded", embedded_path=str(path), embedded_concurrency=20)


@pytest.fixture
def embedded_client(embedded_settings: Settings) -> object:
    from batcher import Client

    return Client(embedded_settings)


@pytest.fixture(scope="session", autouse=True)
def _stop_embedded_runtime() -> Iterator[None]:
    yield
    from batcher._embedded import stop_runtime

    stop_runtime()


MODES = ["cluster", "embedded"]


@pytest.fixture(params=MODES)
def any_client(request: pytest.FixtureRequest) -> object:
    """The core scenarios run in both modes: ``client`` (cluster) and ``embedded_client``."""
    return request.getfixturevalue(f"{request.param}_client")


@pytest.fixture(scope="module")
def api(
    request: pytest.FixtureRequest,
    cluster_env: dict[str, str],
    worker: object,
    tmp_path_factory: pytest.TempPathFactory,
) -> ApiServer:
    """The real ``batcher api`` service (shared by every module of the session), backed by the session's worker."""
    return shared_api_server(cluster_env, tmp_path_factory.getbasetemp(), request.config)
