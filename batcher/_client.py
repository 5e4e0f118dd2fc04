"""``Client`` and ``Job``: submit large batches, poll them, wait for them, read them back.

One ``Client`` whatever runs the jobs: it checks each call (the same errors everywhere) and hands
the I/O to its transport (``batcher/_transport.py``): a cluster or embedded mode reached from this
process (``LocalTransport``), or a batcher service over HTTP (``HttpTransport``). ``Job`` owns the
loops: waiting with a progress bar, the first response of a race, riding out an outage.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import redis
from celery import Celery
from sqlalchemy import Engine

from batcher._config import Settings, get_settings
from batcher._exceptions import ConfigurationError, InvalidRequestError, JobNotFoundError, ServiceUnavailableError
from batcher._jobs import JobStatus, Result
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
from batcher._waiting import Outage, Race, Waiting, WorkerWatch, all_models_failed


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
        pydantic model); ``custom_llm_provider="openai"`` routes ``model`` as ``"openai/<model>"``.
        ``priority=`` (0-9, higher first, default 5) orders the job's backlog against other jobs';
        ``job.status()`` shows where it stands in line (``queued``, ``position``, ``ahead``, ``share``, ``eta_s``)."""
        model, conversations = batch_call(model, messages, kwargs)
        return Job(self, self.transport.submit_conversations(model, conversations, kwargs), JobKind.BATCH)

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
        routed, conversation = fanout_call(models, messages, kwargs)
        return Job(self, self.transport.submit_fanout(kind, routed, conversation, kwargs), kind)

    # --- reattaching -----------------------------------------------------------------------------

    def job(self, job_id: str | uuid.UUID) -> Job:
        """The job with this id (from any process). Raises ``JobNotFoundError``."""
        jid = job_uuid(job_id)
        return Job(self, jid, self.transport.status(jid).kind)


# --- the checks of a call, shared with ``AsyncClient`` (batcher/_async_client.py) -------------------


def batch_call(model: str, messages: Sequence[Any], kwargs: dict[str, Any]) -> tuple[str, list[Any]]:
    """``submit``'s arguments checked and normalised: the routed model and plain conversations.

    Messages may be dicts or message objects (a previous answer's ``choices[0].message``, any
    pydantic model); ``custom_llm_provider="openai"`` routes ``model`` as ``"openai/<model>"``."""
    check_conversations_shape(messages)
    model = with_provider(model, kwargs)
    conversations = [plain_conversation(conversation) for conversation in messages]
    split_call_kwargs(kwargs)  # options checked once, whatever the transport
    return model, conversations


def fanout_call(models: Sequence[str], messages: Any, kwargs: dict[str, Any]) -> tuple[list[str], Any]:
    """``submit_fastest`` / ``submit_all``'s arguments checked: the routed models and the conversation."""
    if isinstance(models, str) or not isinstance(models, Sequence) or not models:
        raise InvalidRequestError("must be a non-empty list of model names", field="models")
    check_single_conversation(messages, sender="this call", example_prefix="messages=")
    messages = validate_messages(messages, "messages")
    routed = [with_provider(model, kwargs, pop=False) for model in models]
    kwargs.pop("custom_llm_provider", None)
    split_call_kwargs(kwargs)
    return routed, messages


def job_uuid(job_id: str | uuid.UUID) -> uuid.UUID:
    """A job id as given (a UUID or its text); ``JobNotFoundError`` for anything else."""
    try:
        return job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        raise JobNotFoundError(f"{job_id!r} is not a job id (a UUID)") from None


C = TypeVar("C")


class JobHandle(Generic[C]):
    """What every job handle holds (``Job``, ``AsyncJob``): its client, its id and its kind."""

    def __init__(self, client: C, job_id: uuid.UUID, kind: JobKind) -> None:
        self.client = client
        self.id = job_id
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.kind.value}>"


class Job(JobHandle[Client]):
    """A handle on a submitted job. Cheap: every method asks the transport afresh."""

    @property
    def _transport(self) -> Transport:
        return self.client.transport

    def status(self) -> JobStatus:
        return self._transport.status(self.id)

    def wait(self, timeout: float | None = None, *, progress: bool = False) -> JobStatus:
        """Block until the job is final: woken by the finalizer, reading the job at least every few
        seconds (a wake-up may be lost). An outage of the store or the service is ridden out for up to
        ``DB_OUTAGE_TOLERANCE_S`` (the job goes on without us); then ``ServiceUnavailableError``."""
        waiting = Waiting(self.id, timeout, progress=progress, slice_s=self._transport.wait_slice_s)
        outage = Outage(self.id)
        watch = self._worker_watch(outage)
        with waiting:
            status: JobStatus = outage.ride(self.status, waiting.deadline)
            while (wait_s := waiting.next_slice(status)) is not None:
                self._check_workers(watch, status.done)
                status = outage.ride(
                    partial(self._transport.poll, self.id, wait_s, "final"), waiting.deadline
                ).job_status
            return status

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
        race = Race(self.id, timeout, slice_s=self._transport.wait_slice_s)
        watch = self._worker_watch(None)
        while True:
            polled = self._transport.poll(self.id, race.next_slice(), "first_response")
            if polled.response is not None:
                return polled.response
            if polled.job_status.is_final:
                raise all_models_failed(self.results())
            self._check_workers(watch, polled.job_status.done)

    def _worker_watch(self, outage: Outage | None) -> WorkerWatch:
        return WorkerWatch(self.id, outage, heartbeat_s=self.client.settings.heartbeat_interval_s)

    def _check_workers(self, watch: WorkerWatch, done: int) -> None:
        """``NoWorkerError`` once nobody has consumed the job's queue for a while (``batcher._waiting``)."""
        if not watch.due(done):
            return
        try:
            consumers = self._transport.consumers(self.id)
        except ServiceUnavailableError:
            watch.outage_seen()
            return
        watch.observe(consumers)
