"""The asyncio local transport: a cluster's (or embedded mode's) ``LocalTransport`` from an event loop.

Waiting is awaited: a ``BLPOP`` on the job's wake-up lists with ``redis.asyncio`` (in embedded mode,
fakeredis' asyncio client on the runtime's in-process server), the same protocol and keys as the
blocking wait (``batcher/_wakeup.py``). The short database statements (a submission's ``COPY``, a
status read, a cancel, a page of results) run in a worker thread (``asyncio.to_thread``), as
FastAPI runs a sync route, so the event loop goes on serving everything else meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Concatenate, ParamSpec, TypeVar

import redis
import redis.asyncio

from batcher import _wakeup
from batcher._config import Settings
from batcher._jobs import JobStatus, Result
from batcher._states import JobKind
from batcher._submit import RequestSpec
from batcher._transport import Consumers, Poll, Until
from batcher._transport_async import AsyncTransport
from batcher._transport_local import LocalTransport

P = ParamSpec("P")
T = TypeVar("T")

RESULTS_PAGE = 500
"""Results read per hop to the reading thread (one server-side cursor, one thread, for the whole job)."""


class AsyncLocalTransport(AsyncTransport):
    """A ``LocalTransport`` driven from an event loop: its statements in a worker thread, its wait awaited."""

    wait_slice_s = _wakeup.WAIT_SLICE_S
    is_local = True

    def __init__(self, settings: Settings, *, local: LocalTransport | None = None) -> None:
        self.settings = settings
        self._local = local
        self._starting = asyncio.Lock()
        self._aredis: Any = None

    def __repr__(self) -> str:
        return f"<AsyncLocalTransport {self._local!r}>"

    async def local(self) -> LocalTransport:
        """The transport, started on first use in a worker thread (checking a cluster, or starting
        embedded mode, takes a moment the event loop should not wait through)."""
        async with self._starting:
            if self._local is None:
                self._local = await asyncio.to_thread(LocalTransport.for_settings, self.settings)
        return self._local

    async def _call(self, method: Callable[Concatenate[LocalTransport, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``LocalTransport.<method>`` in a worker thread."""
        local = await self.local()
        return await asyncio.to_thread(method, local, *args, **kwargs)

    def _async_redis(self, local: LocalTransport) -> Any:
        """The asyncio twin of the transport's Redis client: the same server (embedded mode's
        in-process fakeredis server, or the cluster's Redis)."""
        if self._aredis is None:
            server = local.redis.connection_pool.connection_kwargs.get("server")
            if server is not None:
                import fakeredis

                self._aredis = fakeredis.FakeAsyncRedis(server=server)
            else:
                self._aredis = redis.asyncio.Redis.from_url(local.settings.redis_url, socket_timeout=30)
        return self._aredis

    async def aclose(self) -> None:
        if self._aredis is not None:
            await self._aredis.aclose()
            self._aredis = None
        if self._local is not None:
            self._local.close()

    # --- submission --------------------------------------------------------------------------------

    async def submit_conversations(self, model: str, conversations: Sequence[Any], kwargs: dict[str, Any]) -> uuid.UUID:
        return await self._call(LocalTransport.submit_conversations, model, conversations, kwargs)

    async def submit_fanout(self, kind: JobKind, models: list[str], messages: Any, kwargs: dict[str, Any]) -> uuid.UUID:
        return await self._call(LocalTransport.submit_fanout, kind, models, messages, kwargs)

    async def submit_requests(self, requests: Iterable[RequestSpec], kwargs: dict[str, Any]) -> uuid.UUID:
        return await self._call(LocalTransport.submit_requests, requests, kwargs)

    async def submit_file(
        self, file: IO[bytes] | str | Path, default_model: str | None, kwargs: dict[str, Any]
    ) -> uuid.UUID:
        return await self._call(LocalTransport.submit_file, file, default_model, kwargs)

    # --- reading -----------------------------------------------------------------------------------

    async def status(self, job_id: uuid.UUID) -> JobStatus:
        return await self._call(LocalTransport.status, job_id)

    async def consumers(self, job_id: uuid.UUID) -> Consumers | None:
        return await self._call(LocalTransport.consumers, job_id)

    async def poll(self, job_id: uuid.UUID, timeout_s: float, until: Until) -> Poll:
        local = await self.local()
        keys = _wakeup.done_keys(str(job_id), first_response=until == "first_response")
        try:
            event = await _wakeup.await_event(self._async_redis(local), keys, timeout_s)
        except redis.RedisError:  # Redis is away: read the store after the slice anyway
            event = None
            await asyncio.sleep(timeout_s)
        return await asyncio.to_thread(local.polled, job_id, until, event)

    async def results(self, job_id: uuid.UUID) -> AsyncIterator[Result]:
        """Streamed from one server-side cursor, read a page at a time by one thread of its own (a
        database connection stays on the thread that opened it)."""
        local = await self.local()
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher-results") as reader:
            rows = local.results(job_id)
            try:
                while page := await loop.run_in_executor(reader, _page, rows):
                    for result in page:
                        yield result
            finally:
                await loop.run_in_executor(reader, _close, rows)

    async def write_jsonl(self, job_id: uuid.UUID, out: IO[bytes]) -> None:
        await self._call(LocalTransport.write_jsonl, job_id, out)

    async def cancel(self, job_id: uuid.UUID) -> JobStatus:
        return await self._call(LocalTransport.cancel, job_id)


def _page(rows: Iterator[Result]) -> list[Result]:
    return [row for _, row in zip(range(RESULTS_PAGE), rows, strict=False)]


def _close(rows: Iterator[Result]) -> None:
    close = getattr(rows, "close", None)  # a generator: releases its cursor and connection
    if close is not None:
        close()
