"""The job store on Postgres (a cluster): each statement one round trip, each idempotent.

Implements ``batcher._db.contract.JobStore`` (the promises are documented there). Every state
change is guarded by the state it expects (``WHERE state = 'running'``) and a response is inserted
with ``ON CONFLICT DO NOTHING``; counters change in the same data-modifying CTE as the request row
they count, so Postgres holds no lock across round trips. The two statements run for every
completion, the claim and the store, go straight through psycopg (``_hot``).

Sharded counters (migration 0009). An active job's counters live in ``JOB_COUNTER_SHARDS`` rows of
``job_counters``, request ``idx`` in shard ``idx % JOB_COUNTER_SHARDS``: the 500 stores of a wave of
completions update 16 rows (~30 each) instead of queueing on the job row's lock. A job's count is its
``jobs`` columns plus the sum of its shards (``SHARD_SUMS``); finalizing folds the shards into the
``jobs`` row and deletes them, so a final job's ``jobs`` columns are exact on their own.

Completion stays exact without a job-wide read: each shard row holds its own ``total`` (the requests
it counts), and the statement that makes a shard's count reach its total (exactly one: the row lock
orders the shard's statements and ``RETURNING`` gives the new values) decrements the job's
``open_shards``; the one that takes it to 0 counted the job's last open request (``Progress.complete``).
So the job row is written only ``min(total, 16)`` times in a job's life, and two last stores in two
shards still report completion once.

Lock order. Every writer takes a job's rows in one order: **requests** (in ``idx`` order), then its
**counter shards** (in ``(job, shard)`` order), then the **job row**. Two writers then never each hold what
the other waits for (Postgres would abort one, ``deadlock detected``, a second later).

- A store or an end (one request): its request, its shard, the job row.
- A group of stores (``record_successes``): every request first (``_RECORD_SUCCESS_IN_GROUP``, in index
  order), then all their shards in one statement (``_COUNT_GROUP``), then the job rows it settles.
- A bulk end (cancel, expiry, skip: ``_end_unsent``): its requests locked in index order before any is
  written, then ``_COUNT_ENDS``.
- A group of claims: requests in index order (and the job row, when a claim starts the job).

Every explicit lock is ``FOR NO KEY UPDATE``, the lock an ``UPDATE`` of non-key columns takes: ``FOR
UPDATE`` would also wait for the ``KEY SHARE`` lock a response's insert takes on its job row and request
row (their foreign keys), and a group storing answers would then hold what a settling group waits for.

Locking in index order matters even for rows a statement does not end: a concurrent ``UPDATE`` that finds
a row changed since its snapshot locks the row's newest version to recheck it, and keeps that lock when
the recheck fails (CI found the cycle: a cancel held a request a worker had just claimed, while the
worker's group held a shard the cancel needed)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any, ClassVar, cast
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from batcher._db.contract import (
    ACTIVE_STATES,
    CANCELLED_ERROR,
    EXPIRED_ERROR,
    FINAL_STATE_COUNTER,
    JOB_COUNTER_SHARDS,
    SKIPPED_ERROR,
    JobStore,
)
from batcher._db.rows import (
    ActiveJob,
    Answer,
    BacklogPart,
    Claim,
    ClaimedRequest,
    Failure,
    NewJob,
    NewRequest,
    Progress,
    Released,
)
from batcher._states import RequestState

_ACTIVE = ", ".join(f"'{s}'" for s in ACTIVE_STATES)

SHARD_SUMS = """
    LEFT JOIN LATERAL (
        SELECT COALESCE(sum(c.succeeded), 0) AS succeeded, COALESCE(sum(c.failed), 0) AS failed,
               COALESCE(sum(c.cancelled), 0) AS cancelled, COALESCE(sum(c.expired), 0) AS expired
          FROM job_counters AS c
         WHERE c.job_id = j.id
    ) AS s ON true"""
"""Join it after ``jobs AS j``: ``s.succeeded`` ... are the sums of the job's shards (0 once it is finalized),
to add to ``j.succeeded`` ... (see the module's docstring). The API's key quotas and batches read a job's
counts through it too."""

SHARD_COLUMNS = (
    "s.succeeded AS shard_succeeded, s.failed AS shard_failed, s.cancelled AS shard_cancelled, "
    "s.expired AS shard_expired"
)
"""Select them with ``j.*`` (``SHARD_SUMS`` joined) and pass each row to ``fold_shards``."""


def fold_shards(row: dict[str, Any]) -> dict[str, Any]:
    """A ``jobs`` row read with ``SHARD_COLUMNS``, with its shards' sums added to its counters (and dropped)."""
    for counter in ("succeeded", "failed", "cancelled", "expired"):
        row[counter] += int(row.pop(f"shard_{counter}"))
    return row


SHARDED_DONE = "(j.succeeded + j.failed + j.cancelled + j.expired + s.succeeded + s.failed + s.cancelled + s.expired)"
"""The job's requests in a final state, with ``SHARD_SUMS`` joined."""


def _hot(conn: Connection, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """One statement of the per-completion path (claim, store), straight through psycopg.

    Twice per completion, SQLAlchemy's per-execution bookkeeping cost ~70 µs of CPU each
    (measured: 174 µs per statement through ``Connection.execute``, 87 µs on the same pooled
    connection through its psycopg cursor). It runs on ``conn``'s own DBAPI connection, so it
    joins ``conn``'s transaction, if any; errors come out as SQLAlchemy's (``OperationalError``
    for a lost server, which callers retry), and a dropped connection is invalidated, as
    ``Connection.execute`` would.
    """
    rows = _rows(conn, sql, params)
    return rows[0] if rows else None


def _rows(conn: Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row of one statement through ``conn``'s psycopg cursor (``_hot``'s rules: joins the caller's
    transaction, errors as SQLAlchemy's). The dispatcher's statements run ten times a second."""
    if not conn.in_transaction():
        conn.begin()  # what Connection.execute's autobegin does, so commit/rollback reach this statement
    dbapi = cast(psycopg.Connection[Any], conn.connection.driver_connection)
    try:
        with dbapi.cursor(row_factory=dict_row) as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []
    except psycopg.Error as exc:
        invalidated = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)  # type: ignore[arg-type]
        if invalidated:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql, params, exc, psycopg.Error, connection_invalidated=invalidated, dialect=conn.dialect
        ) from exc


def _hot_many(conn: Connection, statements: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any] | None]:
    """``_hot`` of many statements (SQL, parameters) in one round trip (psycopg's pipeline mode): sent
    together, answered together, and committed together (the statements between two syncs of a pipeline
    form one implicit transaction), so an error writes none of them. The first row of each, in order."""
    if not conn.in_transaction():
        conn.begin()
    dbapi = cast(psycopg.Connection[Any], conn.connection.driver_connection)
    try:
        with dbapi.pipeline():
            cursors = []
            for sql, params in statements:
                cursor = dbapi.cursor(row_factory=dict_row)
                cursor.execute(sql, params)
                cursors.append(cursor)
            rows = [cursor.fetchone() for cursor in cursors]  # the first fetch syncs: one round trip
        for cursor in cursors:
            cursor.close()
        return rows
    except psycopg.Error as exc:
        invalidated = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)  # type: ignore[arg-type]
        if invalidated:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            statements[0][0],
            [p for _, p in statements],
            exc,
            psycopg.Error,
            connection_invalidated=invalidated,
            dialect=conn.dialect,
        ) from exc


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

_ROW_DONE = "j.succeeded + j.failed + j.cancelled + j.expired"

_COUNT_AND_REPORT = """
    , counted AS (
        UPDATE job_counters AS c SET {counter} = c.{counter} + 1
         WHERE c.job_id = (SELECT job_id FROM upd) AND c.shard = (SELECT mod(idx, {shards}) FROM upd)
        RETURNING c.job_id, c.succeeded + c.failed + c.cancelled + c.expired = c.total AS settles
    ), settled AS (
        UPDATE jobs AS j SET open_shards = j.open_shards - 1
         WHERE j.id = (SELECT job_id FROM counted WHERE settles)  -- by primary key, never a join
        RETURNING j.open_shards = 0 AS complete
    ), unsharded AS (
        UPDATE jobs AS j SET {counter} = j.{counter} + 1
         WHERE j.id = (SELECT job_id FROM upd) AND NOT EXISTS (SELECT 1 FROM counted)
        RETURNING j.open_shards = 0 AND {row_done} >= j.total AS complete
    )
    SELECT COALESCE((SELECT complete FROM settled), (SELECT complete FROM unsharded), false) AS complete FROM upd
""".replace("{shards}", str(JOB_COUNTER_SHARDS)).replace("{row_done}", _ROW_DONE)
"""Count the request ``upd`` moved (one row: ``job_id``, ``idx``) in its shard. The job row is written only
by the statement that settles a shard (its count reaches its total): ``min(total, 16)`` times per job.

``unsharded``: a job with no shard row for the request (stored by a version before migration 0009 during a
rolling upgrade, so no shards were made for it) is counted on its row, as before, and is complete when
the row's count reaches its total (exact: the row lock orders those stores)."""

_COUNT_ENDS = """
    , ends AS (
        SELECT job_id, mod(idx, {shards}) AS shard, count(*) AS n FROM upd GROUP BY 1, 2
    ), locked AS MATERIALIZED (
        SELECT c.job_id, c.shard FROM job_counters AS c JOIN ends AS e ON c.job_id = e.job_id AND c.shard = e.shard
         ORDER BY c.job_id, c.shard
           FOR NO KEY UPDATE OF c
    ), counted AS (
        UPDATE job_counters AS c SET {counter} = c.{counter} + ends.n
          FROM ends JOIN locked ON locked.job_id = ends.job_id AND locked.shard = ends.shard
         WHERE c.job_id = ends.job_id AND c.shard = ends.shard
        RETURNING c.job_id, c.shard, c.succeeded + c.failed + c.cancelled + c.expired AS done, c.total, ends.n
    ), closing AS (
        SELECT e.job_id,
               count(*) FILTER (WHERE c.done >= c.total AND c.done - c.n < c.total) AS settled,
               COALESCE(sum(e.n) FILTER (WHERE c.job_id IS NULL), 0) AS unsharded
          FROM ends AS e LEFT JOIN counted AS c ON c.job_id = e.job_id AND c.shard = e.shard
         GROUP BY e.job_id
    )
""".replace("{shards}", str(JOB_COUNTER_SHARDS))
"""``_COUNT_AND_REPORT`` for many requests (``upd``: ``job_id``, ``idx``; of one job or several). ``closing``
is, per job, how many shards this statement settled and how many requests had no shard row to count in
(``unsharded``: counted on the job row instead), for the caller's one ``UPDATE`` of the job row (a
statement may not update a row twice). ``locked`` takes the shard rows in (job, shard) order before any is
written, and the job row after them: the lock order every writer keeps (see the module's documentation)."""

_CLOSING_COMPLETE = f"j.open_shards = 0 AND (closing.settled > 0 OR (closing.unsharded > 0 AND {_ROW_DONE} >= j.total))"
"""In the ``RETURNING`` of an ``UPDATE jobs AS j ... FROM closing``: this statement counted the job's last open
request."""

_SETTLE = """
    , jobs_locked AS MATERIALIZED (
        SELECT j.id FROM jobs AS j JOIN closing ON closing.job_id = j.id
         WHERE closing.settled > 0 OR closing.unsharded > 0
         ORDER BY j.id
           FOR NO KEY UPDATE OF j
    ), settled AS (
        UPDATE jobs AS j SET open_shards = j.open_shards - closing.settled,
                             {counter} = j.{counter} + closing.unsharded
          FROM closing JOIN jobs_locked ON jobs_locked.id = closing.job_id
         WHERE j.id = closing.job_id
        RETURNING j.id, {complete} AS complete
    )
""".replace("{complete}", _CLOSING_COMPLETE)
"""After ``_COUNT_ENDS``: each job whose shards the statement settled, or whose requests it counted on the
job row, gets its one ``UPDATE``; the job rows are locked first, in id order (``jobs_locked``), so two
statements settling the same jobs take them in the same order. A job with nothing to write is not touched."""

_RECORD_SUCCESS_HEAD = """
    WITH upd AS (
        UPDATE requests SET state = 'succeeded', finished_at = now(), latency_ms = %(latency_ms)s,
                            lease_until = NULL, worker_id = NULL, error_type = NULL, error = NULL,
                            error_body = NULL, status_code = 200
         WHERE id = %(request_id)s AND state IN ('running', 'queued', 'retrying')
        RETURNING job_id, idx
    ), ins AS (
        INSERT INTO responses (request_id, job_id, idx, provider, model, body,
                               prompt_tokens, completion_tokens, total_tokens, latency_ms)
        SELECT %(request_id)s, %(job_id)s, %(idx)s, %(provider)s, %(model)s, CAST(%(body)s AS jsonb),
               %(prompt_tokens)s, %(completion_tokens)s, %(total_tokens)s, %(latency_ms)s
         WHERE EXISTS (SELECT 1 FROM upd)
        ON CONFLICT (request_id) DO NOTHING
    )
    """
_RECORD_SUCCESS = _RECORD_SUCCESS_HEAD + _COUNT_AND_REPORT.format(counter="succeeded")
"""Run through psycopg directly (``_hot``).

Any attempt whose answer arrives while the request is not yet final stores it: a paid answer is
kept even when its worker was presumed dead and the request handed to another (whose later answer
then finds it ``succeeded`` and is dropped). The row lock taken by the ``UPDATE`` orders two such
attempts, so exactly one response is stored and counted. No row if nothing was stored, else
``complete`` (``_COUNT_AND_REPORT``)."""

_RECORD_SUCCESS_IN_GROUP = _RECORD_SUCCESS_HEAD + "SELECT job_id FROM upd"
"""``_RECORD_SUCCESS`` in a group (``record_successes``) without the counting: the group counts all its
stores after the last of them (``_COUNT_GROUP``). A row if the answer was stored."""

_COUNT_GROUP = (
    """
    WITH upd AS (
        SELECT job_id, idx FROM requests
         WHERE id = ANY(CAST(%(ids)s AS bigint[])) AND state = 'succeeded' AND xmin = pg_current_xact_id()::xid
    )
    """
    + _COUNT_ENDS.format(counter="succeeded")
    + _SETTLE.format(counter="succeeded")
    + """
    SELECT COALESCE(array_agg(id) FILTER (WHERE complete), '{}') AS completed FROM settled
    """
)
"""After a group's stores, in its transaction: the requests it moved to ``succeeded`` (the row versions this
transaction wrote, ``xmin``) are counted in their shards, and the jobs whose shards it settled are settled,
as a cancel counts what it ends. ``completed``: the jobs whose last open request this group stored."""


_RECORD_END = {
    state: text(
        f"""
        WITH upd AS (
            UPDATE requests SET state = '{state.value}', finished_at = now(), lease_until = NULL,
                                worker_id = NULL, error_type = :error_type, error = :error,
                                status_code = :status_code, error_body = CAST(:error_body AS jsonb),
                                latency_ms = COALESCE(:latency_ms, latency_ms)
             WHERE id = :request_id AND state = 'running' AND attempts = :attempt
            RETURNING job_id, idx
        )
        """
        + _COUNT_AND_REPORT.format(counter=counter)
    )
    for state, counter in FINAL_STATE_COUNTER.items()
}

_INSERT_JOB = text(
    "INSERT INTO jobs (id, kind, state, total, params, deadline_at, credentials, user_metadata, "
    "owner_id, idempotency_key, idempotency_fingerprint, queue, priority) "
    "VALUES (:id, :kind, 'queued', :total, CAST(:params AS jsonb), :deadline_at, :credentials, "
    "CAST(:user_metadata AS jsonb), :owner_id, :idempotency_key, :idempotency_fingerprint, :queue, :priority) "
    "ON CONFLICT (owner_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
)

_COPY_REQUESTS = (
    "COPY requests (job_id, idx, custom_id, model, provider, messages, params, state, est_tokens) FROM STDIN"
)
"""``dispatched_at`` is left NULL: every request starts in the backlog."""

_RELEASE = """
    WITH picked AS (
        SELECT r.id FROM requests AS r
         WHERE r.job_id = %(job_id)s AND r.state = 'queued' AND r.dispatched_at IS NULL
           {only}
           AND EXISTS (SELECT 1 FROM jobs AS j WHERE j.id = %(job_id)s AND j.state IN ('queued', 'running'))
         ORDER BY r.idx
         LIMIT %(limit)s
           FOR UPDATE OF r SKIP LOCKED
    )
    UPDATE requests AS r SET dispatched_at = now()
      FROM picked
     WHERE r.id = picked.id
    RETURNING r.idx, r.est_tokens, r.provider, r.model
"""
"""Through psycopg (``_rows``). The backlog's partial index (``ix_requests_backlog``: job, idx) gives the
lowest indices first without a sort; ``SKIP LOCKED`` lets two releasers (a deposed leader, a race's
submitter) pass each other instead of taking a request twice or waiting."""

_BACKLOG = f"""
    SELECT j.id, j.kind, j.queue, j.owner_id, j.priority, j.deadline_at, j.created_at, j.total,
           {SHARDED_DONE} AS done,
           COALESCE(k.weight, 1.0) AS weight, k.max_concurrent_requests,
           b.provider, b.model, b.n, b.tokens
      FROM jobs AS j {SHARD_SUMS}
      LEFT JOIN api_keys AS k ON k.id = j.owner_id
      LEFT JOIN LATERAL (
            SELECT s.provider, s.model, count(*) AS n, sum(COALESCE(s.est_tokens, 1)) AS tokens
              FROM (SELECT r.provider, r.model, r.est_tokens FROM requests AS r
                     WHERE r.job_id = j.id AND r.state = 'queued' AND r.dispatched_at IS NULL
                     ORDER BY r.idx
                     LIMIT %(cap)s) AS s
             GROUP BY s.provider, s.model
      ) AS b ON true
     WHERE j.state IN ('queued', 'running')
     ORDER BY j.created_at, j.id
"""
"""One round trip per tick whatever the number of jobs; per job, at most ``cap`` rows of its backlog are read
(through ``ix_requests_backlog``): the cost is O(jobs x window), flat in job size. Idle: the ``ix_jobs_active``
index answers with no row."""

_SET_TOTAL = text(
    f"""
    WITH job AS (
        UPDATE jobs SET total = :total, open_shards = LEAST(:total, {JOB_COUNTER_SHARDS})
         WHERE id = :id
        RETURNING id
    ), gone AS (
        DELETE FROM job_counters WHERE job_id = :id AND shard >= LEAST(:total, {JOB_COUNTER_SHARDS})
    )
    INSERT INTO job_counters (job_id, shard, total)
    SELECT job.id, s, (CAST(:total AS integer) - 1 - s) / {JOB_COUNTER_SHARDS} + 1
      FROM job, generate_series(0, LEAST(CAST(:total AS integer), {JOB_COUNTER_SHARDS}) - 1) AS s
    ON CONFLICT (job_id, shard) DO UPDATE SET total = EXCLUDED.total
    """
)
"""The job's shard rows, one per shard that has requests, all open. Indices are ``0 .. total - 1``, so shard
``s`` counts ``ceil((total - s) / JOB_COUNTER_SHARDS)`` of them."""

_MARK_ENQUEUED = text("UPDATE jobs SET enqueued_at = now() WHERE id = :id")

_RECORD_RETRY = text(
    "UPDATE requests SET state = 'retrying', lease_until = NULL, worker_id = NULL, "
    "error_type = :error_type, error = :error, status_code = :status_code, "
    "error_body = CAST(:error_body AS jsonb), next_attempt_at = now() + make_interval(secs => :delay_s) "
    "WHERE id = :request_id AND state = 'running' AND attempts = :attempt"
)

_RECORD_DEFERRAL = text(
    "UPDATE requests SET state = 'retrying', attempts = attempts - 1, lease_until = NULL, "
    "worker_id = NULL, next_attempt_at = now() + make_interval(secs => :delay_s) "
    "WHERE id = :request_id AND state = 'running' AND attempts = :attempt"
)

_SET_RACE_WINNER = text("UPDATE jobs SET winner_index = :idx WHERE id = :id AND winner_index IS NULL")


def _end_unsent(state: str, error_type: str, jobs: str) -> str:
    """``picked`` and ``upd`` (``job_id``, ``idx``) of a bulk end: the unsent requests (``queued``, ``retrying``)
    of the jobs ``jobs`` selects, locked in (job, index) order before any is written (the module's lock
    order), then moved to ``state`` with ``error_type`` and the statement's ``:error``."""
    return f"""
    picked AS (
        SELECT r.id FROM requests AS r
         WHERE r.job_id IN ({jobs}) AND r.state IN ('queued', 'retrying')
         ORDER BY r.job_id, r.idx
           FOR NO KEY UPDATE OF r
    ), upd AS (
        UPDATE requests AS r SET state = '{state}', finished_at = now(), lease_until = NULL,
                                 error_type = '{error_type}', error = :error
          FROM picked
         WHERE r.id = picked.id AND r.state IN ('queued', 'retrying')
        RETURNING r.job_id, r.idx
    )
    """


_SKIP_UNSENT = text(
    "WITH"
    + _end_unsent("skipped", "RequestCancelledError", ":id")
    + _COUNT_ENDS.format(counter="cancelled")
    + _SETTLE.format(counter="cancelled")
    + """
    SELECT EXISTS (SELECT 1 FROM settled WHERE complete) AS complete FROM jobs WHERE id = :id
    """
)

_FINALIZE_JOB = text(
    f"""
    WITH s AS (
        SELECT COALESCE(sum(succeeded), 0) AS succeeded, COALESCE(sum(failed), 0) AS failed,
               COALESCE(sum(cancelled), 0) AS cancelled, COALESCE(sum(expired), 0) AS expired
          FROM job_counters WHERE job_id = :id
    ), fin AS (
        UPDATE jobs AS j SET finished_at = now(), open_shards = 0,
               succeeded = j.succeeded + s.succeeded, failed = j.failed + s.failed,
               cancelled = j.cancelled + s.cancelled, expired = j.expired + s.expired,
               state = CASE
                WHEN j.state = 'cancelling' THEN 'cancelled'
                WHEN j.expired + s.expired > 0 THEN 'expired'
                WHEN j.kind = 'fastest' AND j.succeeded + s.succeeded = 0 THEN 'failed'
                ELSE 'completed' END
          FROM s
         WHERE j.id = :id AND j.state IN ({_ACTIVE})
           AND {SHARDED_DONE} >= j.total
        RETURNING j.state
    ), folded AS (
        DELETE FROM job_counters WHERE job_id = :id AND EXISTS (SELECT 1 FROM fin)
    )
    SELECT state FROM fin
    """
)
"""Folds the shards into the job row, and deletes them, in the statement that makes the job final: once every
request is counted no statement writes a shard again, and a second finalizer, queued on the job row's
lock, finds the job final and changes nothing."""

_ACTIVE_JOB = f"SELECT id FROM jobs WHERE id = :id AND state IN ({_ACTIVE})"

_CANCEL_JOB = text(
    f"""
    WITH {_end_unsent("cancelled", "RequestCancelledError", _ACTIVE_JOB)}
    {_COUNT_ENDS.format(counter="cancelled")}
    UPDATE jobs SET state = 'cancelling',
                    open_shards = open_shards - COALESCE((SELECT sum(settled) FROM closing), 0),
                    cancelled = cancelled + COALESCE((SELECT sum(unsharded) FROM closing), 0)
     WHERE id = :id AND state IN ({_ACTIVE})
    RETURNING (SELECT count(*) FROM upd) AS n
    """
)

_JOB_ROW = text(
    f"""
    SELECT j.*, {SHARD_COLUMNS}
      FROM jobs AS j {SHARD_SUMS}
     WHERE j.id = :id
    """
)

_RESULTS = text(
    """
    SELECT r.idx, r.custom_id, r.model, r.provider, r.state, r.attempts, r.error_type, r.error,
           r.status_code, r.error_body, r.latency_ms, resp.body
      FROM requests AS r LEFT JOIN responses AS resp ON resp.request_id = r.id
     WHERE r.job_id = :job_id AND r.idx >= :start
     ORDER BY r.idx
    """
)

_NOT_PROVIDER = "'RequestError', 'RequestCancelledError', 'RequestExpiredError', 'WorkerLostError'"
"""Outcomes that are not provider errors: a body left from an earlier attempt is not theirs."""

_EXPORT_JSONL = """
COPY (
    SELECT json_build_object(
        'index', r.idx, 'custom_id', r.custom_id, 'model', r.model, 'state', r.state, 'attempts', r.attempts,
        'response', resp.body,
        'error', CASE
            WHEN resp.body IS NOT NULL THEN NULL
            WHEN r.state IN ('queued', 'running', 'retrying')
                THEN json_build_object('type', 'RequestError', 'message', 'not finished yet (' || r.state || ')',
                                       'status_code', NULL, 'llm_provider', r.provider, 'body', NULL)
            ELSE json_build_object('type', COALESCE(r.error_type, 'ProviderError'), 'message', COALESCE(r.error, ''),
                                   'status_code', r.status_code, 'llm_provider', r.provider,
                                   'body', CASE WHEN r.error_type IN ({_NOT_PROVIDER}) THEN NULL ELSE r.error_body END)
        END)
      FROM requests AS r LEFT JOIN responses AS resp ON resp.request_id = r.id
     WHERE r.job_id = %s
     ORDER BY r.idx
) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')
""".replace("{_NOT_PROVIDER}", _NOT_PROVIDER)
# CSV with a quote and a delimiter JSON never contains (it escapes control characters): each
# output line is the JSON text as is, with no COPY escaping to undo.

_EXPIRE_OVERDUE = text(
    f"""
    WITH overdue AS (
        SELECT id FROM jobs WHERE state IN ({_ACTIVE}) AND deadline_at < now()
    ), {_end_unsent("expired", "RequestExpiredError", "SELECT id FROM overdue")}
    {_COUNT_ENDS.format(counter="expired")}
    {_SETTLE.format(counter="expired")}
    SELECT DISTINCT job_id AS id FROM upd
    """
)

_JOBS_DUE_FOR_FINALIZE = text(
    f"SELECT j.id FROM jobs AS j {SHARD_SUMS} WHERE j.state IN ({_ACTIVE}) AND {SHARDED_DONE} >= j.total"
)

_COUNT_IDXS = {
    counter: """
    WITH upd AS (SELECT CAST(%(job_id)s AS uuid) AS job_id, unnest(CAST(%(idxs)s AS integer[])) AS idx)
    """
    + _COUNT_ENDS.format(counter=counter)
    + _SETTLE.format(counter=counter)
    + """
    SELECT EXISTS (SELECT 1 FROM settled WHERE complete) AS complete
    """
    for counter in set(FINAL_STATE_COUNTER.values())
}
"""Through psycopg (``_rows``): ``count_ends``."""


def _failure(failure: Failure, **values: Any) -> dict[str, Any]:
    row = dataclasses.asdict(failure) | values
    row["error_body"] = None if failure.error_body is None else json.dumps(failure.error_body, default=str)
    return row


def _success_params(claimed: ClaimedRequest, answer: Answer) -> dict[str, Any]:
    usage = answer.usage or {}
    return {
        "request_id": claimed.request_id,
        "job_id": claimed.job_id,
        "idx": claimed.idx,
        "provider": answer.provider,
        "model": answer.model,
        "body": json.dumps(answer.body, separators=(",", ":")),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "latency_ms": answer.latency_ms,
    }


class PostgresStore(JobStore):
    """``JobStore`` on Postgres: data-modifying CTEs, ``COPY`` in and out, psycopg on the hot path."""

    dialect: ClassVar[str] = "postgresql"
    cluster: ClassVar[bool] = True

    # --- submission -------------------------------------------------------------------------------

    def insert_job(self, conn: Connection, job: NewJob) -> bool:
        values = dataclasses.asdict(job)
        values["params"] = json.dumps(job.params)
        values["user_metadata"] = json.dumps(job.user_metadata) if job.user_metadata is not None else None
        inserted = bool(conn.execute(_INSERT_JOB, values).rowcount)
        if inserted and job.total:
            self.set_total(conn, job.id, job.total)
        return inserted

    def copy_requests(self, conn: Connection, job_id: UUID, requests: Iterable[NewRequest]) -> int:
        """``COPY`` (one stream, not one round trip per row)."""
        raw = conn.connection.driver_connection
        count = 0
        job = str(job_id)
        with raw.cursor() as cursor, cursor.copy(_COPY_REQUESTS) as copy:  # type: ignore[union-attr]
            for req in requests:
                copy.write_row(
                    (
                        job,
                        req.idx,
                        req.custom_id,
                        req.model,
                        req.provider,
                        req.messages_json or json.dumps(req.messages, separators=(",", ":")),
                        req.params_json
                        or (None if req.params is None else json.dumps(req.params, separators=(",", ":"))),
                        "queued",
                        req.est_tokens,
                    )
                )
                count += 1
        return count

    def set_total(self, conn: Connection, job_id: UUID, total: int) -> None:
        """The total and the job's counter shards (``_SET_TOTAL``)."""
        conn.execute(_SET_TOTAL, {"id": job_id, "total": total})

    def mark_enqueued(self, conn: Connection, job_id: UUID) -> None:
        conn.execute(_MARK_ENQUEUED, {"id": job_id})

    # --- dispatch ---------------------------------------------------------------------------------

    def release(
        self, conn: Connection, job_id: UUID, limit: int, *, provider: str | None = None, model: str | None = None
    ) -> list[Released]:
        if limit <= 0:
            return []
        params: dict[str, Any] = {"job_id": job_id, "limit": limit}
        only = ""
        if provider is not None and model is not None:
            only = "AND r.provider = %(provider)s AND r.model = %(model)s"
            params |= {"provider": provider, "model": model}
        rows = _rows(conn, _RELEASE.format(only=only), params)
        released = [Released(r["idx"], r["est_tokens"], r["provider"], r["model"]) for r in rows]
        released.sort(key=lambda r: r.idx)
        return released

    def dispatch_backlog(self, conn: Connection, *, cap: int) -> list[ActiveJob]:
        jobs: dict[UUID, ActiveJob] = {}
        parts: dict[UUID, list[BacklogPart]] = {}
        for row in _rows(conn, _BACKLOG, {"cap": max(1, cap)}):
            job_id = row["id"]
            if job_id not in jobs:
                jobs[job_id] = ActiveJob(
                    id=job_id,
                    kind=row["kind"],
                    queue=row["queue"],
                    owner_id=row["owner_id"],
                    priority=int(row["priority"]),
                    deadline_at=row["deadline_at"],
                    created_at=row["created_at"],
                    total=int(row["total"]),
                    done=int(row["done"]),
                    weight=float(row["weight"]),
                    max_concurrent=row["max_concurrent_requests"],
                )
                parts[job_id] = []
            if row["provider"] is not None:
                parts[job_id].append(BacklogPart(row["provider"], row["model"], int(row["n"]), int(row["tokens"])))
        return [dataclasses.replace(job, backlog=tuple(parts[job.id])) for job in jobs.values()]

    # --- execution (workers) ----------------------------------------------------------------------

    def claim_request(
        self, conn: Connection, job_id: UUID, idx: int, *, timeout_s: float, margin_s: float, worker_id: str | None
    ) -> ClaimedRequest | None:
        row = _hot(
            conn,
            _CLAIM,
            {"job_id": job_id, "idx": idx, "timeout_s": timeout_s, "margin_s": margin_s, "worker_id": worker_id},
        )
        if row is None:
            return None
        return ClaimedRequest.from_row(row, job_id, idx, attempts=row["attempts"], deadline_at=row["deadline_at"])

    def claim_requests(self, conn: Connection, claims: list[Claim]) -> list[ClaimedRequest | None]:
        """Many threads' claims in one round trip (``_hot_many``), in the order of their requests."""
        if len(claims) == 1:
            c = claims[0]
            return [
                self.claim_request(
                    conn, c.job_id, c.idx, timeout_s=c.timeout_s, margin_s=c.margin_s, worker_id=c.worker_id
                )
            ]
        order = sorted(range(len(claims)), key=lambda i: (str(claims[i].job_id), claims[i].idx))
        rows = _hot_many(
            conn,
            [
                (
                    _CLAIM,
                    {
                        "job_id": claims[i].job_id,
                        "idx": claims[i].idx,
                        "timeout_s": claims[i].timeout_s,
                        "margin_s": claims[i].margin_s,
                        "worker_id": claims[i].worker_id,
                    },
                )
                for i in order
            ],
        )
        claimed: list[ClaimedRequest | None] = [None] * len(claims)
        for i, row in zip(order, rows, strict=True):
            if row is not None:
                c = claims[i]
                claimed[i] = ClaimedRequest.from_row(
                    row, c.job_id, c.idx, attempts=row["attempts"], deadline_at=row["deadline_at"]
                )
        return claimed

    def record_success(self, conn: Connection, claimed: ClaimedRequest, answer: Answer) -> Progress | None:
        row = _hot(conn, _RECORD_SUCCESS, _success_params(claimed, answer))
        return Progress(row["complete"]) if row else None

    def record_successes(self, conn: Connection, items: list[tuple[ClaimedRequest, Answer]]) -> list[Progress | None]:
        """The stores of many threads in one round trip (``_hot_many``) and one transaction, in the module's lock
        order: every store in (job, index) order, then one statement counting them all (``_COUNT_GROUP``)."""
        if len(items) == 1:  # alone: a plain statement (no pipeline to enter and leave)
            return [self.record_success(conn, *items[0])]
        order = sorted(range(len(items)), key=lambda i: (str(items[i][0].job_id), items[i][0].idx))
        rows = _hot_many(
            conn,
            [(_RECORD_SUCCESS_IN_GROUP, _success_params(*items[i])) for i in order]
            + [(_COUNT_GROUP, {"ids": [claimed.request_id for claimed, _ in items]})],
        )
        stored, counted = rows[: len(order)], rows[-1]
        completed = set(counted["completed"]) if counted else set()
        progress: list[Progress | None] = [None] * len(items)
        for i, row in zip(order, stored, strict=True):
            if row is None:
                continue  # nothing stored: an answer that came too late
            job = items[i][0].job_id
            progress[i] = Progress(job in completed)
            completed.discard(job)  # one item per job carries the job's completion
        return progress

    def record_end(
        self, conn: Connection, request_id: int, state: RequestState, *, attempt: int, failure: Failure
    ) -> Progress | None:
        row = conn.execute(_RECORD_END[state], _failure(failure, request_id=request_id, attempt=attempt)).first()
        return Progress(row.complete) if row else None

    def count_ends(self, conn: Connection, job_id: UUID, counter: str, idxs: list[int]) -> Progress:
        rows = _rows(conn, _COUNT_IDXS[counter], {"job_id": job_id, "idxs": idxs})
        return Progress(bool(rows and rows[0]["complete"]))

    def record_retry(
        self, conn: Connection, request_id: int, *, attempt: int, delay_s: float, failure: Failure
    ) -> bool:
        values = _failure(failure, request_id=request_id, attempt=attempt, delay_s=delay_s)
        return bool(conn.execute(_RECORD_RETRY, values).rowcount)

    def record_deferral(self, conn: Connection, request_id: int, *, attempt: int, delay_s: float) -> bool:
        result = conn.execute(_RECORD_DEFERRAL, {"request_id": request_id, "delay_s": delay_s, "attempt": attempt})
        return bool(result.rowcount)

    def set_race_winner(self, conn: Connection, job_id: UUID, idx: int) -> None:
        conn.execute(_SET_RACE_WINNER, {"id": job_id, "idx": idx})

    def skip_unsent(self, conn: Connection, job_id: UUID) -> Progress | None:
        row = conn.execute(_SKIP_UNSENT, {"id": job_id, "error": SKIPPED_ERROR}).first()
        return Progress(row.complete) if row else None

    def finalize_job(self, conn: Connection, job_id: UUID) -> str | None:
        row = conn.execute(_FINALIZE_JOB, {"id": job_id}).first()
        return str(row.state) if row else None

    # --- control (clients) ------------------------------------------------------------------------

    def cancel_job(self, conn: Connection, job_id: UUID) -> int:
        """One statement: a data-modifying CTE cancels the requests, then moves the job row."""
        row = conn.execute(_CANCEL_JOB, {"id": job_id, "error": CANCELLED_ERROR}).first()
        return int(row.n) if row else 0

    def job_row(self, conn: Connection, job_id: UUID) -> dict[str, Any] | None:
        row = conn.execute(_JOB_ROW, {"id": job_id}).mappings().first()
        return fold_shards(dict(row)) if row else None

    def stream_results(self, engine: Engine, job_id: UUID, *, page_size: int = 1_000) -> Iterator[dict[str, Any]]:
        """Through a server-side cursor."""
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=page_size).execute(
                _RESULTS, {"job_id": job_id, "start": 0}
            )
            for row in result.mappings():
                yield dict(row)

    def export_results_jsonl(self, engine: Engine, job_id: UUID, out: IO[bytes]) -> bool:
        """Postgres builds each line (``COPY ... TO STDOUT``), so nothing is parsed or re-serialised
        here: ~10x the rows/s of going through ``ModelResponse`` objects."""
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

    def expire_overdue(self, conn: Connection) -> list[UUID]:
        return [row.id for row in conn.execute(_EXPIRE_OVERDUE, {"error": EXPIRED_ERROR}).all()]

    def jobs_due_for_finalize(self, conn: Connection) -> list[UUID]:
        return [row.id for row in conn.execute(_JOBS_DUE_FOR_FINALIZE).all()]
