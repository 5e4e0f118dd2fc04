"""Engines, one per URL per process, sized to the worker's concurrency."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, create_engine, make_url
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
            engine = create_engine(
                url,
                pool_size=settings.db_pool_size,
                max_overflow=10,
                pool_pre_ping=False,  # one round trip per checkout; disconnects surface as retried errors
                pool_recycle=1_800,
            )
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (tests, and after ``fork``)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
