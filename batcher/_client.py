"""``Client`` and ``Job``: submit large batches, poll them, wait for them, read them back."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from batcher import _keys
from batcher._config import Settings, get_settings
from batcher._db import store
from batcher._db.engine import get_engine
from batcher._exceptions import (
    AllModelsFailedError,
    InvalidRequestError,
    JobNotFoundError,
    ServiceUnavailableError,
    WaitTimeoutError,
    error_from_stored,
)
from batcher._jobs import JobStatus, Result
from batcher._mode import EMBEDDED, check_cluster, resolve_mode
from batcher._progress import ProgressBar
from batcher._response import ModelResponse
from batcher._states import JobKind, RequestState
from batcher._submit import RequestSpec, submit
from batcher._validation import (
    check_conversations_shape,
    check_single_conversation,
    split_call_kwargs,
    validate_messages,
)

WAIT_POLL_INTERVAL_S = 1.0
DB_OUTAGE_TOLERANCE_S = 300.0
"""How long ``Job.wait`` keeps waiting through a database outage before it says so."""
"""Longest a waiter sleeps between Postgres reads when no wake-up arrives (Redis may be gone)."""
PROGRESS_REFRESH_S = 0.25


class Client:
    """Submits jobs to the workers and reads them back from Postgres.

    >>> client = Client()
    >>> job = client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "hi"}]])
    >>> job.wait(progress=True)
    >>> for result in job.results(): ...

    With ``base_url=`` (and ``api_key=``), or ``BATCHER_API_URL`` / ``BATCHER_API_KEY`` set, the
    same calls go to a batcher HTTP service instead (``batcher._remote.RemoteClient``).
    """

    _job_type: type[Job]
    """The ``Job`` class this client hands out (``RemoteClient``'s talk to the HTTP service)."""

    def __new__(
        cls, settings: Settings | None = None, *, base_url: str | None = None, api_key: str | None = None
    ) -> Client:
        # A service URL (argument or BATCHER_API_URL) selects the HTTP implementation, same interface.
        if cls is Client and (base_url or (settings or get_settings()).api_url):
            from batcher._remote import RemoteClient

            return super().__new__(RemoteClient)
        return super().__new__(cls)

    def __init__(
        self, settings: Settings | None = None, *, base_url: str | None = None, api_key: str | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self._app: Celery | None = None
        self._redis: redis.Redis[bytes] | None = None
        self._embedded = resolve_mode(self.settings) == EMBEDDED
        if self._embedded:
            from batcher._embedded import get_runtime

            runtime = get_runtime(self.settings)
            # The runtime's database and broker, this client's other settings (limits, timeouts).
            self.settings = self.settings.model_copy(
                update={"database_url": runtime.settings.database_url, "redis_url": runtime.settings.redis_url}
            )
            self._app, self._redis = runtime.app, runtime.redis
        else:
            check_cluster(self.settings)

    # --- resources ---------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return get_engine(self.settings)

    @property
    def redis(self) -> redis.Redis[bytes]:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=30)
        return self._redis

    @property
    def celery(self) -> Celery:
        if self._app is None:
            from workers.celery_app import make_celery_app  # the submitter needs only the app's config

            self._app = make_celery_app(self.settings)
        return self._app

    def close(self) -> None:
        if self._embedded:  # the process's embedded runtime outlives any one client
            return
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._app is not None:
            self._app.close()
            self._app = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- submission --------------------------------------------------------------------------

    def submit(self, model: str, messages: Sequence[list[dict[str, Any]]], **kwargs: Any) -> Job:
        """One request per conversation in ``messages``, all to ``model``. Returns at once."""
        check_conversations_shape(messages)
        options = split_call_kwargs(kwargs)
        specs = (RequestSpec(model=model, messages=conversation) for conversation in messages)
        return self._submit(JobKind.BATCH, specs, options)

    def submit_fastest(self, models: Sequence[str], messages: list[dict[str, Any]], **kwargs: Any) -> Job:
        """One prompt to every model; the first successful answer wins (see ``Job.first_response``)."""
        return self._submit_fanout(JobKind.FASTEST, models, messages, kwargs)

    def submit_all(self, models: Sequence[str], messages: list[dict[str, Any]], **kwargs: Any) -> Job:
        """One prompt to every model; every answer is kept, in the order of ``models``."""
        return self._submit_fanout(JobKind.ALL, models, messages, kwargs)

    def submit_requests(self, requests: Iterable[RequestSpec], **kwargs: Any) -> Job:
        """Requests that each name their model (lines of a file). Streamed: never held whole."""
        return self._submit(JobKind.BATCH, requests, split_call_kwargs(kwargs))

    def _submit_fanout(self, kind: JobKind, models: Sequence[str], messages: Any, kwargs: dict[str, Any]) -> Job:
        if isinstance(models, str) or not isinstance(models, Sequence) or not models:
            raise InvalidRequestError("must be a non-empty list of model names", field="models")
        check_single_conversation(messages, sender="this call", example_prefix="messages=")
        validate_messages(messages, "messages")
        options = split_call_kwargs(kwargs)
        specs = (RequestSpec(model=model, messages=messages, where=f"models[{i}]") for i, model in enumerate(models))
        return self._submit(kind, specs, options)

    def _submit(self, kind: JobKind, specs: Iterable[RequestSpec], options: Any) -> Job:
        job_id = submit(self.engine, self.celery, self.settings, kind=kind, specs=specs, options=options)
        return Job(self, job_id, kind)

    # --- reattaching -------------------------------------------------------------------------

    def job(self, job_id: str | uuid.UUID) -> Job:
        """The job with this id (from any process). Raises ``JobNotFoundError``."""
        try:
            jid = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
        except ValueError:
            raise JobNotFoundError(f"{job_id!r} is not a job id (a UUID)") from None
        status = self._status(jid)
        return self._job_type(self, jid, status.kind)

    def _status(self, job_id: uuid.UUID) -> JobStatus:
        with self.engine.connect() as conn:
            row = store.job_row(conn, job_id)
        if row is None:
            raise JobNotFoundError(f"no job {job_id}")
        return JobStatus.from_row(row)


class Job:
    """A handle on a submitted job. Cheap: every method reads Postgres afresh."""

    def __init__(self, client: Client, job_id: uuid.UUID, kind: JobKind) -> None:
        self.client = client
        self.id = job_id
        self.kind = kind

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind.value}>"

    def status(self) -> JobStatus:
        return self.client._status(self.id)

    def wait(self, timeout: float | None = None, *, progress: bool = False) -> JobStatus:
        """Block until the job is final; woken by the finalizer, with Postgres polls as the fallback.

        A database outage while waiting is ridden out (the job goes on without us) for up to
        ``DB_OUTAGE_TOLERANCE_S``; then ``ServiceUnavailableError`` says so."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(f"job {str(self.id)[:8]}") if progress else None
        interval = PROGRESS_REFRESH_S if progress else WAIT_POLL_INTERVAL_S
        unreachable_since: float | None = None
        try:
            if bar is not None:
                bar.__enter__()
            while True:
                try:
                    status = self.status()
                    unreachable_since = None
                except OperationalError as exc:
                    now = time.monotonic()
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since > DB_OUTAGE_TOLERANCE_S:
                        raise ServiceUnavailableError(
                            f"the database has been unreachable for {now - unreachable_since:.0f} s while waiting "
                            f"for job {self.id} ({str(exc.orig).splitlines()[0] if exc.orig else exc}); the job "
                            "goes on: wait again once the database is back"
                        ) from None
                    if deadline is not None and now >= deadline:
                        raise WaitTimeoutError(
                            f"job {self.id}: the database was unreachable until the timeout"
                        ) from None
                    time.sleep(WAIT_POLL_INTERVAL_S)
                    continue
                if bar is not None:
                    bar.update(status)
                if status.is_final:
                    return status
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeoutError(
                        f"job {self.id} is still {status.state.value} after {timeout} s "
                        f"({status.done}/{status.total} done); it goes on running"
                    )
                self._sleep_until_woken(interval if remaining is None else min(interval, remaining))
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)

    def _sleep_until_woken(self, timeout_s: float) -> None:
        key = _keys.job_done_key(str(self.id))
        try:
            item = self.client.redis.blpop([key], timeout=max(timeout_s, 0.01))
            if item is not None:
                self._give_back(key, item[1])  # for other waiters
        except redis.RedisError:
            time.sleep(timeout_s)  # Redis is away: fall back to polling Postgres

    def _give_back(self, key: Any, value: Any) -> None:
        """Push a popped wake-up back, re-arming its expiry (the pop may have deleted the list and its TTL)."""
        pipe = self.client.redis.pipeline()
        pipe.rpush(key, value)
        pipe.expire(key, _keys.WAKE_TTL_S)
        pipe.execute()

    def results(self) -> Iterator[Result]:
        """Every request in input order, streamed from Postgres (never the whole job in memory)."""
        for row in store.stream_results(self.client.engine, self.id):
            yield _result(row)

    def write_jsonl(self, out: IO[bytes]) -> None:
        """Every result as one JSON line each, in input order (Postgres writes them itself)."""
        if store.export_results_jsonl(self.client.engine, self.id, out):
            return
        for result in self.results():
            out.write(json.dumps(result.as_line()).encode() + b"\n")

    def cancel(self) -> JobStatus:
        """Stop every request not yet sent; in-flight ones are recorded when they return."""
        with self.client.engine.begin() as conn:
            store.cancel_job(conn, self.id)
            state = store.finalize_job(conn, self.id)
        if state is not None:
            from workers._execute import wake_waiters

            wake_waiters(self.client.redis, str(self.id), state)
        return self.status()

    def first_response(self, timeout: float | None = None) -> ModelResponse:
        """Fastest-response: the first successful answer, as soon as it exists.

        Woken by the winning worker through Redis; falls back to Postgres if Redis is lost.
        Raises ``AllModelsFailedError`` (listing each model's failure) if no model answered.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        keys = [_keys.race_win_key(str(self.id)), _keys.job_done_key(str(self.id))]
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(f"no model of job {self.id} answered within {timeout} s")
            wait_s = WAIT_POLL_INTERVAL_S if remaining is None else min(WAIT_POLL_INTERVAL_S, remaining)
            try:
                item = self.client.redis.blpop(keys, timeout=max(wait_s, 0.01))
            except redis.RedisError:
                item = None
                time.sleep(wait_s)
            if item is not None:
                event = json.loads(item[1])
                if event.get("event") == "win":
                    self._give_back(item[0], item[1])
                    return ModelResponse.model_validate(event["response"])
                self._give_back(item[0], item[1])
            status = self.status()
            if status.winner_index is not None:
                return self._response_at(status.winner_index)
            if status.is_final:
                errors: dict[str, BaseException] = {}
                for result in self.results():
                    if result.error is not None:
                        errors[f"{result.model} (#{result.index})" if result.model in errors else result.model] = (
                            result.error
                        )
                raise AllModelsFailedError(errors)

    def _response_at(self, index: int) -> ModelResponse:
        for result in self.results():
            if result.index == index and result.response is not None:
                return result.response
        raise JobNotFoundError(f"job {self.id} has no stored response at index {index}")


def _result(row: dict[str, Any]) -> Result:
    state = RequestState(row["state"])
    response = ModelResponse.model_validate(row["body"]) if row["body"] is not None else None
    error = None
    if response is None:
        error_type = row["error_type"]
        message = row["error"]
        if not state.is_final:
            error_type, message = "RequestError", f"not finished yet ({state.value})"
        error = error_from_stored(
            error_type, message, model=row["model"], provider=row["provider"], status_code=row["status_code"]
        )
    return Result(
        index=row["idx"],
        model=row["model"],
        state=state,
        attempts=row["attempts"],
        response=response,
        error=error,
        custom_id=row["custom_id"],
        latency_ms=row["latency_ms"],
    )


Client._job_type = Job
