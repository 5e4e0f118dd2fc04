"""The store's statements for SQLite, the database of embedded mode.

Same contract as ``store`` (each function guarded by the state it expects, idempotent), but
written as several SQLAlchemy Core statements where Postgres uses one data-modifying CTE.
They are atomic because every SQLite transaction of batcher starts with ``BEGIN IMMEDIATE``
(see ``engine.py``): it takes SQLite's write lock up front, so the read-then-write of a
claim can never interleave with another writer.

Timestamps are computed here in Python (UTC) and stored naive, as SQLAlchemy stores them in
SQLite; ``_aware`` turns them back into UTC-aware values for callers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Engine, Table, func, insert, select, update

from batcher._db.models import Job, Request, Response
from batcher._states import ACTIVE_JOB_STATES, JobState, RequestState

if TYPE_CHECKING:
    from batcher._db.store import ClaimedRequest, NewRequest, Progress

J = cast(Table, Job.__table__)
R = cast(Table, Request.__table__)
RESP = cast(Table, Response.__table__)

_ACTIVE = [s.value for s in ACTIVE_JOB_STATES]
_UNSENT = [RequestState.QUEUED.value, RequestState.RETRYING.value]
_OPEN = [RequestState.QUEUED.value, RequestState.RUNNING.value, RequestState.RETRYING.value]
INSERT_CHUNK_ROWS = 1_000


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _naive(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None and value.tzinfo else value


def _progress(conn: Connection, job_id: uuid.UUID) -> Progress:
    from batcher._db.store import Progress

    row = conn.execute(
        select(J.c.total, (J.c.succeeded + J.c.failed + J.c.cancelled + J.c.expired).label("done")).where(
            J.c.id == job_id
        )
    ).one()
    return Progress(row.total, row.done)


def _bump(conn: Connection, job_id: uuid.UUID, counter: str, n: int = 1) -> Progress:
    conn.execute(update(J).where(J.c.id == job_id).values({counter: J.c[counter] + n}))
    return _progress(conn, job_id)


# --- submission -------------------------------------------------------------------------------


def insert_job(conn: Connection, values: dict[str, Any]) -> bool:
    values = {**values, "deadline_at": _naive(values.get("deadline_at")), "created_at": _now()}
    owner, key = values.get("owner_id"), values.get("idempotency_key")
    if owner is not None and key is not None:
        exists = conn.execute(select(J.c.id).where(J.c.owner_id == owner, J.c.idempotency_key == key)).first()
        if exists:
            return False
    conn.execute(insert(J).values(**values))
    return True


def copy_requests(conn: Connection, job_id: uuid.UUID, requests: Iterable[NewRequest]) -> int:
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
            }
        )
        count += 1
        if len(chunk) >= INSERT_CHUNK_ROWS:
            conn.execute(insert(R), chunk)
            chunk = []
    if chunk:
        conn.execute(insert(R), chunk)
    return count


def mark_enqueued(conn: Connection, job_id: uuid.UUID) -> None:
    conn.execute(update(J).where(J.c.id == job_id).values(enqueued_at=_now()))


# --- execution --------------------------------------------------------------------------------


def claim_request(
    conn: Connection, job_id: uuid.UUID, idx: int, *, timeout_s: float, margin_s: float, worker_id: str | None
) -> ClaimedRequest | None:
    from batcher._db.store import ClaimedRequest

    now = _now()
    row = (
        conn.execute(
            select(
                R.c.id,
                R.c.model,
                R.c.provider,
                R.c.messages,
                R.c.params,
                R.c.attempts,
                R.c.state,
                R.c.lease_until,
                R.c.worker_id,
                J.c.kind,
                J.c.params.label("job_params"),
                J.c.state.label("job_state"),
                J.c.deadline_at,
                J.c.credentials,
                J.c.queue,
            )
            .select_from(R.join(J, J.c.id == R.c.job_id))
            .where(R.c.job_id == job_id, R.c.idx == idx)
        )
        .mappings()
        .first()
    )
    if row is None or row["job_state"] not in _ACTIVE or row["job_state"] == JobState.CANCELLING.value:
        return None
    lease_expired = row["state"] == RequestState.RUNNING.value and (
        (row["lease_until"] and row["lease_until"] < now) or (worker_id is not None and row["worker_id"] == worker_id)
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
    return ClaimedRequest(
        request_id=row["id"],
        job_id=job_id,
        idx=idx,
        kind=row["kind"],
        model=row["model"],
        provider=row["provider"],
        messages=row["messages"],
        job_params=row["job_params"] or {},
        request_params=row["params"],
        attempts=row["attempts"] + 1,
        deadline_at=_aware(row["deadline_at"]),
        credentials=row["credentials"],
        queue=row["queue"],
    )


def record_success(conn: Connection, claimed: ClaimedRequest, values: dict[str, Any]) -> Progress | None:
    updated = conn.execute(
        update(R)
        .where(R.c.id == claimed.request_id, R.c.state.in_(_OPEN))
        .values(
            state=RequestState.SUCCEEDED.value,
            finished_at=_now(),
            latency_ms=values["latency_ms"],
            lease_until=None,
            worker_id=None,
            error_type=None,
            error=None,
            status_code=200,
        )
    ).rowcount
    if not updated:
        return None
    if conn.execute(select(RESP.c.request_id).where(RESP.c.request_id == claimed.request_id)).first() is None:
        conn.execute(insert(RESP).values(request_id=claimed.request_id, created_at=_now(), **values))
    return _bump(conn, claimed.job_id, "succeeded")


def record_end(
    conn: Connection, request_id: int, state: RequestState, counter: str, values: dict[str, Any], *, attempt: int
) -> Progress | None:
    job_id = conn.execute(
        select(R.c.job_id).where(R.c.id == request_id, R.c.state == RequestState.RUNNING.value, R.c.attempts == attempt)
    ).scalar()
    if job_id is None:
        return None
    latency = values.pop("latency_ms", None)
    changes: dict[str, Any] = {
        "state": state.value,
        "finished_at": _now(),
        "lease_until": None,
        "worker_id": None,
        **values,
    }
    if latency is not None:
        changes["latency_ms"] = latency
    conn.execute(update(R).where(R.c.id == request_id).values(**changes))
    return _bump(conn, job_id, counter)


def record_retry(conn: Connection, request_id: int, *, delay_s: float, values: dict[str, Any], attempt: int) -> bool:
    return bool(
        conn.execute(
            update(R)
            .where(R.c.id == request_id, R.c.state == RequestState.RUNNING.value, R.c.attempts == attempt)
            .values(
                state=RequestState.RETRYING.value,
                lease_until=None,
                worker_id=None,
                next_attempt_at=_now() + timedelta(seconds=delay_s),
                **values,
            )
        ).rowcount
    )


def record_deferral(conn: Connection, request_id: int, *, delay_s: float, attempt: int) -> bool:
    return bool(
        conn.execute(
            update(R)
            .where(R.c.id == request_id, R.c.state == RequestState.RUNNING.value, R.c.attempts == attempt)
            .values(
                state=RequestState.RETRYING.value,
                attempts=R.c.attempts - 1,
                lease_until=None,
                worker_id=None,
                next_attempt_at=_now() + timedelta(seconds=delay_s),
            )
        ).rowcount
    )


def set_race_winner(conn: Connection, job_id: uuid.UUID, idx: int) -> None:
    conn.execute(update(J).where(J.c.id == job_id, J.c.winner_index.is_(None)).values(winner_index=idx))


def _end_unsent(conn: Connection, job_id: uuid.UUID, state: RequestState, error_type: str, error: str) -> int:
    return int(
        conn.execute(
            update(R)
            .where(R.c.job_id == job_id, R.c.state.in_(_UNSENT))
            .values(state=state.value, finished_at=_now(), lease_until=None, error_type=error_type, error=error)
        ).rowcount
    )


def skip_unsent(conn: Connection, job_id: uuid.UUID) -> Progress | None:
    n = _end_unsent(
        conn, job_id, RequestState.SKIPPED, "RequestCancelledError", "skipped: another model answered first"
    )
    return _bump(conn, job_id, "cancelled", n)


def finalize_job(conn: Connection, job_id: uuid.UUID) -> str | None:
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


def cancel_job(conn: Connection, job_id: uuid.UUID) -> int:
    state = conn.execute(select(J.c.state).where(J.c.id == job_id)).scalar()
    if state is None or JobState(state).is_final:
        return 0
    conn.execute(update(J).where(J.c.id == job_id).values(state=JobState.CANCELLING.value))
    n = _end_unsent(conn, job_id, RequestState.CANCELLED, "RequestCancelledError", "cancelled before it was sent")
    conn.execute(update(J).where(J.c.id == job_id).values(cancelled=J.c.cancelled + n))
    return n


_DATETIMES = ("created_at", "started_at", "finished_at", "deadline_at", "enqueued_at")


def job_row(conn: Connection, job_id: uuid.UUID) -> dict[str, Any] | None:
    row = conn.execute(select(J).where(J.c.id == job_id)).mappings().first()
    if row is None:
        return None
    data = dict(row)
    for name in _DATETIMES:
        if name in data:
            data[name] = _aware(data[name])
    return data


def stream_results(engine: Engine, job_id: uuid.UUID, *, page_size: int) -> Iterator[dict[str, Any]]:
    query = (
        select(
            R.c.idx,
            R.c.custom_id,
            R.c.model,
            R.c.provider,
            R.c.state,
            R.c.attempts,
            R.c.error_type,
            R.c.error,
            R.c.status_code,
            R.c.latency_ms,
            RESP.c.body,
        )
        .select_from(R.outerjoin(RESP, RESP.c.request_id == R.c.id))
        .where(R.c.job_id == job_id)
        .order_by(R.c.idx)
    )
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=page_size).execute(query).mappings():
            yield dict(row)


# --- recovery ---------------------------------------------------------------------------------


def expire_overdue(conn: Connection) -> list[uuid.UUID]:
    overdue = conn.execute(select(J.c.id).where(J.c.state.in_(_ACTIVE), J.c.deadline_at < _now())).scalars().all()
    touched = []
    for job_id in overdue:
        n = _end_unsent(
            conn, job_id, RequestState.EXPIRED, "RequestExpiredError", "the job's completion window ended before it ran"
        )
        if n:
            conn.execute(update(J).where(J.c.id == job_id).values(expired=J.c.expired + n))
            touched.append(job_id)
    return touched


def jobs_due_for_finalize(conn: Connection) -> list[uuid.UUID]:
    done = J.c.succeeded + J.c.failed + J.c.cancelled + J.c.expired
    return list(conn.execute(select(J.c.id).where(J.c.state.in_(_ACTIVE), done >= J.c.total)).scalars())
