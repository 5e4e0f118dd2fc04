"""What every request handler shares: settings, the pooled engine, the Celery publisher and Redis."""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Annotated

import redis
import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, Request
from sqlalchemy import Engine

from batcher import _wakeup
from batcher._config import Settings
from batcher._db.contract import JobStore, store_for
from batcher._db.engine import get_engine

log = logging.getLogger("batcher.api")


@dataclass
class ApiContext:
    settings: Settings
    _celery: Celery | None = field(default=None, repr=False)
    _redis: redis.Redis[bytes] | None = field(default=None, repr=False)
    _aredis: aioredis.Redis[bytes] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def engine(self) -> Engine:
        return get_engine(self.settings)

    @property
    def store(self) -> JobStore:
        """The job store of the service's database (``batcher._db.contract``)."""
        return store_for(self.engine)

    @property
    def celery(self) -> Celery:
        with self._lock:  # handlers run on many threads; build one app, not one per racing thread
            if self._celery is None:
                from batcher._celery import make_celery_app  # the service only publishes

                self._celery = make_celery_app(self.settings)
            return self._celery

    @property
    def redis(self) -> redis.Redis[bytes]:
        with self._lock:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=10)
            return self._redis

    @property
    def aredis(self) -> aioredis.Redis[bytes]:
        """For long-polled waits: a blocked ``BLPOP`` must not hold a worker thread."""
        if self._aredis is None:
            self._aredis = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=None)
        return self._aredis

    def wake(self, job_id: uuid.UUID, state: str) -> None:
        """Tell the job's waiters it is final (as the worker's finalizer does); best effort."""
        try:
            _wakeup.announce_done(self.redis, str(job_id), state)
        except redis.RedisError:
            log.warning("could not wake the waiters of job %s; they fall back to polling", job_id)

    async def aclose(self) -> None:
        if self._aredis is not None:
            await self._aredis.aclose()  # type: ignore[attr-defined]  # redis>=5; stubs lag
            self._aredis = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._celery is not None:
            self._celery.close()
            self._celery = None


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_context)]
