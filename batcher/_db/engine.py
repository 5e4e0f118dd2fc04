"""Engines, one per URL per process, sized to the worker's concurrency."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from batcher._config import Settings
from batcher._exceptions import ConfigurationError

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
