"""``AsyncClient`` and ``AsyncJob``: ``Client`` and ``Job`` for asyncio applications (FastAPI, aiohttp ...).

The same verbs, awaited, and the same checks (``batcher._client``'s ``batch_call``, ``fanout_call``,
``job_uuid``) and waiting rules (``batcher._waiting``): only the I/O differs. Waiting never blocks the
event loop: many jobs can be awaited at once by one loop, which keeps serving everything else.

    async with AsyncClient() as client:
        job = await client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "hi"}]])
        await job.wait()
        async for result in job.results(): ...
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any

from batcher._client import JobHandle, batch_call, fanout_call, job_uuid
from batcher._config import Settings, get_settings
from batcher._exceptions import ServiceUnavailableError
from batcher._jobs import JobStatus, Result
from batcher._response import ModelResponse
from batcher._states import JobKind
from batcher._submit import RequestSpec
from batcher._transport_async import AsyncTransport, default_async_transport
from batcher._validation import split_call_kwargs
from batcher._waiting import Outage, Race, Waiting, WorkerWatch, all_models_failed


class AsyncClient:
    """Submits jobs and reads them back, from an event loop.

    >>> async with AsyncClient() as client:
    ...     job = await client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "hi"}]])
    ...     await job.wait()

    As ``Client``: ``base_url=`` (and ``api_key=``), or ``BATCHER_API_URL`` / ``BATCHER_API_KEY``, reach a
    batcher service over HTTP (``httpx.AsyncClient``); otherwise the cluster (or embedded mode), whose
    short database statements run in a worker thread while the waits are awaited on Redis.
    ``transport=`` takes any ``batcher._transport_async.AsyncTransport``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        transport: AsyncTransport | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.transport = transport or default_async_transport(self.settings, base_url=base_url, api_key=api_key)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.transport!r}>"

    # --- submission ------------------------------------------------------------------------------

    async def submit(self, model: str, messages: Sequence[list[dict[str, Any]]], **kwargs: Any) -> AsyncJob:
        """``Client.submit``: one request per conversation in ``messages``, all to ``model``."""
        model, conversations = batch_call(model, messages, kwargs)
        job_id = await self.transport.submit_conversations(model, conversations, kwargs)
        return AsyncJob(self, job_id, JobKind.BATCH)

    async def submit_fastest(self, models: Sequence[str], messages: list[dict[str, Any]], **kwargs: Any) -> AsyncJob:
        """One prompt to every model; the first successful answer wins (see ``AsyncJob.first_response``)."""
        return await self._submit_fanout(JobKind.FASTEST, models, messages, kwargs)

    async def submit_all(self, models: Sequence[str], messages: list[dict[str, Any]], **kwargs: Any) -> AsyncJob:
        """One prompt to every model; every answer is kept, in the order of ``models``."""
        return await self._submit_fanout(JobKind.ALL, models, messages, kwargs)

    async def submit_requests(self, requests: Iterable[RequestSpec], **kwargs: Any) -> AsyncJob:
        """Requests that each name their model. Streamed: never held whole."""
        split_call_kwargs(kwargs)
        return AsyncJob(self, await self.transport.submit_requests(requests, kwargs), JobKind.BATCH)

    async def submit_file(
        self, file: IO[bytes] | str | Path, *, default_model: str | None = None, **kwargs: Any
    ) -> AsyncJob:
        """A JSONL prompt file (``batcher submit``'s format) as one batch job. Streamed: never held whole."""
        split_call_kwargs(kwargs)
        return AsyncJob(self, await self.transport.submit_file(file, default_model, kwargs), JobKind.BATCH)

    async def _submit_fanout(
        self, kind: JobKind, models: Sequence[str], messages: Any, kwargs: dict[str, Any]
    ) -> AsyncJob:
        routed, conversation = fanout_call(models, messages, kwargs)
        return AsyncJob(self, await self.transport.submit_fanout(kind, routed, conversation, kwargs), kind)

    # --- reattaching -----------------------------------------------------------------------------

    async def job(self, job_id: str | uuid.UUID) -> AsyncJob:
        """The job with this id (from any process). Raises ``JobNotFoundError``."""
        jid = job_uuid(job_id)
        return AsyncJob(self, jid, (await self.transport.status(jid)).kind)


class AsyncJob(JobHandle[AsyncClient]):
    """A handle on a submitted job, for an event loop. Cheap: every method asks the transport afresh."""

    @property
    def _transport(self) -> AsyncTransport:
        return self.client.transport

    async def status(self) -> JobStatus:
        return await self._transport.status(self.id)

    async def wait(self, timeout: float | None = None, *, progress: bool = False) -> JobStatus:
        """``Job.wait`` without blocking the loop: woken by the finalizer (an awaited ``BLPOP``, or the
        service's long poll), reading the job at least every few seconds; an outage of the store or
        the service is ridden out for up to ``DB_OUTAGE_TOLERANCE_S``. Raises ``WaitTimeoutError``
        after ``timeout`` seconds (the job goes on). Cancelling the awaiting task stops the wait, not the job."""
        waiting = Waiting(self.id, timeout, progress=progress, slice_s=self._transport.wait_slice_s)
        outage = Outage(self.id)
        watch = self._worker_watch(outage)
        with waiting:
            status: JobStatus = await outage.aride(self.status, waiting.deadline)
            while (wait_s := waiting.next_slice(status)) is not None:
                await self._check_workers(watch, status.done)
                poll = partial(self._transport.poll, self.id, wait_s, "final")
                status = (await outage.aride(poll, waiting.deadline)).job_status
            return status

    async def results(self) -> AsyncIterator[Result]:
        """Every request in input order, streamed (never the whole job in memory): ``async for``."""
        async for result in self._transport.results(self.id):
            yield result

    async def write_jsonl(self, out: IO[bytes]) -> None:
        """Every result as one JSON line each, in input order."""
        await self._transport.write_jsonl(self.id, out)

    async def cancel(self) -> JobStatus:
        """Stop every request not yet sent; in-flight ones are recorded when they return."""
        return await self._transport.cancel(self.id)

    async def first_response(self, timeout: float | None = None) -> ModelResponse:
        """Fastest-response: the first successful answer, as soon as it exists.

        Raises ``AllModelsFailedError`` (listing each model's failure) if no model answered.
        """
        race = Race(self.id, timeout, slice_s=self._transport.wait_slice_s)
        watch = self._worker_watch(None)
        while True:
            polled = await self._transport.poll(self.id, race.next_slice(), "first_response")
            if polled.response is not None:
                return polled.response
            if polled.job_status.is_final:
                raise all_models_failed([result async for result in self.results()])
            await self._check_workers(watch, polled.job_status.done)

    def _worker_watch(self, outage: Outage | None) -> WorkerWatch:
        return WorkerWatch(self.id, outage, heartbeat_s=self.client.settings.heartbeat_interval_s)

    async def _check_workers(self, watch: WorkerWatch, done: int) -> None:
        """``Job._check_workers``, awaited (the heartbeats are read in a worker thread)."""
        if not watch.due(done):
            return
        try:
            consumers = await self._transport.consumers(self.id)
        except ServiceUnavailableError:
            watch.outage_seen()
            return
        watch.observe(consumers)
