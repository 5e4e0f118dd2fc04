"""The statements of a job's life, each one round trip and each idempotent.

Workers and clients share these. Every state change is guarded by the state it expects
(``WHERE state = 'running'``), and a response is inserted with ``ON CONFLICT DO NOTHING``:
a redelivered task, a re-run after a lost lease or a recovery re-enqueue can never store a
second response nor count a request twice. Counters change in the same statement as the
request row they count, so Postgres holds no lock across round trips on the hot job row.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, cast

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Connection, Engine, Table, select, text, update
from sqlalchemy.exc import DBAPIError

from batcher._db import _sqlite
from batcher._db.models import Job
from batcher._states import ACTIVE_JOB_STATES, JobState, RequestState

_ACTIVE = ", ".join(f"'{s.value}'" for s in ACTIVE_JOB_STATES)


def _is_sqlite(conn: Connection | Engine) -> bool:
    """Embedded mode stores in SQLite; every function below has its SQLite twin in ``_sqlite``."""
    return conn.dialect.name == "sqlite"


def _hot(conn: Connection, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """One statement of the per-completion path (claim, store), straight through psycopg.

    Twice per completion, SQLAlchemy's per-execution bookkeeping cost ~70 µs of CPU each
    (measured: 174 µs per statement through ``Connection.execute``, 87 µs on the same pooled
    connection through its psycopg cursor). It runs on ``conn``'s own DBAPI connection, so it
    joins ``conn``'s transaction, if any; errors come out as SQLAlchemy's (``OperationalError``
    for a lost server, which callers retry), and a dropped connection is invalidated, as
    ``Connection.execute`` would.
    """
    if not conn.in_transaction():
        conn.begin()  # what Connection.execute's autobegin does, so commit/rollback reach this statement
    dbapi = cast(psycopg.Connection[Any], conn.connection.driver_connection)
    try:
        with dbapi.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(sql, params).fetchone()
    except psycopg.Error as exc:
        invalidated = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)  # type: ignore[arg-type]
        if invalidated:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql, params, exc, psycopg.Error, connection_invalidated=invalidated, dialect=conn.dialect
        ) from exc


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
    deadline_at: datetime | None
    credentials: str | None
    queue: str | None = None
    """The job's broker queue (``None`` for jobs stored before it was recorded)."""


@dataclass(frozen=True, slots=True)
class Progress:
    """The job row's counters after a request reached a final state."""

    total: int
    done: int

    @property
    def complete(self) -> bool:
        return self.done >= self.total


# --- submission -------------------------------------------------------------------------------


def insert_job(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    kind: str,
    total: int,
    params: dict[str, Any],
    deadline_at: datetime | None,
    credentials: str | None,
    user_metadata: dict[str, Any] | None = None,
    owner_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
    idempotency_fingerprint: str | None = None,
    queue: str | None = None,
) -> bool:
    """Insert the job row. False if ``(owner_id, idempotency_key)`` already names a job (nothing inserted)."""
    if _is_sqlite(conn):
        return _sqlite.insert_job(
            conn,
            {
                "id": job_id,
                "kind": kind,
                "state": JobState.QUEUED.value,
                "total": total,
                "params": params,
                "deadline_at": deadline_at,
                "credentials": credentials,
                "user_metadata": user_metadata,
                "owner_id": owner_id,
                "idempotency_key": idempotency_key,
                "idempotency_fingerprint": idempotency_fingerprint,
                "queue": queue,
                "succeeded": 0,
                "failed": 0,
                "cancelled": 0,
                "expired": 0,
            },
        )
    result = conn.execute(
        text(
            "INSERT INTO jobs (id, kind, state, total, params, deadline_at, credentials, user_metadata, "
            "owner_id, idempotency_key, idempotency_fingerprint, queue) "
            "VALUES (:id, :kind, 'queued', :total, CAST(:params AS jsonb), :deadline_at, :credentials, "
            "CAST(:user_metadata AS jsonb), :owner_id, :idempotency_key, :idempotency_fingerprint, :queue) "
            "ON CONFLICT (owner_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        ),
        {
            "id": job_id,
            "kind": kind,
            "total": total,
            "params": json.dumps(params),
            "deadline_at": deadline_at,
            "credentials": credentials,
            "user_metadata": json.dumps(user_metadata) if user_metadata is not None else None,
            "owner_id": owner_id,
            "idempotency_key": idempotency_key,
            "idempotency_fingerprint": idempotency_fingerprint,
            "queue": queue,
        },
    )
    return bool(result.rowcount)


def job_by_idempotency_key(conn: Connection, owner_id: uuid.UUID, key: str) -> tuple[uuid.UUID, str | None] | None:
    """The job created with this key, and the fingerprint of the body that created it."""
    jobs = cast(Table, Job.__table__)
    row = conn.execute(
        select(jobs.c.id, jobs.c.idempotency_fingerprint).where(
            jobs.c.owner_id == owner_id, jobs.c.idempotency_key == key
        )
    ).first()
    return (row.id, row.idempotency_fingerprint) if row else None


def copy_requests(conn: Connection, job_id: uuid.UUID, requests: Iterable[NewRequest]) -> int:
    """Bulk-insert requests with ``COPY`` (one stream, not one round trip per row). Returns the count."""
    if _is_sqlite(conn):
        return _sqlite.copy_requests(conn, job_id, requests)
    raw = conn.connection.driver_connection
    count = 0
    job = str(job_id)
    sql = "COPY requests (job_id, idx, custom_id, model, provider, messages, params, state) FROM STDIN"
    with raw.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[union-attr]
        for req in requests:
            copy.write_row(
                (
                    job,
                    req.idx,
                    req.custom_id,
                    req.model,
                    req.provider,
                    req.messages_json or json.dumps(req.messages, separators=(",", ":")),
                    req.params_json or (None if req.params is None else json.dumps(req.params, separators=(",", ":"))),
                    "queued",
                )
            )
            count += 1
    return count


def set_total(conn: Connection, job_id: uuid.UUID, total: int) -> None:
    jobs = cast(Table, Job.__table__)
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(total=total))


def mark_enqueued(conn: Connection, job_id: uuid.UUID) -> None:
    if _is_sqlite(conn):
        return _sqlite.mark_enqueued(conn, job_id)
    conn.execute(text("UPDATE jobs SET enqueued_at = now() WHERE id = :id"), {"id": job_id})


# --- execution (workers) ----------------------------------------------------------------------

_CLAIM = f"""
    WITH claimed AS (
        UPDATE requests AS r
           SET state = 'running',
               attempts = r.attempts + 1,
               started_at = COALESCE(r.started_at, now()),
               lease_until = now() + make_interval(
                   secs => COALESCE((j.params ->> 'timeout_s')::float8, %(timeout_s)s) + %(margin_s)s),
               next_attempt_at = NULL,
               worker_id = %(worker_id)s
          FROM jobs AS j
         WHERE r.job_id = %(job_id)s AND r.idx = %(idx)s AND j.id = r.job_id
           AND j.state IN ({_ACTIVE}) AND j.state <> 'cancelling'
           AND (r.state IN ('queued', 'retrying')
                OR (r.state = 'running' AND (r.lease_until < now() OR r.worker_id = %(worker_id)s)))
        RETURNING r.id, r.model, r.provider, r.messages, r.params, r.attempts,
                  j.kind, j.params AS job_params, j.state AS job_state, j.deadline_at, j.credentials,
                  j.queue
    ), started AS (
        -- The first claim of a job starts it; later claims match nothing here and write nothing.
        UPDATE jobs SET state = 'running', started_at = now()
         WHERE id = %(job_id)s AND state = 'queued' AND EXISTS (SELECT 1 FROM claimed)
    )
    SELECT * FROM claimed
    """
"""Run through psycopg directly (``_hot``): its parameters are psycopg's ``%(name)s``.

The lease is the call's own timeout (``timeout=`` of the job, else the worker's default) plus a
margin: it only matters when no live worker holds the request (see ``batcher._db.recovery``).
A worker may claim again a request it holds itself: its first claim committed but the answer
was lost with the connection (a database restart), and the task is being retried."""


def claim_request(
    conn: Connection,
    job_id: uuid.UUID,
    idx: int,
    *,
    timeout_s: float,
    margin_s: float,
    worker_id: str | None = None,
) -> ClaimedRequest | None:
    """Take the request for one attempt, or ``None`` if it is not ours to run.

    ``None`` means: already final, running under another worker's live lease, or its job is
    cancelled or finished. That is how redelivered and duplicate messages become no-ops.
    ``worker_id`` records who holds it, so its death hands the request to another worker.
    """
    if _is_sqlite(conn):
        return _sqlite.claim_request(conn, job_id, idx, timeout_s=timeout_s, margin_s=margin_s, worker_id=worker_id)
    row = _hot(
        conn,
        _CLAIM,
        {"job_id": job_id, "idx": idx, "timeout_s": timeout_s, "margin_s": margin_s, "worker_id": worker_id},
    )
    if row is None:
        return None
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
        attempts=row["attempts"],
        deadline_at=row["deadline_at"],
        credentials=row["credentials"],
        queue=row["queue"],
    )


_COUNT_AND_REPORT = """
    UPDATE jobs SET {counter} = {counter} + 1
     WHERE id = (SELECT job_id FROM upd)
    RETURNING total, succeeded + failed + cancelled + expired AS done
"""

_RECORD_SUCCESS = """
    WITH upd AS (
        UPDATE requests SET state = 'succeeded', finished_at = now(), latency_ms = %(latency_ms)s,
                            lease_until = NULL, worker_id = NULL, error_type = NULL, error = NULL,
                            status_code = 200
         WHERE id = %(request_id)s AND state IN ('running', 'queued', 'retrying')
        RETURNING job_id
    ), ins AS (
        INSERT INTO responses (request_id, job_id, idx, provider, model, body,
                               prompt_tokens, completion_tokens, total_tokens, latency_ms)
        SELECT %(request_id)s, %(job_id)s, %(idx)s, %(provider)s, %(model)s, CAST(%(body)s AS jsonb),
               %(prompt_tokens)s, %(completion_tokens)s, %(total_tokens)s, %(latency_ms)s
         WHERE EXISTS (SELECT 1 FROM upd)
        ON CONFLICT (request_id) DO NOTHING
    )
    """ + _COUNT_AND_REPORT.format(counter="succeeded")
"""Run through psycopg directly (``_hot``).

Any attempt whose answer arrives while the request is not yet final stores it: a paid answer is
kept even when its worker was presumed dead and the request handed to another (whose later answer
then finds it ``succeeded`` and is dropped). The row lock taken by the ``UPDATE`` orders two such
attempts, so exactly one response is stored and counted."""


def record_success(
    conn: Connection,
    claimed: ClaimedRequest,
    *,
    body: dict[str, Any],
    provider: str,
    model: str,
    usage: dict[str, Any] | None,
    latency_ms: float,
) -> Progress | None:
    """Store the response and count it, once. ``None`` if another attempt already stored one."""
    if _is_sqlite(conn):
        u = usage or {}
        return _sqlite.record_success(
            conn,
            claimed,
            {
                "job_id": claimed.job_id,
                "idx": claimed.idx,
                "provider": provider,
                "model": model,
                "body": body,
                "prompt_tokens": u.get("prompt_tokens"),
                "completion_tokens": u.get("completion_tokens"),
                "total_tokens": u.get("total_tokens"),
                "latency_ms": latency_ms,
            },
        )
    usage = usage or {}
    row = _hot(
        conn,
        _RECORD_SUCCESS,
        {
            "request_id": claimed.request_id,
            "job_id": claimed.job_id,
            "idx": claimed.idx,
            "provider": provider,
            "model": model,
            "body": json.dumps(body, separators=(",", ":")),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "total_tokens": usage.get("total_tokens"),
            "latency_ms": latency_ms,
        },
    )
    return Progress(row["total"], row["done"]) if row else None


_FINAL_STATE_COUNTER = {
    RequestState.FAILED: "failed",
    RequestState.CANCELLED: "cancelled",
    RequestState.SKIPPED: "cancelled",
    RequestState.EXPIRED: "expired",
}

_RECORD_END = {
    state: text(
        f"""
        WITH upd AS (
            UPDATE requests SET state = '{state.value}', finished_at = now(), lease_until = NULL,
                                worker_id = NULL, error_type = :error_type, error = :error,
                                status_code = :status_code, latency_ms = COALESCE(:latency_ms, latency_ms)
             WHERE id = :request_id AND state = 'running' AND attempts = :attempt
            RETURNING job_id
        )
        """
        + _COUNT_AND_REPORT.format(counter=counter)
    )
    for state, counter in _FINAL_STATE_COUNTER.items()
}


def record_end(
    conn: Connection,
    request_id: int,
    state: RequestState,
    *,
    attempt: int,
    error_type: str | None,
    error: str | None,
    status_code: int | None = None,
    latency_ms: float | None = None,
) -> Progress | None:
    """Move a running request to a final non-success state and count it, once.

    Fenced by ``attempt`` (the claim's count): an attempt whose request was handed to another
    worker meanwhile changes nothing."""
    if _is_sqlite(conn):
        values = {"error_type": error_type, "error": error, "status_code": status_code, "latency_ms": latency_ms}
        return _sqlite.record_end(conn, request_id, state, _FINAL_STATE_COUNTER[state], values, attempt=attempt)
    row = conn.execute(
        _RECORD_END[state],
        {
            "request_id": request_id,
            "attempt": attempt,
            "error_type": error_type,
            "error": error,
            "status_code": status_code,
            "latency_ms": latency_ms,
        },
    ).first()
    return Progress(row.total, row.done) if row else None


def record_retry(
    conn: Connection,
    request_id: int,
    *,
    attempt: int,
    delay_s: float,
    error_type: str,
    error: str,
    status_code: int | None,
) -> bool:
    """Park a running request until its next attempt. False if it was no longer ours."""
    if _is_sqlite(conn):
        values = {"error_type": error_type, "error": error, "status_code": status_code}
        return _sqlite.record_retry(conn, request_id, delay_s=delay_s, values=values, attempt=attempt)
    result = conn.execute(
        text(
            "UPDATE requests SET state = 'retrying', lease_until = NULL, worker_id = NULL, "
            "error_type = :error_type, error = :error, status_code = :status_code, "
            "next_attempt_at = now() + make_interval(secs => :delay_s) "
            "WHERE id = :request_id AND state = 'running' AND attempts = :attempt"
        ),
        {
            "request_id": request_id,
            "attempt": attempt,
            "delay_s": delay_s,
            "error_type": error_type,
            "error": error,
            "status_code": status_code,
        },
    )
    return bool(result.rowcount)


def record_deferral(conn: Connection, request_id: int, *, attempt: int, delay_s: float) -> bool:
    """Over a shared rate limit: park the request without spending an attempt. False if not ours."""
    if _is_sqlite(conn):
        return _sqlite.record_deferral(conn, request_id, delay_s=delay_s, attempt=attempt)
    result = conn.execute(
        text(
            "UPDATE requests SET state = 'retrying', attempts = attempts - 1, lease_until = NULL, "
            "worker_id = NULL, next_attempt_at = now() + make_interval(secs => :delay_s) "
            "WHERE id = :request_id AND state = 'running' AND attempts = :attempt"
        ),
        {"request_id": request_id, "delay_s": delay_s, "attempt": attempt},
    )
    return bool(result.rowcount)


def set_race_winner(conn: Connection, job_id: uuid.UUID, idx: int) -> None:
    if _is_sqlite(conn):
        return _sqlite.set_race_winner(conn, job_id, idx)
    conn.execute(
        text("UPDATE jobs SET winner_index = :idx WHERE id = :id AND winner_index IS NULL"),
        {"id": job_id, "idx": idx},
    )


def skip_unsent(conn: Connection, job_id: uuid.UUID) -> Progress | None:
    """A race is won: requests not yet sent end ``skipped`` and never reach their provider."""
    if _is_sqlite(conn):
        return _sqlite.skip_unsent(conn, job_id)
    row = conn.execute(
        text(
            """
            WITH upd AS (
                UPDATE requests SET state = 'skipped', finished_at = now(),
                                    error_type = 'RequestCancelledError',
                                    error = 'skipped: another model answered first'
                 WHERE job_id = :id AND state IN ('queued', 'retrying')
                RETURNING job_id
            )
            UPDATE jobs SET cancelled = cancelled + (SELECT count(*) FROM upd)
             WHERE id = :id
            RETURNING total, succeeded + failed + cancelled + expired AS done
            """
        ),
        {"id": job_id},
    ).first()
    return Progress(row.total, row.done) if row else None


def finalize_job(conn: Connection, job_id: uuid.UUID) -> str | None:
    """Give a job whose requests are all final its final state. Returns it, or ``None`` if not (yet) due."""
    if _is_sqlite(conn):
        return _sqlite.finalize_job(conn, job_id)
    row = conn.execute(
        text(
            f"""
            UPDATE jobs SET finished_at = now(), state = CASE
                    WHEN state = 'cancelling' THEN 'cancelled'
                    WHEN expired > 0 THEN 'expired'
                    WHEN kind = 'fastest' AND succeeded = 0 THEN 'failed'
                    ELSE 'completed' END
             WHERE id = :id AND state IN ({_ACTIVE})
               AND succeeded + failed + cancelled + expired >= total
            RETURNING state
            """
        ),
        {"id": job_id},
    ).first()
    return str(row.state) if row else None


# --- control (clients) ------------------------------------------------------------------------


def cancel_job(conn: Connection, job_id: uuid.UUID) -> int:
    """Cancel every request not yet sent; the job becomes ``cancelling`` until in-flight ones return.

    Runs as one transaction, locking the requests first and the job row last — the order every
    worker statement takes them in (a claim locks its request, then may touch the job row) — so a
    cancel can never deadlock with a claim. Once the requests are ``cancelled`` no claim can take
    them. Returns how many requests were cancelled.
    """
    if _is_sqlite(conn):
        return _sqlite.cancel_job(conn, job_id)
    row = conn.execute(
        text(
            f"""
            WITH cancelled AS (
                UPDATE requests SET state = 'cancelled', finished_at = now(), lease_until = NULL,
                                    error_type = 'RequestCancelledError', error = 'cancelled before it was sent'
                 WHERE job_id = :id AND state IN ('queued', 'retrying')
                   AND EXISTS (SELECT 1 FROM jobs WHERE id = :id AND state IN ({_ACTIVE}))
                RETURNING 1
            )
            UPDATE jobs SET state = 'cancelling', cancelled = cancelled + (SELECT count(*) FROM cancelled)
             WHERE id = :id AND state IN ({_ACTIVE})
            RETURNING (SELECT count(*) FROM cancelled) AS n
            """
        ),
        {"id": job_id},
    ).first()
    return int(row.n) if row else 0


def job_row(conn: Connection, job_id: uuid.UUID) -> dict[str, Any] | None:
    if _is_sqlite(conn):
        return _sqlite.job_row(conn, job_id)
    row = conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).mappings().first()
    return dict(row) if row else None


_RESULTS = text(
    """
    SELECT r.idx, r.custom_id, r.model, r.provider, r.state, r.attempts, r.error_type, r.error,
           r.status_code, r.latency_ms, resp.body
      FROM requests AS r LEFT JOIN responses AS resp ON resp.request_id = r.id
     WHERE r.job_id = :job_id AND r.idx >= :start
     ORDER BY r.idx
    """
)


def stream_results(engine: Engine, job_id: uuid.UUID, *, page_size: int = 1_000) -> Iterator[dict[str, Any]]:
    """Every request of a job with its response, in input order, streamed with a server-side cursor."""
    if _is_sqlite(engine):
        yield from _sqlite.stream_results(engine, job_id, page_size=page_size)
        return
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=page_size).execute(
            _RESULTS, {"job_id": job_id, "start": 0}
        )
        for row in result.mappings():
            yield dict(row)


_EXPORT_JSONL = """
COPY (
    SELECT json_build_object(
        'index', r.idx, 'custom_id', r.custom_id, 'model', r.model, 'state', r.state, 'attempts', r.attempts,
        'response', resp.body,
        'error', CASE
            WHEN resp.body IS NOT NULL THEN NULL
            WHEN r.state IN ('queued', 'running', 'retrying')
                THEN json_build_object('type', 'RequestError', 'message', 'not finished yet (' || r.state || ')',
                                       'status_code', NULL)
            ELSE json_build_object('type', COALESCE(r.error_type, 'ProviderError'), 'message', COALESCE(r.error, ''),
                                   'status_code', r.status_code)
        END)
      FROM requests AS r LEFT JOIN responses AS resp ON resp.request_id = r.id
     WHERE r.job_id = %s
     ORDER BY r.idx
) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')
"""
# CSV with a quote and a delimiter JSON never contains (it escapes control characters): each
# output line is the JSON text as is, with no COPY escaping to undo.


def export_results_jsonl(engine: Engine, job_id: uuid.UUID, out: IO[bytes]) -> bool:
    """Write a job's results as JSONL (``batcher results``' format) straight from Postgres.

    Postgres builds each line, so nothing is parsed or re-serialised here: ~10x the rows/s of
    going through ``ModelResponse`` objects. False on SQLite (the caller falls back).
    """
    if _is_sqlite(engine):
        return False
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(_EXPORT_JSONL, (str(job_id),)) as copy:  # type: ignore[attr-defined]
            for chunk in copy:
                out.write(bytes(chunk))
        raw.commit()
    finally:
        raw.close()
    return True


# --- recovery ---------------------------------------------------------------------------------


def expire_overdue(conn: Connection) -> list[uuid.UUID]:
    """End every unsent request of jobs past their deadline as ``expired``; returns those jobs."""
    if _is_sqlite(conn):
        return _sqlite.expire_overdue(conn)
    rows = conn.execute(
        text(
            f"""
            WITH overdue AS (
                SELECT id FROM jobs WHERE state IN ({_ACTIVE}) AND deadline_at < now()
            ), upd AS (
                UPDATE requests SET state = 'expired', finished_at = now(),
                                    error_type = 'RequestExpiredError',
                                    error = 'the job''s completion window ended before it ran'
                 WHERE job_id IN (SELECT id FROM overdue) AND state IN ('queued', 'retrying')
                RETURNING job_id
            ), counts AS (
                SELECT job_id, count(*) AS n FROM upd GROUP BY job_id
            )
            UPDATE jobs SET expired = expired + counts.n FROM counts WHERE jobs.id = counts.job_id
            RETURNING jobs.id
            """
        )
    ).all()
    return [row.id for row in rows]


def jobs_due_for_finalize(conn: Connection) -> list[uuid.UUID]:
    if _is_sqlite(conn):
        return _sqlite.jobs_due_for_finalize(conn)
    rows = conn.execute(
        text(f"SELECT id FROM jobs WHERE state IN ({_ACTIVE}) AND succeeded + failed + cancelled + expired >= total")
    ).all()
    return [row.id for row in rows]
