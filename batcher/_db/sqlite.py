"""The job store on SQLite, the database of embedded mode.

Implements ``batcher._db.contract.JobStore`` (the promises are documented there), written as
several SQLAlchemy Core statements where Postgres uses one data-modifying CTE. They are atomic
because every SQLite transaction of batcher starts with ``BEGIN IMMEDIATE`` (see ``engine.py``):
it takes SQLite's write lock up front, so the read-then-write of a claim can never interleave with
another writer.

Timestamps are computed here in Python (UTC) and stored naive, as SQLAlchemy stores them in
SQLite; ``_aware`` turns them back into UTC-aware values for callers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, cast
from uuid import UUID

from sqlalchemy import Connection, Engine, Table, func, insert, select, update

from batcher._db.contract import (
    ACTIVE_STATES,
    CANCELLED_ERROR,
    EXPIRED_ERROR,
    FINAL_STATE_COUNTER,
    SKIPPED_ERROR,
    JobStore,
)
from batcher._db.models import ApiKey, Job, Request, Response
from batcher._db.rows import (
    ActiveJob,
    Answer,
    BacklogPart,
    ClaimedRequest,
    Failure,
    NewJob,
    NewRequest,
    Progress,
    Released,
)
from batcher._states import JobState, RequestState

J = cast(Table, Job.__table__)
R = cast(Table, Request.__table__)
RESP = cast(Table, Response.__table__)
KEYS = cast(Table, ApiKey.__table__)

_ACTIVE = list(ACTIVE_STATES)
_RELEASING = [JobState.QUEUED.value, JobState.RUNNING.value]
"""Jobs whose backlog may be released (a ``cancelling`` job releases nothing)."""
_UNSENT = [RequestState.QUEUED.value, RequestState.RETRYING.value]
_OPEN = [RequestState.QUEUED.value, RequestState.RUNNING.value, RequestState.RETRYING.value]
INSERT_CHUNK_ROWS = 1_000
_DATETIMES = ("created_at", "started_at", "finished_at", "deadline_at", "enqueued_at")
_CLAIM_COLUMNS = (
    *(R.c[name] for name in ("id", "model", "provider", "messages", "params", "attempts", "state", "lease_until")),
    R.c.worker_id,
    *(J.c[name] for name in ("kind", "deadline_at", "credentials", "queue")),
    J.c.params.label("job_params"),
    J.c.state.label("job_state"),
)
_RESULT_COLUMNS = (
    *(R.c[name] for name in ("idx", "custom_id", "model", "provider", "state", "attempts", "error_type", "error")),
    R.c.status_code,
    R.c.error_body,
    R.c.latency_ms,
    RESP.c.body,
)
"""What ``stream_results`` returns per request, as Postgres' ``_RESULTS`` does."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _naive(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None and value.tzinfo else value


def _failure(failure: Failure) -> dict[str, Any]:
    """The request's columns an attempt's failure sets (a ``None`` latency keeps the stored one)."""
    values = dataclasses.asdict(failure)
    if values["latency_ms"] is None:
        del values["latency_ms"]
    return values


def _park(conn: Connection, request_id: int, *, attempt: int, delay_s: float, **changes: Any) -> bool:
    """This attempt's ``running`` request → ``retrying`` for ``delay_s``, with ``changes``; False if not ours."""
    return bool(
        conn.execute(
            update(R)
            .where(R.c.id == request_id, R.c.state == RequestState.RUNNING.value, R.c.attempts == attempt)
            .values(
                state=RequestState.RETRYING.value,
                lease_until=None,
                worker_id=None,
                next_attempt_at=_now() + timedelta(seconds=delay_s),
                **changes,
            )
        ).rowcount
    )


def _bump(conn: Connection, job_id: UUID, counter: str, n: int = 1) -> Progress | None:
    """Count ``n`` requests on the job row. SQLite has one writer at a time (``BEGIN IMMEDIATE``): there is
    no queue of writers on the row to shard away, so the counters stay on it (Postgres shards them). The
    write lock also makes the read exact: the bump that reaches ``total`` is the only one that sees it."""
    if n:
        conn.execute(update(J).where(J.c.id == job_id).values({counter: J.c[counter] + n}))
    row = conn.execute(
        select(J.c.total, (J.c.succeeded + J.c.failed + J.c.cancelled + J.c.expired).label("done")).where(
            J.c.id == job_id
        )
    ).first()
    return Progress(n > 0 and row.done >= row.total) if row else None


def _end_unsent(conn: Connection, job_id: UUID, state: RequestState, error_type: str, error: str) -> int:
    return int(
        conn.execute(
            update(R)
            .where(R.c.job_id == job_id, R.c.state.in_(_UNSENT))
            .values(state=state.value, finished_at=_now(), lease_until=None, error_type=error_type, error=error)
        ).rowcount
    )


class SqliteStore(JobStore):
    """``JobStore`` on SQLite: Core statements under ``BEGIN IMMEDIATE``, Python's UTC clock."""

    dialect: ClassVar[str] = "sqlite"
    cluster: ClassVar[bool] = False

    # --- submission -------------------------------------------------------------------------------

    def insert_job(self, conn: Connection, job: NewJob) -> bool:
        if job.owner_id is not None and job.idempotency_key is not None:
            exists = conn.execute(
                select(J.c.id).where(J.c.owner_id == job.owner_id, J.c.idempotency_key == job.idempotency_key)
            ).first()
            if exists:
                return False
        values = dataclasses.asdict(job) | {"deadline_at": _naive(job.deadline_at), "created_at": _now()}
        counters = dict.fromkeys(("succeeded", "failed", "cancelled", "expired"), 0)
        conn.execute(insert(J).values(state=JobState.QUEUED.value, **values, **counters))
        return True

    def copy_requests(self, conn: Connection, job_id: UUID, requests: Iterable[NewRequest]) -> int:
        """Multi-row inserts of ``INSERT_CHUNK_ROWS``."""
        count = 0
        chunk: list[dict[str, Any]] = []
        for req in requests:
            chunk.append(
                {
                    "job_id": job_id,
                    "idx": req.idx,
                    "custom_id": req.custom_id,
                    "model": req.model,
                    "provider": req.provider,
                    "messages": req.messages,
                    "params": req.params,
                    "state": RequestState.QUEUED.value,
                    "attempts": 0,
                    "est_tokens": req.est_tokens,
                    "dispatched_at": None,
                }
            )
            count += 1
            if len(chunk) >= INSERT_CHUNK_ROWS:
                conn.execute(insert(R), chunk)
                chunk = []
        if chunk:
            conn.execute(insert(R), chunk)
        return count

    def mark_enqueued(self, conn: Connection, job_id: UUID) -> None:
        conn.execute(update(J).where(J.c.id == job_id).values(enqueued_at=_now()))

    # --- dispatch ---------------------------------------------------------------------------------

    def release(
        self, conn: Connection, job_id: UUID, limit: int, *, provider: str | None = None, model: str | None = None
    ) -> list[Released]:
        """A select then an update, atomic under ``BEGIN IMMEDIATE`` (no other writer in between)."""
        if limit <= 0:
            return []
        state = conn.execute(select(J.c.state).where(J.c.id == job_id)).scalar()
        if state not in _RELEASING:
            return []
        query = select(R.c.id, R.c.idx, R.c.est_tokens, R.c.provider, R.c.model).where(
            R.c.job_id == job_id, R.c.state == RequestState.QUEUED.value, R.c.dispatched_at.is_(None)
        )
        if provider is not None and model is not None:
            query = query.where(R.c.provider == provider, R.c.model == model)
        rows = conn.execute(query.order_by(R.c.idx).limit(limit)).all()
        if not rows:
            return []
        now = _now()
        ids = [row.id for row in rows]
        for start in range(0, len(ids), INSERT_CHUNK_ROWS):
            conn.execute(update(R).where(R.c.id.in_(ids[start : start + INSERT_CHUNK_ROWS])).values(dispatched_at=now))
        return [Released(row.idx, row.est_tokens, row.provider, row.model) for row in rows]

    def dispatch_backlog(self, conn: Connection, *, cap: int) -> list[ActiveJob]:
        """One read of the active jobs, then the head of each one's backlog (SQLite has no ``LATERAL``)."""
        jobs = conn.execute(
            select(
                J.c.id,
                J.c.kind,
                J.c.queue,
                J.c.owner_id,
                J.c.priority,
                J.c.deadline_at,
                J.c.created_at,
                J.c.total,
                (J.c.succeeded + J.c.failed + J.c.cancelled + J.c.expired).label("done"),
                func.coalesce(KEYS.c.weight, 1.0).label("weight"),
                KEYS.c.max_concurrent_requests,
            )
            .select_from(J.outerjoin(KEYS, KEYS.c.id == J.c.owner_id))
            .where(J.c.state.in_(_RELEASING))
            .order_by(J.c.created_at, J.c.id)
        ).all()
        out = []
        for job in jobs:
            head = (
                select(R.c.provider, R.c.model, R.c.est_tokens)
                .where(R.c.job_id == job.id, R.c.state == RequestState.QUEUED.value, R.c.dispatched_at.is_(None))
                .order_by(R.c.idx)
                .limit(max(1, cap))
                .subquery()
            )
            parts = conn.execute(
                select(
                    head.c.provider,
                    head.c.model,
                    func.count().label("n"),
                    func.sum(func.coalesce(head.c.est_tokens, 1)).label("tokens"),
                ).group_by(head.c.provider, head.c.model)
            ).all()
            out.append(
                ActiveJob(
                    id=job.id,
                    kind=job.kind,
                    queue=job.queue,
                    owner_id=job.owner_id,
                    priority=int(job.priority),
                    deadline_at=_aware(job.deadline_at),
                    created_at=cast(datetime, _aware(job.created_at)),
                    total=int(job.total),
                    done=int(job.done),
                    weight=float(job.weight),
                    max_concurrent=job.max_concurrent_requests,
                    backlog=tuple(BacklogPart(p.provider, p.model, int(p.n), int(p.tokens)) for p in parts),
                )
            )
        return out

    # --- execution --------------------------------------------------------------------------------

    def claim_request(
        self, conn: Connection, job_id: UUID, idx: int, *, timeout_s: float, margin_s: float, worker_id: str | None
    ) -> ClaimedRequest | None:
        now = _now()
        row = (
            conn.execute(
                select(*_CLAIM_COLUMNS)
                .select_from(R.join(J, J.c.id == R.c.job_id))
                .where(R.c.job_id == job_id, R.c.idx == idx)
            )
            .mappings()
            .first()
        )
        if row is None or row["job_state"] not in _ACTIVE or row["job_state"] == JobState.CANCELLING.value:
            return None
        lease_expired = row["state"] == RequestState.RUNNING.value and (
            (row["lease_until"] and row["lease_until"] < now)
            or (worker_id is not None and row["worker_id"] == worker_id)
        )
        if row["state"] not in _UNSENT and not lease_expired:
            return None
        lease_s = float((row["job_params"] or {}).get("timeout_s") or timeout_s) + margin_s
        conn.execute(
            update(R)
            .where(R.c.id == row["id"])
            .values(
                state=RequestState.RUNNING.value,
                attempts=R.c.attempts + 1,
                started_at=func.coalesce(R.c.started_at, now),
                lease_until=now + timedelta(seconds=lease_s),
                next_attempt_at=None,
                worker_id=worker_id,
            )
        )
        if row["job_state"] == JobState.QUEUED.value:
            conn.execute(
                update(J)
                .where(J.c.id == job_id, J.c.state == JobState.QUEUED.value)
                .values(state=JobState.RUNNING.value, started_at=now)
            )
        return ClaimedRequest.from_row(
            row, job_id, idx, attempts=row["attempts"] + 1, deadline_at=_aware(row["deadline_at"])
        )

    def record_success(self, conn: Connection, claimed: ClaimedRequest, answer: Answer) -> Progress | None:
        updated = conn.execute(
            update(R)
            .where(R.c.id == claimed.request_id, R.c.state.in_(_OPEN))
            .values(
                state=RequestState.SUCCEEDED.value,
                finished_at=_now(),
                latency_ms=answer.latency_ms,
                lease_until=None,
                worker_id=None,
                error_type=None,
                error=None,
                error_body=None,
                status_code=200,
            )
        ).rowcount
        if not updated:
            return None
        if conn.execute(select(RESP.c.request_id).where(RESP.c.request_id == claimed.request_id)).first() is None:
            usage = answer.usage or {}
            conn.execute(
                insert(RESP).values(
                    request_id=claimed.request_id,
                    job_id=claimed.job_id,
                    idx=claimed.idx,
                    provider=answer.provider,
                    model=answer.model,
                    body=answer.body,
                    prompt_tokens=usage.get("prompt_tokens"),
                    completion_tokens=usage.get("completion_tokens"),
                    total_tokens=usage.get("total_tokens"),
                    latency_ms=answer.latency_ms,
                    created_at=_now(),
                )
            )
        return _bump(conn, claimed.job_id, "succeeded")

    def record_end(
        self, conn: Connection, request_id: int, state: RequestState, *, attempt: int, failure: Failure
    ) -> Progress | None:
        job_id = conn.execute(
            select(R.c.job_id).where(
                R.c.id == request_id, R.c.state == RequestState.RUNNING.value, R.c.attempts == attempt
            )
        ).scalar()
        if job_id is None:
            return None
        changes = _failure(failure) | {
            "state": state.value,
            "finished_at": _now(),
            "lease_until": None,
            "worker_id": None,
        }
        conn.execute(update(R).where(R.c.id == request_id).values(**changes))
        return _bump(conn, job_id, FINAL_STATE_COUNTER[state])

    def record_retry(
        self, conn: Connection, request_id: int, *, attempt: int, delay_s: float, failure: Failure
    ) -> bool:
        error = {
            "error_type": failure.error_type,
            "error": failure.error,
            "status_code": failure.status_code,
            "error_body": failure.error_body,
        }
        return _park(conn, request_id, attempt=attempt, delay_s=delay_s, **error)

    def record_deferral(self, conn: Connection, request_id: int, *, attempt: int, delay_s: float) -> bool:
        return _park(conn, request_id, attempt=attempt, delay_s=delay_s, attempts=R.c.attempts - 1)

    def set_race_winner(self, conn: Connection, job_id: UUID, idx: int) -> None:
        conn.execute(update(J).where(J.c.id == job_id, J.c.winner_index.is_(None)).values(winner_index=idx))

    def skip_unsent(self, conn: Connection, job_id: UUID) -> Progress | None:
        n = _end_unsent(conn, job_id, RequestState.SKIPPED, "RequestCancelledError", SKIPPED_ERROR)
        return _bump(conn, job_id, "cancelled", n)

    def finalize_job(self, conn: Connection, job_id: UUID) -> str | None:
        row = conn.execute(select(J).where(J.c.id == job_id)).mappings().first()
        if row is None or row["state"] not in _ACTIVE:
            return None
        if row["succeeded"] + row["failed"] + row["cancelled"] + row["expired"] < row["total"]:
            return None
        if row["state"] == JobState.CANCELLING.value:
            state = JobState.CANCELLED
        elif row["expired"] > 0:
            state = JobState.EXPIRED
        elif row["kind"] == "fastest" and row["succeeded"] == 0:
            state = JobState.FAILED
        else:
            state = JobState.COMPLETED
        conn.execute(update(J).where(J.c.id == job_id).values(state=state.value, finished_at=_now()))
        return state.value

    # --- control ----------------------------------------------------------------------------------

    def cancel_job(self, conn: Connection, job_id: UUID) -> int:
        """The transaction holds SQLite's one write lock: the order of the statements cannot deadlock."""
        state = conn.execute(select(J.c.state).where(J.c.id == job_id)).scalar()
        if state is None or JobState(state).is_final:
            return 0
        conn.execute(update(J).where(J.c.id == job_id).values(state=JobState.CANCELLING.value))
        n = _end_unsent(conn, job_id, RequestState.CANCELLED, "RequestCancelledError", CANCELLED_ERROR)
        conn.execute(update(J).where(J.c.id == job_id).values(cancelled=J.c.cancelled + n))
        return n

    def job_row(self, conn: Connection, job_id: UUID) -> dict[str, Any] | None:
        row = conn.execute(select(J).where(J.c.id == job_id)).mappings().first()
        if row is None:
            return None
        data = dict(row)
        for name in _DATETIMES:
            if name in data:
                data[name] = _aware(data[name])
        return data

    def stream_results(self, engine: Engine, job_id: UUID, *, page_size: int = 1_000) -> Iterator[dict[str, Any]]:
        query = (
            select(*_RESULT_COLUMNS)
            .select_from(R.outerjoin(RESP, RESP.c.request_id == R.c.id))
            .where(R.c.job_id == job_id)
            .order_by(R.c.idx)
        )
        with engine.connect() as conn:
            for row in conn.execution_options(yield_per=page_size).execute(query).mappings():
                yield dict(row)

    # --- recovery ---------------------------------------------------------------------------------

    def expire_overdue(self, conn: Connection) -> list[UUID]:
        overdue = conn.execute(select(J.c.id).where(J.c.state.in_(_ACTIVE), J.c.deadline_at < _now())).scalars().all()
        touched = []
        for job_id in overdue:
            n = _end_unsent(conn, job_id, RequestState.EXPIRED, "RequestExpiredError", EXPIRED_ERROR)
            if n:
                conn.execute(update(J).where(J.c.id == job_id).values(expired=J.c.expired + n))
                touched.append(job_id)
        return touched

    def jobs_due_for_finalize(self, conn: Connection) -> list[UUID]:
        done = J.c.succeeded + J.c.failed + J.c.cancelled + J.c.expired
        return list(conn.execute(select(J.c.id).where(J.c.state.in_(_ACTIVE), done >= J.c.total)).scalars())
