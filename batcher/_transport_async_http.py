"""The asyncio HTTP transport: a batcher service reached with ``httpx.AsyncClient``, no thread at all.

``HttpTransport``'s verbs, driven by an event loop: every verb is the same flow as the blocking
transport's (``batcher/_transport_http.py``: the same requests, checks, retries, idempotency keys and
errors), its requests awaited; a wait is the service's long poll (``/v1/jobs/{id}/wait``), awaited.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from batcher._config import Settings
from batcher._exceptions import BatcherError
from batcher._jobs import JobStatus, Result
from batcher._states import JobKind
from batcher._submit import RequestSpec
from batcher._transport import Poll, Until
from batcher._transport_async import AsyncTransport
from batcher._transport_http import (
    LONG_POLL_S,
    TIMEOUT,
    Call,
    Driving,
    Flow,
    cancel_flow,
    checked,
    connection,
    conversations_flow,
    fanout_flow,
    file_flow,
    next_attempt,
    poll_flow,
    requests_flow,
    result_of,
    results_path,
    status_flow,
    write_line,
)

T = TypeVar("T")


class AsyncHttpTransport(AsyncTransport):
    """Talks to a batcher HTTP service from an event loop; the same verbs as ``HttpTransport``."""

    wait_slice_s = LONG_POLL_S
    is_local = False

    def __init__(self, settings: Settings, *, base_url: str | None = None, api_key: str | None = None) -> None:
        self.settings = settings
        self.base_url, headers = connection(settings, base_url, api_key)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=TIMEOUT)

    def __repr__(self) -> str:
        return f"<AsyncHttpTransport {self.base_url}>"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, call: Call) -> httpx.Response:
        """One call, retried after connection errors and 5xx; errors raised as batcher's exceptions."""
        for attempt in itertools.count():
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.request(
                    call.method, call.path, **call.kwargs
                )
            except httpx.TransportError as exc:
                outcome = exc
            decision = next_attempt(self.base_url, attempt, call.retries, outcome)
            if isinstance(decision, httpx.Response):
                return decision
            await asyncio.sleep(decision)
        raise AssertionError("unreachable")

    async def run(self, flow: Flow[T]) -> T:
        driving = Driving(flow)
        while (call := driving.next_call()) is not None:
            try:
                driving.outcome = await self.request(call)
            except BatcherError as exc:
                driving.outcome = exc
        return driving.value

    # --- submission --------------------------------------------------------------------------------

    async def submit_conversations(self, model: str, conversations: Sequence[Any], kwargs: dict[str, Any]) -> uuid.UUID:
        return await self.run(conversations_flow(model, conversations, kwargs))

    async def submit_fanout(self, kind: JobKind, models: list[str], messages: Any, kwargs: dict[str, Any]) -> uuid.UUID:
        return await self.run(fanout_flow(kind, models, messages, kwargs))

    async def submit_requests(self, requests: Iterable[RequestSpec], kwargs: dict[str, Any]) -> uuid.UUID:
        return await self.run(requests_flow(requests, kwargs))

    async def submit_file(
        self, file: IO[bytes] | str | Path, default_model: str | None, kwargs: dict[str, Any]
    ) -> uuid.UUID:
        return await self.run(file_flow(file, default_model, kwargs))

    # --- reading -----------------------------------------------------------------------------------

    async def status(self, job_id: uuid.UUID) -> JobStatus:
        return await self.run(status_flow(job_id))

    async def poll(self, job_id: uuid.UUID, timeout_s: float, until: Until) -> Poll:
        return await self.run(poll_flow(job_id, timeout_s, until))

    async def results(self, job_id: uuid.UUID) -> AsyncIterator[Result]:
        """Streamed JSONL from the service, in input order (never the whole job in memory)."""
        async with self._http.stream("GET", results_path(job_id)) as response:
            if response.status_code >= 400:
                await response.aread()
                checked(response)
            async for line in response.aiter_lines():
                if (result := result_of(line)) is not None:
                    yield result

    async def write_jsonl(self, job_id: uuid.UUID, out: IO[bytes]) -> None:
        async for result in self.results(job_id):
            write_line(out, result)

    async def cancel(self, job_id: uuid.UUID) -> JobStatus:
        return await self.run(cancel_flow(job_id))
