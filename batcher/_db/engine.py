"""Engines, one per URL per process, sized to the worker's concurrency."""

from __future__ import annotations

import re
import threading
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from batcher._config import Settings
from batcher._exceptions import BatcherError, ConfigurationError, ServiceUnavailableError

_engines: dict[tuple[str, int], Engine] = {}
_lock = threading.Lock()


def get_engine(settings: Settings) -> Engine:
    """A pooled engine for ``settings.database_url`` (created once per process)."""
    key = (settings.database_url, settings.db_pool_size)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            try:
                url = make_url(settings.database_url)
            except ArgumentError as exc:
                raise ConfigurationError(f"BATCHER_DATABASE_URL is not a valid SQLAlchemy URL: {exc}") from None
            if url.get_backend_name() == "sqlite":
                engine = _sqlite_engine(url, settings)
            else:
                engine = create_engine(
                    url,
                    pool_size=settings.db_pool_size,
                    max_overflow=settings.db_max_overflow,
                    pool_pre_ping=False,  # one round trip per checkout; disconnects surface as retried errors
                    pool_recycle=1_800,
                )
            _engines[key] = engine
        return engine


SQLITE_BUSY_TIMEOUT_S = 30.0


def _sqlite_engine(url: URL, settings: Settings) -> Engine:
    """SQLite for embedded mode: WAL, and every transaction ``BEGIN IMMEDIATE``.

    Taking the write lock when a transaction begins makes each store function atomic against
    the worker threads (and other processes on the same file); they queue on the busy timeout
    instead of failing with "database is locked" halfway through.
    """
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def dispose_engines() -> None:
    """Close every pooled connection (tests, and after ``fork``)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


# --- a database mistake as one line with its fix --------------------------------------------------


def where(database_url: str | URL) -> str:
    """``user@host:port/database`` of a URL, never its password: how error lines name a database."""
    url = make_url(database_url) if isinstance(database_url, str) else database_url
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    user = f"{url.username}@" if url.username else ""
    return f"{user}{url.host or '127.0.0.1'}:{url.port or 5432}/{url.database or ''}"


def first_line(exc: BaseException) -> str:
    """The driver's own first line of an error (SQLAlchemy's wrapper and its links left out)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


_QUOTED = r'"([^"]*)"'
_UNREACHABLE = (
    "connection refused",
    "could not translate host name",
    "name or service not known",
    "timeout expired",
    "no route to host",
    "network is unreachable",
    "server closed the connection",
    "could not connect",
    "the database system is starting up",
    "the database system is shutting down",
)


def database_problem(exc: BaseException, database_url: str | URL) -> BatcherError:
    """What a failed connection to (or statement on) the configured database means, as one line naming
    the fix: a ``ConfigurationError`` for a mistake that waiting will not mend (no such database or role,
    a wrong password, no privilege), a ``ServiceUnavailableError`` for a server that does not answer now.
    Raise it ``from None``: the driver's traceback adds nothing to the line."""
    url = make_url(database_url) if isinstance(database_url, str) else database_url
    at = f"BATCHER_DATABASE_URL ({where(url)})"
    line = first_line(exc)
    detail = line.split("FATAL:", 1)[-1].strip()
    lowered = line.lower()
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if match := re.search(r"database " + _QUOTED + " does not exist", line):
        return ConfigurationError(
            f"{at}: database {match[1]!r} does not exist: run 'batcher db upgrade' to create and migrate it"
        )
    if match := re.search(r"role " + _QUOTED + " does not exist", line):
        return ConfigurationError(
            f"{at}: role {match[1]!r} does not exist: create it (createuser {match[1]}) or put an existing "
            "user in the URL"
        )
    if match := re.search(r"password authentication failed for user " + _QUOTED, line):
        return ConfigurationError(
            f"{at}: password authentication failed for user {match[1]!r}: put the right password in the URL "
            "(postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE)"
        )
    if "no password supplied" in lowered:
        return ConfigurationError(
            f"{at}: the server asks for a password and the URL has none: put it in the URL "
            "(postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE)"
        )
    if "permission denied for database" in lowered or "not permitted to log in" in lowered:
        return ConfigurationError(f"{at}: {detail}: grant the role CONNECT (and LOGIN), or use another role")
    if sqlstate == "42P01" or re.search(r"relation " + _QUOTED + " does not exist", line):
        return ConfigurationError(f"{at}: the database has no batcher tables: run 'batcher db upgrade'")
    if any(sign in lowered for sign in _UNREACHABLE):
        return ServiceUnavailableError(
            f"{at} does not answer ({detail}): start PostgreSQL there or point the variable at a running one"
        )
    return ServiceUnavailableError(f"{at}: {detail}")
