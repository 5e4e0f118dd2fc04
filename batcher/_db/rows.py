"""The values the job store takes and gives back, shared by both implementations and their callers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batcher._scheduling import DEFAULT_PRIORITY


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to insert: ``queued``, its counters at zero."""

    id: uuid.UUID
    kind: str
    params: dict[str, Any]
    """The job's options and provider parameters (see ``batcher._submit.job_params``)."""
    total: int = 0
    """Usually set once its requests are stored (``set_total``)."""
    deadline_at: datetime | None = None
    credentials: str | None = None
    user_metadata: dict[str, Any] | None = None
    owner_id: uuid.UUID | None = None
    idempotency_key: str | None = None
    idempotency_fingerprint: str | None = None
    queue: str | None = None
    priority: int = DEFAULT_PRIORITY
    """0-9, higher first (``jobs.priority``): the dispatcher serves a higher priority's backlog first."""


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A validated request, ready to be stored."""

    idx: int
    model: str
    provider: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] | None = None
    custom_id: str | None = None
    messages_json: str | None = None
    """``messages`` already serialised (validation measured it), so ``COPY`` does not serialise it again."""
    params_json: str | None = None
    est_tokens: int | None = None
    """Estimated tokens (prompt + completion budget, ``batcher._ratelimit.estimate_tokens``): what fair
    sharing charges when the dispatcher releases it."""


@dataclass(frozen=True, slots=True)
class ClaimedRequest:
    """What a worker needs to make one provider call, read in the claim's round trip."""

    request_id: int
    job_id: uuid.UUID
    idx: int
    kind: str
    model: str
    provider: str
    messages: list[dict[str, Any]]
    job_params: dict[str, Any]
    """The job's options and provider parameters (see ``batcher._submit.job_params``)."""
    request_params: dict[str, Any] | None
    """Provider parameters of this request alone, overriding the job's."""
    attempts: int
    """This attempt's number (the claim bumped it): the fence of every later write of the attempt."""
    deadline_at: datetime | None
    credentials: str | None
    queue: str | None = None
    """The job's broker queue (``None`` for jobs stored before it was recorded)."""

    @classmethod
    def from_row(
        cls, row: Mapping[Any, Any], job_id: uuid.UUID, idx: int, *, attempts: int, deadline_at: datetime | None
    ) -> ClaimedRequest:
        """From the claim's row: the request's columns and its job's (``kind``, ``job_params``, ``credentials``...)."""
        return cls(
            request_id=row["id"],
            job_id=job_id,
            idx=idx,
            kind=row["kind"],
            model=row["model"],
            provider=row["provider"],
            messages=row["messages"],
            job_params=row["job_params"] or {},
            request_params=row["params"],
            attempts=attempts,
            deadline_at=deadline_at,
            credentials=row["credentials"],
            queue=row["queue"],
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """What a statement that counted requests learned about its job.

    ``complete``: this statement counted the job's last open request. Exactly one statement per job
    sees it (on Postgres, the one that settles the last of the job's counter shards; see
    ``batcher._db.postgres``), so exactly one caller enqueues the finalizer."""

    complete: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's answer to store (``record_success``)."""

    body: dict[str, Any]
    """The normalised ``chat.completion`` object (``ModelResponse.stored_body()``: with the reserved keys
    ``_hidden_params`` and ``_response_ms``)."""
    provider: str
    model: str
    usage: dict[str, Any] | None
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Failure:
    """What an attempt that did not succeed leaves on its request (``record_end``, ``record_retry``)."""

    error_type: str | None
    error: str | None
    status_code: int | None = None
    latency_ms: float | None = None
    """``record_end`` only; ``None`` keeps the latency stored on the request."""
    error_body: Any = None
    """The provider's error object (``ProviderError.body``: decoded JSON, keys redacted), if it sent one."""


@dataclass(frozen=True, slots=True)
class Released:
    """A request the dispatcher took out of the backlog (``JobStore.release``): its message goes next."""

    idx: int
    est_tokens: int | None
    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class InWindow:
    """How many of a job's requests to one provider/model are released and not final (``JobStore.window``)."""

    job_id: uuid.UUID
    provider: str
    model: str
    count: int


@dataclass(frozen=True, slots=True)
class BacklogPart:
    """The head of a job's backlog for one provider/model: how many, and their estimated tokens."""

    provider: str
    model: str
    count: int
    tokens: int


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """A job that may still release requests (``queued`` or ``running``), as the dispatcher reads it.

    ``backlog`` describes at most the first ``cap`` requests of its backlog (``JobStore.dispatch_backlog``): the
    dispatcher never releases more than its free slots in one tick, so reading further is wasted work
    (the backlog's size is ``total`` - ``done`` - what is in flight)."""

    id: uuid.UUID
    kind: str
    queue: str | None
    owner_id: uuid.UUID | None
    priority: int
    deadline_at: datetime | None
    created_at: datetime
    total: int
    done: int
    """Requests final so far (the job's counters): the dispatcher derives each job's rate from it."""
    weight: float = 1.0
    max_concurrent: int | None = None
    backlog: tuple[BacklogPart, ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    """The arguments of one ``JobStore.claim_request`` (a worker's threads queue them: ``claim_requests``)."""

    job_id: uuid.UUID
    idx: int
    timeout_s: float
    margin_s: float
    worker_id: str | None
