"""The statements of liveness and recovery: worker heartbeats, handing back what a dead worker
held, and finding what still needs a message. Every one of them is guarded and idempotent, so a
sweep may run twice, or be cut off half-way, without harm.

Written in SQLAlchemy Core, so Postgres (cluster) and SQLite (embedded mode) share them. Times
come from the database's clock on Postgres (``now()``): workers on several machines compare
heartbeats against one clock. SQLite (one machine) uses the process's UTC clock, stored naive as
SQLAlchemy stores datetimes there.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)

from batcher._db.contract import store_for
from batcher._db.models import Job, Request, Worker
from batcher._states import JobState, RequestState

J = cast(Table, Job.__table__)
R = cast(Table, Request.__table__)
W = cast(Table, Worker.__table__)

_SCHEDULABLE_JOBS = [JobState.QUEUED.value, JobState.RUNNING.value]
"""Jobs whose requests may still be sent (a ``cancelling`` job sends nothing new)."""


@dataclass(frozen=True, slots=True)
class RequestRef:
    """One request, as much as a message needs: its job, its index, the job's kind and queue."""

    job_id: uuid.UUID
    idx: int
    kind: str
    queue: str | None = None


@dataclass(frozen=True, slots=True)
class Reaped:
    """A request taken back from a dead worker, and what became of it."""

    job_id: uuid.UUID
    idx: int
    kind: str
    state: str
    """``queued`` (to run again), ``failed`` (budget spent: ``WorkerLostError``) or ``cancelled``."""
    queue: str | None = None
    lost: int = 1
    """How many workers this request has lost so far."""


@dataclass(frozen=True, slots=True)
class ActiveJob:
    id: uuid.UUID
    kind: str
    total: int
    enqueued: bool
    queue: str | None = None


def _sqlite(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


def _now(conn: Connection) -> Any:
    """The database's ``now()`` on Postgres; this process's UTC clock (naive) on SQLite."""
    if _sqlite(conn):
        return datetime.now(UTC).replace(tzinfo=None)
    return func.now()


def _ago(conn: Connection, seconds: float) -> Any:
    return _now(conn) - timedelta(seconds=seconds)


# --- workers ----------------------------------------------------------------------------------


def register_worker(
    conn: Connection, *, worker_id: str, hostname: str, pid: int, queues: Sequence[str], concurrency: int
) -> None:
    """Announce a worker (again, if its row was pruned while it was cut off)."""
    values = {
        "id": worker_id,
        "hostname": hostname,
        "pid": pid,
        "queues": ",".join(queues),
        "concurrency": concurrency,
        "started_at": _now(conn),
        "heartbeat_at": _now(conn),
    }
    exists_already = conn.execute(select(W.c.id).where(W.c.id == worker_id)).first()
    if exists_already:
        conn.execute(update(W).where(W.c.id == worker_id).values(heartbeat_at=_now(conn), stopped_at=None))
    else:
        conn.execute(insert(W).values(**values))


def heartbeat(conn: Connection, worker_id: str) -> bool:
    """``False`` if the worker's row is gone (pruned after a long outage): register it again."""
    return bool(conn.execute(update(W).where(W.c.id == worker_id).values(heartbeat_at=_now(conn))).rowcount)


def mark_stopping(conn: Connection, worker_id: str) -> None:
    conn.execute(update(W).where(W.c.id == worker_id).values(stopping_at=_now(conn)))


def mark_stopped(conn: Connection, worker_id: str) -> None:
    conn.execute(update(W).where(W.c.id == worker_id).values(stopped_at=_now(conn)))


def _alive(conn: Connection, lapse_s: float) -> ColumnElement[bool]:
    return and_(W.c.stopped_at.is_(None), W.c.heartbeat_at >= _ago(conn, lapse_s))


def worker_liveness(conn: Connection, *, lapse_s: float) -> dict[str, bool]:
    """Every known worker id, and whether it is alive (recent heartbeat, not stopped)."""
    alive = _alive(conn, lapse_s)
    return {row.id: bool(row.alive) for row in conn.execute(select(W.c.id, alive.label("alive"))).all()}


def live_workers(conn: Connection, *, lapse_s: float) -> list[dict[str, Any]]:
    """Workers whose heartbeat is recent and that did not stop."""
    rows = conn.execute(select(W).where(_alive(conn, lapse_s)).order_by(W.c.started_at)).mappings()
    return [dict(r) for r in rows]


def prune_workers(conn: Connection, *, older_than_s: float) -> int:
    """Forget workers that stopped or died long ago (and hold nothing: their requests were reaped)."""
    held = exists().where(R.c.worker_id == W.c.id, R.c.state == RequestState.RUNNING.value)
    return int(conn.execute(delete(W).where(W.c.heartbeat_at < _ago(conn, older_than_s), ~held)).rowcount)


# --- handing requests back --------------------------------------------------------------------


def give_back(conn: Connection, request_id: int, worker_id: str) -> bool:
    """One request this worker claimed but could not run (Redis failed under it before the provider was
    called): back into the backlog without spending an attempt, for the dispatcher to release again.
    Guarded: a request that already ended, or that another worker holds, is left alone."""
    result = conn.execute(
        update(R)
        .where(R.c.id == request_id, R.c.state == RequestState.RUNNING.value, R.c.worker_id == worker_id)
        .values(
            state=RequestState.QUEUED.value,
            attempts=R.c.attempts - 1,
            worker_id=None,
            lease_until=None,
            dispatched_at=None,
        )
    )
    return bool(result.rowcount)


def release_held(conn: Connection, worker_id: str) -> list[RequestRef]:
    """A stopping worker gives back the requests it still runs: they are ``queued`` again, without
    spending an attempt (a deploy is not the request's fault). Their late answers, if any, are
    still stored (see ``store.record_success``)."""
    rows = conn.execute(
        select(R.c.id, R.c.job_id, R.c.idx, J.c.kind, J.c.queue)
        .select_from(R.join(J, J.c.id == R.c.job_id))
        .where(R.c.worker_id == worker_id, R.c.state == RequestState.RUNNING.value)
        .order_by(R.c.job_id, R.c.idx)  # the lock order of every writer (``batcher._db.postgres``)
        .with_for_update(of=R, key_share=True)  # FOR NO KEY UPDATE, as the UPDATE below
    ).all()
    if not rows:
        return []
    conn.execute(
        update(R)
        .where(R.c.id == bindparam("rid"), R.c.state == RequestState.RUNNING.value, R.c.worker_id == worker_id)
        .values(
            state=RequestState.QUEUED.value,
            attempts=R.c.attempts - 1,
            worker_id=None,
            lease_until=None,
        ),
        [{"rid": row.id} for row in rows],
    )
    return [RequestRef(row.job_id, row.idx, row.kind, row.queue) for row in rows]


def reap_lost(conn: Connection, *, lapse_s: float, default_max_attempts: int, stuck_s: float) -> list[Reaped]:
    """Take back every running request whose worker is gone.

    Gone: the worker's heartbeat is older than ``lapse_s``, or it stopped, or nobody alive holds a
    request whose lease ran out, or the lease ran out ``stuck_s`` ago (longer than any attempt can
    take: a live worker that gave up on it, e.g. after a long database outage). Each request is
    ``queued`` again, unless its job is ``cancelling`` (then ``cancelled``: its answer will never
    come) or the worker was lost as many times as its attempt budget (then ``failed`` with
    ``WorkerLostError``: the request itself probably brings workers down). Job counters move in
    the same transaction.
    """
    alive = select(W.c.id).where(_alive(conn, lapse_s))
    dead = select(W.c.id).where(~_alive(conn, lapse_s))
    lost_worker = or_(
        R.c.worker_id.in_(dead),
        and_(R.c.lease_until < _now(conn), or_(R.c.worker_id.is_(None), R.c.worker_id.not_in(alive))),
        R.c.lease_until < _ago(conn, stuck_s),
    )
    query = (
        select(
            R.c.id,
            R.c.job_id,
            R.c.idx,
            R.c.attempts,
            R.c.lost,
            R.c.worker_id,
            J.c.kind,
            J.c.queue,
            J.c.state.label("job_state"),
            J.c.params.label("job_params"),
        )
        .select_from(R.join(J, J.c.id == R.c.job_id))
        .where(R.c.state == RequestState.RUNNING.value, lost_worker)
        .with_for_update(of=R, skip_locked=True)
    )
    rows = conn.execute(query).all()
    if not rows:
        return []
    now = _now(conn)
    out: list[Reaped] = []
    counts: dict[tuple[uuid.UUID, str], list[int]] = {}
    for row in rows:
        params = row.job_params or {}
        budget = int(params.get("max_attempts") or default_max_attempts)
        lost = row.lost + 1
        changes: dict[str, Any] = {"lost": lost, "worker_id": None, "lease_until": None}
        if row.job_state == JobState.CANCELLING.value:
            state, counter = RequestState.CANCELLED.value, "cancelled"
            changes |= {
                "error_type": "RequestCancelledError",
                "error": "cancelled while its worker was lost; its answer never came back",
            }
        elif row.attempts >= budget:
            state, counter = RequestState.FAILED.value, "failed"
            holder = row.worker_id or "unknown"
            changes |= {
                "error_type": "WorkerLostError",
                "error": (
                    f"worker lost {lost} times (last: {holder}) while running this request; its attempt "
                    f"budget of {budget} is spent. The request may itself crash workers (memory, size)."
                ),
                "status_code": None,
            }
        else:
            state, counter = RequestState.QUEUED.value, ""
        changes["state"] = state
        if counter:
            changes["finished_at"] = now
            counts.setdefault((row.job_id, counter), []).append(row.idx)
        conn.execute(update(R).where(R.c.id == row.id, R.c.state == RequestState.RUNNING.value).values(**changes))
        out.append(Reaped(row.job_id, row.idx, row.kind, state, row.queue, lost))
    store = store_for(conn)
    for (job_id, counter), idxs in counts.items():
        store.count_ends(conn, job_id, counter, idxs)
    return out


# --- what needs a message ---------------------------------------------------------------------


def active_jobs(conn: Connection) -> list[ActiveJob]:
    """Jobs that may still send requests, oldest first."""
    rows = conn.execute(
        select(J.c.id, J.c.kind, J.c.total, J.c.enqueued_at, J.c.queue)
        .where(J.c.state.in_(_SCHEDULABLE_JOBS))
        .order_by(J.c.created_at)
    ).all()
    return [ActiveJob(row.id, row.kind, row.total, row.enqueued_at is not None, row.queue) for row in rows]


def overdue_retries(conn: Connection, *, grace_s: float, limit: int = 10_000) -> list[RequestRef]:
    """Retrying requests whose delayed message should have fired ``grace_s`` ago: it was lost."""
    rows = conn.execute(
        select(R.c.job_id, R.c.idx, J.c.kind, J.c.queue)
        .select_from(R.join(J, J.c.id == R.c.job_id))
        .where(
            J.c.state.in_(_SCHEDULABLE_JOBS),
            R.c.state == RequestState.RETRYING.value,
            R.c.next_attempt_at < _ago(conn, grace_s),
        )
        .order_by(R.c.next_attempt_at)
        .limit(limit)
    ).all()
    return [RequestRef(row.job_id, row.idx, row.kind, row.queue) for row in rows]


def released_queued_requests(
    conn: Connection, job_ids: Sequence[uuid.UUID], *, limit: int = 10_000
) -> list[RequestRef]:
    """Queued requests of these jobs released to the broker (candidates for "its message was lost"); those
    still in the backlog have no message yet, by design."""
    if not job_ids:
        return []
    rows = conn.execute(
        select(R.c.job_id, R.c.idx, J.c.kind, J.c.queue)
        .select_from(R.join(J, J.c.id == R.c.job_id))
        .where(R.c.job_id.in_(list(job_ids)), R.c.state == RequestState.QUEUED.value, R.c.dispatched_at.is_not(None))
        .order_by(R.c.job_id, R.c.idx)
        .limit(limit)
    ).all()
    return [RequestRef(row.job_id, row.idx, row.kind, row.queue) for row in rows]


def request_states(conn: Connection, refs: Sequence[tuple[uuid.UUID, int]]) -> dict[tuple[uuid.UUID, int], str]:
    """The state of each ``(job_id, idx)`` (missing ones are left out)."""
    out: dict[tuple[uuid.UUID, int], str] = {}
    for start in range(0, len(refs), 1_000):
        chunk = refs[start : start + 1_000]
        rows = conn.execute(
            select(R.c.job_id, R.c.idx, R.c.state, J.c.state.label("job_state"))
            .select_from(R.join(J, J.c.id == R.c.job_id))
            .where(tuple_(R.c.job_id, R.c.idx).in_(chunk))
        ).all()
        for row in rows:
            state = row.state if row.job_state in _SCHEDULABLE_JOBS else f"job:{row.job_state}"
            out[(row.job_id, row.idx)] = state
    return out


def leader_lock_sql() -> tuple[str, str]:
    """(try-lock, unlock) statements of the cluster's leadership (a Postgres session advisory lock)."""
    return (
        f"SELECT pg_try_advisory_lock({LEADER_LOCK_ID})",
        f"SELECT pg_advisory_unlock({LEADER_LOCK_ID})",
    )


LEADER_LOCK_ID = 0x6261746368657221
"""``b"batcher!"`` as a 64-bit integer: the advisory lock whose holder runs the sweep and the schedules."""
