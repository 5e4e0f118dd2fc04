"""Which way batcher runs: against a cluster (Postgres + Redis + workers) or embedded in-process.

``BATCHER_MODE=embedded|cluster`` forces one. In ``auto`` (the default) a URL that is set means
cluster — and a set URL that does not answer is an error, never a silent fall-back — and with
no URL set, cluster is chosen when Postgres and Redis both answer at the default addresses,
embedded otherwise (a notebook on a laptop with nothing else running).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from sqlalchemy import make_url

from batcher._config import Settings
from batcher._exceptions import ConfigurationError

PROBE_TIMEOUT_S = 0.3
EMBEDDED = "embedded"
CLUSTER = "cluster"

embedded_worker_on_start = True
"""Embedded mode: start the in-process worker as soon as a client opens the runtime (a program: its work
runs while it goes on). Off within ``work_only_while_waiting`` (the command line): the worker then
starts when the process first waits on a job."""


@contextlib.contextmanager
def work_only_while_waiting() -> Iterator[None]:
    global embedded_worker_on_start
    saved, embedded_worker_on_start = embedded_worker_on_start, False
    try:
        yield
    finally:
        embedded_worker_on_start = saved


def _redis_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def _postgres_address(url: str) -> tuple[str, int] | None:
    parsed = make_url(url)
    if not parsed.get_backend_name().startswith("postgresql"):
        return None
    return parsed.host or "127.0.0.1", parsed.port or 5432


_answered: set[tuple[str, int]] = set()


def answers(host: str, port: int) -> bool:
    """Something accepts TCP connections there.

    Only a success is remembered: a server that was down (a Postgres restart while a worker's
    schedule tick asked) is asked again next time, never written off for the process's life.
    """
    if (host, port) in _answered:
        return True
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            _answered.add((host, port))
            return True
    except OSError:
        return False


def resolve_mode(settings: Settings) -> str:
    if settings.mode != "auto":
        return settings.mode
    explicit = {"database_url", "redis_url"} & settings.model_fields_set
    if explicit:
        return CLUSTER
    pg = _postgres_address(settings.database_url)
    if pg is not None and answers(*pg) and answers(*_redis_address(settings.redis_url)):
        return CLUSTER
    return EMBEDDED


def check_cluster(settings: Settings) -> None:
    """Fail fast, naming the variable, when a cluster URL does not answer."""
    host, port = _redis_address(settings.redis_url)
    if not answers(host, port):
        raise ConfigurationError(
            f"BATCHER_REDIS_URL ({host}:{port}) does not answer: start Redis there, point the variable at a "
            "running one, or unset BATCHER_REDIS_URL and BATCHER_DATABASE_URL to run embedded"
        )
    pg = _postgres_address(settings.database_url)
    if pg is not None and not answers(*pg):
        raise ConfigurationError(
            f"BATCHER_DATABASE_URL ({pg[0]}:{pg[1]}) does not answer: start PostgreSQL there, point the "
            "variable at a running one, or unset BATCHER_REDIS_URL and BATCHER_DATABASE_URL to run embedded"
        )


def refuse_embedded_worker(settings: Settings) -> None:
    """``batcher worker`` serves a cluster: in embedded mode there is none to join (the worker runs inside
    the process that waits), so say so in one line rather than join a queue on the default Redis."""
    if resolve_mode(settings) == EMBEDDED:
        if settings.mode == EMBEDDED:
            raise ConfigurationError(
                "BATCHER_MODE=embedded runs its worker inside the process that waits for a job (batcher wait, "
                "or your program): there is no worker to start; set BATCHER_MODE=cluster with "
                "BATCHER_DATABASE_URL and BATCHER_REDIS_URL to run workers"
            )
        pg = _postgres_address(settings.database_url) or ("127.0.0.1", 5432)
        rd = _redis_address(settings.redis_url)
        raise ConfigurationError(
            f"no cluster to work for: PostgreSQL ({pg[0]}:{pg[1]}) and Redis ({rd[0]}:{rd[1]}) do not both answer "
            "and BATCHER_DATABASE_URL / BATCHER_REDIS_URL are not set; start them or set the variables (without "
            "a cluster batcher runs embedded, its worker inside the process that waits for a job)"
        )
    check_cluster(settings)
