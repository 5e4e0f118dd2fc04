"""Where an ``AsyncClient``'s jobs live: ``Transport``'s contract (``batcher/_transport.py``), awaited.

    AsyncClient / AsyncJob ──► AsyncTransport ──┬── AsyncLocalTransport  (batcher/_transport_async_local.py)
                                                │     a cluster's or embedded mode's LocalTransport:
                                                │     Postgres in a worker thread, the wake-up awaited
                                                └── AsyncHttpTransport   (batcher/_transport_async_http.py)
                                                      httpx.AsyncClient: no thread at all

The verbs and their meaning are ``Transport``'s, one for one; only the waiting differs. Nothing here
blocks the event loop: a wait is an awaited ``BLPOP`` (``redis.asyncio``, or fakeredis' asyncio client
in embedded mode) or an awaited HTTP long poll, and the short database statements (a submission's
``COPY``, a status read, a cancel, a page of results) run in a worker thread, as FastAPI runs a sync
route; the event loop goes on serving everything else meanwhile.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from batcher._config import Settings
from batcher._jobs import JobStatus, Result
from batcher._states import JobKind
from batcher._submit import RequestSpec
from batcher._transport import Consumers, Poll, Until


class AsyncTransport(abc.ABC):
    """``Transport``'s verbs as coroutines; see ``batcher/_transport.py`` for each one's contract."""

    wait_slice_s: float
    is_local: bool
    """True when this process reaches the store itself (so a call's models are checked here, keys included)."""

    @abc.abstractmethod
    async def submit_conversations(
        self, model: str, conversations: Sequence[Any], kwargs: dict[str, Any]
    ) -> uuid.UUID: ...

    @abc.abstractmethod
    async def submit_fanout(
        self, kind: JobKind, models: list[str], messages: Any, kwargs: dict[str, Any]
    ) -> uuid.UUID: ...

    @abc.abstractmethod
    async def submit_requests(self, requests: Iterable[RequestSpec], kwargs: dict[str, Any]) -> uuid.UUID: ...

    @abc.abstractmethod
    async def submit_file(
        self, file: IO[bytes] | str | Path, default_model: str | None, kwargs: dict[str, Any]
    ) -> uuid.UUID: ...

    @abc.abstractmethod
    async def status(self, job_id: uuid.UUID) -> JobStatus: ...

    @abc.abstractmethod
    async def poll(self, job_id: uuid.UUID, timeout_s: float, until: Until) -> Poll: ...

    async def consumers(self, job_id: uuid.UUID) -> Consumers | None:
        """``Transport.consumers``, awaited: None when this transport cannot tell."""
        return None

    @abc.abstractmethod
    def results(self, job_id: uuid.UUID) -> AsyncIterator[Result]: ...

    @abc.abstractmethod
    async def write_jsonl(self, job_id: uuid.UUID, out: IO[bytes]) -> None: ...

    @abc.abstractmethod
    async def cancel(self, job_id: uuid.UUID) -> JobStatus: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


def default_async_transport(
    settings: Settings, *, base_url: str | None = None, api_key: str | None = None
) -> AsyncTransport:
    """As ``default_transport``: a service URL means HTTP; otherwise the cluster or embedded mode.
    Connects to nothing yet (the local transport starts on its first call, off the event loop)."""
    if base_url or settings.api_url:
        from batcher._transport_async_http import AsyncHttpTransport

        return AsyncHttpTransport(settings, base_url=base_url, api_key=api_key)
    from batcher._transport_async_local import AsyncLocalTransport

    return AsyncLocalTransport(settings)
