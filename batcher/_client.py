"""``Client`` and ``Job``: submit large batches, poll them, wait for them, read them back.

One ``Client`` whatever runs the jobs: it checks each call (the same errors everywhere) and hands
the I/O to its transport (``batcher/_transport.py``): a cluster or embedded mode reached from this
process (``LocalTransport``), or a batcher service over HTTP (``HttpTransport``). ``Job`` owns the
loops: waiting with a progress bar, the first response of a race, riding out an outage.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import redis
from celery import Celery
from sqlalchemy import Engine

from batcher._config import Settings, get_settings
from batcher._exceptions import (
    AllModelsFailedError,
    ConfigurationError,
    InvalidRequestError,
    JobNotFoundError,
    NoWorkerError,
    ServiceUnavailableError,
    WaitTimeoutError,
)
from batcher._jobs import JobStatus, Result
from batcher._progress import ProgressBar
from batcher._response import ModelResponse
from batcher._states import JobKind
from batcher._submit import RequestSpec
from batcher._transport import Transport
from batcher._validation import (
    check_conversations_shape,
    check_single_conversation,
    plain_conversation,
    split_call_kwargs,
    validate_messages,
    with_provider,
)

PROGRESS_REFRESH_S = 0.25
DB_OUTAGE_TOLERANCE_S = 300.0
"""How long ``Job.wait`` keeps waiting through an outage of the store (or the service) before it says so."""
OUTAGE_RETRY_S = 1.0
NO_WORKER_GRACE_S = 3.0
"""How long a wait sees no live worker consuming its job's queue, and no progress, before it raises
``NoWorkerError`` (the job stays stored and runs once a worker starts): the first look is at once, so
a job submitted with no worker running fails this long (plus one check) after its wait began."""
NO_WORKER_CHECK_S = 1.0
"""How often a wait reads the workers' heartbeats (one small query)."""


def default_transport(settings: Settings, *, base_url: str | None = None, api_key: str | None = None) -> Transport:
    """A service URL (argument or ``BATCHER_API_URL``) means HTTP; otherwise the cluster or embedded mode."""
    if base_url or settings.api_url:
        from batcher._transport_http import HttpTransport

        return HttpTransport(settings, base_url=base_url, api_key=api_key)
    from batcher._transport_local import LocalTransport

    return LocalTransport.for_settings(settings)


class Client:
    """Submits jobs and reads them back.

    >>> client = Client()
    >>> job = client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "hi"}]])
    >>> job.wait(progress=True)
    >>> for result in job.results(): ...

    With ``base_url=`` (and ``api_key=``), or ``BATCHER_API_URL`` / ``BATCHER_API_KEY`` set, the
    same calls go to a batcher HTTP service; ``transport=`` takes any ``batcher._transport.Transport``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.transport = transport or default_transport(self.settings, base_url=base_url, api_key=api_key)

    def __repr__(self) -> str:
        return f"<Client {self.transport!r}>"

    # --- resources (local transports only) -------------------------------------------------------

    def _local(self, what: str) -> Any:
        from batcher._transport_local import LocalTransport

        if not isinstance(self.transport, LocalTransport):
            raise ConfigurationError(f"this client talks to a batcher service over HTTP: it has no {what}")
        return self.transport

    @property
    def engine(self) -> Engine:
        """The database of a local client (evaluation runs, tests, benchmarks read it directly)."""
        return self._local("database").engine  # type: ignore[no-any-return]

    @property
    def redis(self) -> redis.Redis[bytes]:
        return self._local("Redis").redis  # type: ignore[no-any-return]

    @property
    def celery(self) -> Celery:
        return self._local("Celery app").celery  # type: ignore[no-any-return]

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- submission ------------------------------------------------------------------------------

    def submit(self, model: str, messages: Sequence[list[dict[str, Any]]], **kwargs: Any) -> Job:
        """One request per conversation in ``messages``, all to ``model``. Returns at once.

        Messages may be dicts or message objects (a previous answer's ``choices[0].message``, any
        pydantic model); ``custom_llm_provider="openai"`` routes ``model`` as ``"openai/<model>"``."""
        check_conversations_shape(messages)
        model = with_provider(model, kwargs)
        messages = [plain_conversation(conversation) for conversation in messages]
        split_call_kwargs(kwargs)  # options checked once, whatever the transport
        return Job(self, self.transport.submit_conversations(model, messages, kwargs), JobKind.BATCH)

    def submit_fastest(self, models: Sequence[str], messages: list[dict[str, Any]], **kwargs: Any) -> Job:
        """One prompt to every model; the first successful answer wins (see ``Job.first_response``)."""
        return self._submit_fanout(JobKind.FASTEST, models, messages, kwargs)

    def submit_all(self, models: Sequence[str], messages: list[dict[str, Any]], **kwargs: Any) -> Job:
        """One prompt to every model; every answer is kept, in the order of ``models``."""
        return self._submit_fanout(JobKind.ALL, models, messages, kwargs)

    def submit_requests(self, requests: Iterable[RequestSpec], **kwargs: Any) -> Job:
        """Requests that each name their model (lines of a file). Streamed: never held whole."""
        split_call_kwargs(kwargs)
        return Job(self, self.transport.submit_requests(requests, kwargs), JobKind.BATCH)

    def submit_file(self, file: IO[bytes] | str | Path, *, default_model: str | None = None, **kwargs: Any) -> Job:
        """A JSONL prompt file (``batcher submit``'s format) as one batch job. Streamed: never held whole."""
        split_call_kwargs(kwargs)
        return Job(self, self.transport.submit_file(file, default_model, kwargs), JobKind.BATCH)

    def _submit_fanout(self, kind: JobKind, models: Sequence[str], messages: Any, kwargs: dict[str, Any]) -> Job:
        if isinstance(models, str) or not isinstance(models, Sequence) or not models:
            raise InvalidRequestError("must be a non-empty list of model names", field="models")
        check_single_conversation(messages, sender="this call", example_prefix="messages=")
        messages = validate_messages(messages, "messages")
        models = [with_provider(model, kwargs, pop=False) for model in models]
        kwargs.pop("custom_llm_provider", None)
        split_call_kwargs(kwargs)
        return Job(self, self.transport.submit_fanout(kind, models, messages, kwargs), kind)

    # --- reattaching -----------------------------------------------------------------------------

    def job(self, job_id: str | uuid.UUID) -> Job:
        """The job with this id (from any process). Raises ``JobNotFoundError``."""
        try:
            jid = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
        except ValueError:
            raise JobNotFoundError(f"{job_id!r} is not a job id (a UUID)") from None
        return Job(self, jid, self.transport.status(jid).kind)


class Job:
    """A handle on a submitted job. Cheap: every method asks the transport afresh."""

    def __init__(self, client: Client, job_id: uuid.UUID, kind: JobKind) -> None:
        self.client = client
        self.id = job_id
        self.kind = kind

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind.value}>"

    @property
    def _transport(self) -> Transport:
        return self.client.transport

    def status(self) -> JobStatus:
        return self._transport.status(self.id)

    def wait(self, timeout: float | None = None, *, progress: bool = False) -> JobStatus:
        """Block until the job is final: woken by the finalizer, reading the job at least every few
        seconds (a wake-up may be lost). An outage of the store or the service is ridden out for up to
        ``DB_OUTAGE_TOLERANCE_S`` (the job goes on without us); then ``ServiceUnavailableError``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(f"job {str(self.id)[:8]}") if progress else None
        slice_s = PROGRESS_REFRESH_S if progress else self._transport.wait_slice_s
        outage = _Outage(self.id)
        watch = _WorkerWatch(self, outage)
        try:
            if bar is not None:
                bar.__enter__()
            status: JobStatus = outage.ride(self.status, deadline)
            while True:
                if bar is not None:
                    bar.update(status)
                if status.is_final:
                    return status
                watch.check(status.done)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeoutError(
                        f"job {self.id} is still {status.state.value} after {timeout} s "
                        f"({status.done}/{status.total} done); it goes on running"
                    )
                wait_s = slice_s if remaining is None else min(slice_s, remaining)
                status = outage.ride(
                    lambda wait_s=wait_s: self._transport.poll(self.id, wait_s, "final"), deadline
                ).status
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)

    def results(self) -> Iterator[Result]:
        """Every request in input order, streamed (never the whole job in memory)."""
        return self._transport.results(self.id)

    def write_jsonl(self, out: IO[bytes]) -> None:
        """Every result as one JSON line each, in input order."""
        self._transport.write_jsonl(self.id, out)

    def cancel(self) -> JobStatus:
        """Stop every request not yet sent; in-flight ones are recorded when they return."""
        return self._transport.cancel(self.id)

    def first_response(self, timeout: float | None = None) -> ModelResponse:
        """Fastest-response: the first successful answer, as soon as it exists.

        Raises ``AllModelsFailedError`` (listing each model's failure) if no model answered.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = _WorkerWatch(self)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(f"no model of job {self.id} answered within {timeout} s")
            slice_s = (
                self._transport.wait_slice_s if remaining is None else min(self._transport.wait_slice_s, remaining)
            )
            polled = self._transport.poll(self.id, slice_s, "first_response")
            if polled.response is not None:
                return polled.response
            if polled.status.is_final:
                errors: dict[str, BaseException] = {}
                for result in self.results():
                    if result.error is not None:
                        key = f"{result.model} (#{result.index})" if result.model in errors else result.model
                        errors[key] = result.error
                raise AllModelsFailedError(errors)
            watch.check(polled.status.done)


class _WorkerWatch:
    """Says when nobody will run a job: no live worker consumes its queue, and it makes no progress,
    for ``NO_WORKER_GRACE_S``. Keeps quiet while a worker is there or appears, on transports that cannot
    tell (HTTP, embedded mode's own worker), and for a while after an outage (heartbeats written during
    it failed: the workers' next beats are on their way)."""

    def __init__(self, job: Job, outage: _Outage | None = None) -> None:
        self.job = job
        self.outage = outage
        self.since: float | None = None
        self.done = -1
        self.next_check = 0.0
        self.off = False

    def check(self, done: int) -> None:
        if self.off:
            return
        now = time.monotonic()
        if done != self.done:  # progress: someone is working on it
            self.done, self.since = done, None
        if now < self.next_check:
            return
        self.next_check = now + NO_WORKER_CHECK_S
        try:
            consumers = self.job.client.transport.consumers(self.job.id)
        except ServiceUnavailableError:
            self.since = None  # an outage: riding it out is the wait's business
            return
        if consumers is None:
            self.off = True
            return
        if consumers.live:
            self.since = None
            return
        if self.since is None:
            self.since = now
        last_outage = self.outage.last_seen if self.outage is not None else None
        if (
            last_outage is not None
            and now - last_outage < NO_WORKER_GRACE_S + self.job.client.settings.heartbeat_interval_s
        ):
            return
        if now - self.since >= NO_WORKER_GRACE_S:
            raise NoWorkerError(consumers.queue, job_id=str(self.job.id))


class _Outage:
    """Rides out a store (or service) that is briefly away while a job is waited for."""

    def __init__(self, job_id: uuid.UUID) -> None:
        self.job_id = job_id
        self.since: float | None = None
        self.last_seen: float | None = None
        """When the last failed call was (monotonic): the workers' heartbeats may lag for a while after."""

    def ride(self, call: Any, deadline: float | None) -> Any:
        """``call()``; while it raises ``ServiceUnavailableError``, retry for up to the tolerance."""
        while True:
            try:
                value = call()
                self.since = None
                return value
            except ServiceUnavailableError as exc:
                now = time.monotonic()
                self.since = self.since or now
                self.last_seen = now
                if now - self.since > DB_OUTAGE_TOLERANCE_S:
                    raise ServiceUnavailableError(
                        f"{exc} for {now - self.since:.0f} s while waiting for job {self.job_id}; the job goes "
                        "on: wait again once it is back"
                    ) from None
                if deadline is not None and now >= deadline:
                    raise WaitTimeoutError(f"job {self.job_id}: unreachable until the timeout ({exc})") from None
                time.sleep(OUTAGE_RETRY_S)
