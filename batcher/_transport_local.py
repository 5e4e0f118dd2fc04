"""The local transport: jobs in Postgres and the broker, reached from this process.

Two configurations of the same code: a **cluster** (``BATCHER_DATABASE_URL``, ``BATCHER_REDIS_URL``;
workers elsewhere) and **embedded mode** (the process's embedded runtime: a SQLite file, kombu's
in-memory broker and an in-process worker, shared by every client of the process). Which one is
decided once, by ``batcher._mode``.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from batcher import _standing, _wakeup
from batcher._celery import make_celery_app
from batcher._config import Settings
from batcher._db import recovery
from batcher._db.contract import JobStore, store_for
from batcher._db.engine import database_problem, get_engine
from batcher._dispatch import queue_for
from batcher._exceptions import ConfigurationError, JobNotFoundError
from batcher._files import read_jsonl
from batcher._jobs import JobStatus, Result
from batcher._migrate import ensure_schema
from batcher._mode import EMBEDDED, check_cluster, resolve_mode
from batcher._response import ModelResponse
from batcher._states import JobKind, JobState
from batcher._submit import RequestSpec, submit, withdraw
from batcher._transport import Consumers, Poll, Transport, Until
from batcher._validation import split_call_kwargs

WAIT_SLICE_S = _wakeup.WAIT_SLICE_S


class LocalTransport(Transport):
    """Postgres (or embedded mode's SQLite) for the truth, the broker to enqueue, Redis to be woken."""

    wait_slice_s = WAIT_SLICE_S

    def __init__(
        self, settings: Settings, *, app: Celery | None = None, redis_client: Any = None, runtime: Any = None
    ) -> None:
        self.settings = settings
        self._app = app
        self._redis = redis_client
        self._shared = app is not None  # embedded mode's runtime outlives any one client
        self._queues: dict[uuid.UUID, str] = {}  # each job's queue, read once
        self._runtime = runtime  # embedded mode: its worker runs work while this process waits

    @classmethod
    def for_settings(cls, settings: Settings) -> LocalTransport:
        """The cluster these settings name, or this process's embedded runtime (``batcher._mode``)."""
        if resolve_mode(settings) == EMBEDDED:
            from batcher._embedded import get_runtime  # composition root of embedded mode

            runtime = get_runtime(settings)
            # The runtime's database and broker, the caller's other settings (limits, timeouts).
            local = settings.model_copy(
                update={"database_url": runtime.settings.database_url, "redis_url": runtime.settings.redis_url}
            )
            return cls(local, app=runtime.app, redis_client=runtime.redis, runtime=runtime)
        check_cluster(settings)
        ensure_schema(settings)  # the first use creates and migrates the database, or says what to run
        return cls(settings)

    # --- resources ---------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return get_engine(self.settings)

    @property
    def store(self) -> JobStore:
        return store_for(self.engine)

    @property
    def redis(self) -> redis.Redis[bytes]:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=30)
        return self._redis  # type: ignore[no-any-return]

    @property
    def celery(self) -> Celery:
        if self._app is None:
            self._app = make_celery_app(self.settings)  # a submitter needs only the app's configuration
        return self._app

    def close(self) -> None:
        if self._shared:
            return
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._app is not None:
            self._app.close()
            self._app = None

    # --- submission --------------------------------------------------------------------------------

    def submit_conversations(self, model: str, conversations: Sequence[Any], kwargs: dict[str, Any]) -> uuid.UUID:
        specs = (RequestSpec(model=model, messages=conversation) for conversation in conversations)
        return self._submit(JobKind.BATCH, specs, kwargs)

    def submit_fanout(self, kind: JobKind, models: list[str], messages: Any, kwargs: dict[str, Any]) -> uuid.UUID:
        specs = (RequestSpec(model=model, messages=messages, where=f"models[{i}]") for i, model in enumerate(models))
        return self._submit(kind, specs, kwargs)

    def submit_requests(self, requests: Iterable[RequestSpec], kwargs: dict[str, Any]) -> uuid.UUID:
        return self._submit(JobKind.BATCH, requests, kwargs)

    def submit_file(self, file: IO[bytes] | str | Path, default_model: str | None, kwargs: dict[str, Any]) -> uuid.UUID:
        if isinstance(file, str | Path):
            with Path(file).open("rb") as handle:
                return self.submit_file(handle, default_model, kwargs)
        return self.submit_requests(read_jsonl(file, default_model=default_model), kwargs)

    def _submit(self, kind: JobKind, specs: Iterable[RequestSpec], kwargs: dict[str, Any]) -> uuid.UUID:
        options = split_call_kwargs(kwargs)
        job_id = submit(self.engine, self.celery, self.settings, kind=kind, specs=specs, options=options)
        if self._runtime is not None:
            self._runtime.stored(job_id)
        return job_id

    # --- reading -----------------------------------------------------------------------------------

    def status(self, job_id: uuid.UUID) -> JobStatus:
        try:
            with self.engine.connect() as conn:
                row = self.store.job_row(conn, job_id)
                active = row is not None and not JobState(row["state"]).is_final
                queued = self.store.backlog(conn, job_id) if active else 0
        except DBAPIError as exc:
            raise self._problem(exc) from None
        if row is None:
            raise JobNotFoundError(f"no job {job_id}")
        standing = _standing.read(self.redis, job_id) if active else None  # Redis away: None
        return JobStatus.from_row(row, queued=queued, standing=standing)

    def consumers(self, job_id: uuid.UUID) -> Consumers | None:
        if self._shared:
            return None  # embedded mode: the process's own worker consumes every queue
        try:
            with self.engine.connect() as conn:
                queue = self._queues.get(job_id)
                if queue is None:
                    row = self.store.job_row(conn, job_id)
                    if row is None:
                        raise JobNotFoundError(f"no job {job_id}")
                    queue = self._queues[job_id] = queue_for(row["kind"], self.settings, row.get("queue"))
                workers = recovery.live_workers(conn, lapse_s=self.settings.worker_lapse_s)
        except DBAPIError as exc:
            raise self._problem(exc) from None
        live = sum(1 for w in workers if w["stopping_at"] is None and _consumes(w["queues"], queue))
        return Consumers(queue=queue, live=live)

    def _problem(self, exc: DBAPIError) -> Exception:
        """A failed read as batcher's error: a mistake (``ConfigurationError``) or an outage, one line each."""
        problem = database_problem(exc, self.settings.database_url)
        if isinstance(exc, OperationalError) or isinstance(problem, ConfigurationError):
            return problem
        return exc

    def poll(self, job_id: uuid.UUID, timeout_s: float, until: Until) -> Poll:
        if self._runtime is not None:
            self._runtime.start_worker()  # once: waiting on a job is what runs it in embedded mode
        keys = _wakeup.done_keys(str(job_id), first_response=until == "first_response")
        try:
            event = _wakeup.wait(self.redis, keys, timeout_s)
        except redis.RedisError:  # Redis is away: fall back to polling Postgres
            event = None
            time.sleep(timeout_s)
        return self.polled(job_id, until, event)

    def polled(self, job_id: uuid.UUID, until: Until, event: _wakeup.Event | None) -> Poll:
        """What a wait that woke with ``event`` (or timed out: ``None``) returns: the job read afresh,
        and the race's answer once there is one (from the wake-up, else from the store)."""
        if event is not None and event.get("event") == "win":  # the answer itself: no status needed
            return Poll(None, ModelResponse.model_validate(event["response"]))
        status = self.status(job_id)
        if until == "first_response" and status.winner_index is not None:
            return Poll(status, self._response_at(job_id, status.winner_index))
        return Poll(status)

    def _response_at(self, job_id: uuid.UUID, index: int) -> ModelResponse | None:
        for result in self.results(job_id):
            if result.index == index:
                return result.response
        return None

    def results(self, job_id: uuid.UUID) -> Iterator[Result]:
        for row in self.store.stream_results(self.engine, job_id):
            yield Result.from_row(row)

    def write_jsonl(self, job_id: uuid.UUID, out: IO[bytes]) -> None:
        if self.store.export_results_jsonl(self.engine, job_id, out):  # Postgres writes the lines itself
            return
        for result in self.results(job_id):
            out.write(json.dumps(result.as_line()).encode() + b"\n")

    def cancel(self, job_id: uuid.UUID) -> JobStatus:
        with self.engine.begin() as conn:
            self.store.cancel_job(conn, job_id)
            state = self.store.finalize_job(conn, job_id)
            row = self.store.job_row(conn, job_id)
        withdraw(self.celery, self.settings, job_id, row.get("queue") if row else None)
        if state is not None:
            with contextlib.suppress(redis.RedisError):  # waiters also read Postgres
                _wakeup.announce_done(self.redis, str(job_id), state)
        return self.status(job_id)


def _consumes(queues: str | None, queue: str) -> bool:
    """A worker row's queues (comma-separated) include ``queue``; a row that lists none counts as consuming."""
    names = [q for q in (queues or "").split(",") if q]
    return not names or queue in names
