"""The job store: every statement of a job's life, as one contract with two peer implementations.

``PostgresStore`` (``batcher._db.postgres``, a cluster) and ``SqliteStore`` (``batcher._db.sqlite``,
embedded mode) implement ``JobStore``; ``store_for(engine_or_connection)`` picks one per database,
once. Callers hold the store (``WorkerContext.store``) or ask ``store_for(conn)``, and never switch
on the dialect themselves. One test suite (``tests/integration/test_store_contract.py``) runs every
promise below against both.

What every statement promises:

* **One transaction's worth, the caller's.** A method runs on the connection it is given and joins
  its transaction; it commits nothing itself (``stream_results`` and ``export_results_jsonl`` open
  their own read). On Postgres each is one round trip (a data-modifying CTE where it writes several
  rows); on SQLite it is several statements, atomic because every SQLite transaction of batcher
  takes the write lock when it begins (``BEGIN IMMEDIATE``, ``batcher._db.engine``).
* **Guarded by the state it expects**, so running it twice, or after another process moved the row
  on, changes nothing: a redelivered task, a re-run after a lost lease, a recovery re-enqueue and a
  duplicate finalizer are all harmless.
* **Counted once.** A job's counters (``succeeded``, ``failed``, ``cancelled``, ``expired``) move in
  the same statement as the request rows they count, guarded the same way; ``Progress.complete``
  (the job's last open request was counted) is seen by exactly one caller. On Postgres the counters
  of an active job are split over ``JOB_COUNTER_SHARDS`` rows of ``job_counters`` (folded into the
  ``jobs`` row when the job is finalized); ``job_row`` and every reader add them up.
* **Stored once.** A response is inserted only by the statement that moves its request to
  ``succeeded`` (its primary key is the request id): at most one response per request, ever.
* **Fenced by attempt.** Failures, retries and deferrals name the attempt (``ClaimedRequest.attempts``)
  they come from: an attempt whose request was taken back and claimed again changes nothing. A
  success is not fenced: a paid answer is kept whichever attempt brings it, as long as the request
  is not final yet.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any, ClassVar, cast
from uuid import UUID

from sqlalchemy import Connection, Engine, Table, func, literal_column, select, text, update

from batcher._db.models import Job, Request, Response
from batcher._db.rows import (
    ActiveJob,
    Answer,
    Claim,
    ClaimedRequest,
    Failure,
    InWindow,
    NewJob,
    NewRequest,
    Progress,
    Released,
)
from batcher._exceptions import ConfigurationError
from batcher._states import ACTIVE_JOB_STATES, RequestState

ACTIVE_STATES = tuple(s.value for s in ACTIVE_JOB_STATES)
"""Job states that are not final (``queued``, ``running``, ``cancelling``)."""

FINAL_STATE_COUNTER = {
    RequestState.FAILED: "failed",
    RequestState.CANCELLED: "cancelled",
    RequestState.SKIPPED: "cancelled",
    RequestState.EXPIRED: "expired",
}
"""The job counter each final non-success state of a request moves (``succeeded`` has its own statement)."""

JOB_COUNTER_SHARDS = 16
"""On Postgres, an active job's counters live in this many rows of ``job_counters``: request ``idx`` counts
in shard ``idx % JOB_COUNTER_SHARDS``, so the stores of a wave of completions update 16 rows instead of
queueing on one. Fixed by migration 0009 (every process must agree on it while a job is active)."""

SKIPPED_ERROR = "skipped: another model answered first"
CANCELLED_ERROR = "cancelled before it was sent"
EXPIRED_ERROR = "the job's completion window ended before it ran"


class JobStore(abc.ABC):
    """Every statement of a job's life: submission, execution (workers), control (clients), recovery.

    Statements that are the same SQLAlchemy Core on both databases are written once, here.
    """

    dialect: ClassVar[str]
    """The SQLAlchemy dialect name this store runs on."""
    cluster: ClassVar[bool]
    """True: processes on several machines share this database, elect a leader through it, and the
    features that need Postgres (the HTTP service, evaluations) run on it. False: one process owns
    the database (a SQLite file, embedded mode) and leads by itself."""

    # --- submission -------------------------------------------------------------------------------

    @abc.abstractmethod
    def insert_job(self, conn: Connection, job: NewJob) -> bool:
        """Insert the job row, ``queued`` with zero counters.

        False, inserting nothing, if ``(owner_id, idempotency_key)`` already names a job: a retried
        create finds the first job with ``job_by_idempotency_key``."""

    def job_by_idempotency_key(self, conn: Connection, owner_id: UUID, key: str) -> tuple[UUID, str | None] | None:
        """The job created with this key, and the fingerprint of the body that created it."""
        row = conn.execute(
            select(_JOBS.c.id, _JOBS.c.idempotency_fingerprint).where(
                _JOBS.c.owner_id == owner_id, _JOBS.c.idempotency_key == key
            )
        ).first()
        return (row.id, row.idempotency_fingerprint) if row else None

    @abc.abstractmethod
    def copy_requests(self, conn: Connection, job_id: UUID, requests: Iterable[NewRequest]) -> int:
        """Store the job's requests, ``queued``, streaming ``requests`` (never held as a list). Returns the count.

        An exception raised by the iterable (a bad request) propagates: the caller's transaction
        rolls back and nothing is stored."""

    def set_total(self, conn: Connection, job_id: UUID, total: int) -> None:
        """Record how many requests the job has (known once they are all stored)."""
        conn.execute(update(_JOBS).where(_JOBS.c.id == job_id).values(total=total))

    @abc.abstractmethod
    def mark_enqueued(self, conn: Connection, job_id: UUID) -> None:
        """Stamp ``enqueued_at``: the job is accepted into the backlog (its requests are released by the
        dispatcher, a race's by its submitter)."""

    # --- dispatch (the backlog and the broker window, ``batcher._dispatch``) ----------------------------

    @abc.abstractmethod
    def release(
        self, conn: Connection, job_id: UUID, limit: int, *, provider: str | None = None, model: str | None = None
    ) -> list[Released]:
        """Take up to ``limit`` requests out of the job's backlog (``queued``, ``dispatched_at`` NULL), lowest
        index first, optionally only those to ``provider``/``model``; stamp ``dispatched_at``. Returned in
        index order.

        Only a ``queued`` or ``running`` job releases (a ``cancelling`` or final one never does). On Postgres
        the rows are taken ``FOR UPDATE SKIP LOCKED``: two dispatchers (an old leader that has not noticed it
        lost its lock, a submitter releasing a race) never take the same request. The caller publishes their
        messages *before* committing: a refused publish rolls the release back, so a request is never marked
        released without a message (a commit lost after the publish leaves duplicates, which claims make
        harmless)."""

    def window(self, conn: Connection) -> list[InWindow]:
        """Released requests that are not final (``queued``, ``running``, ``retrying`` with ``dispatched_at``
        set), per job and provider/model: what occupies the broker window and the workers."""
        return [InWindow(row.job_id, row.provider, row.model, int(row.n)) for row in conn.execute(_WINDOW)]

    def take_back(self, conn: Connection, job_ids: Iterable[UUID] | None = None) -> int:
        """Put every released request that is still ``queued`` back into the backlog (``dispatched_at`` NULL),
        of every job or of ``job_ids``; returns how many. After Redis lost its data their messages are gone:
        the dispatcher releases them again. Requests running or retrying are left alone."""
        statement = (
            update(_REQUESTS)
            .where(_REQUESTS.c.dispatched_at.is_not(None), text("requests.state = 'queued'"))
            .values(dispatched_at=None)
        )
        if job_ids is not None:
            ids = list(job_ids)
            if not ids:
                return 0
            statement = statement.where(_REQUESTS.c.job_id.in_(ids))
        return int(conn.execute(statement).rowcount)

    @abc.abstractmethod
    def dispatch_backlog(self, conn: Connection, *, cap: int) -> list[ActiveJob]:
        """Every ``queued`` or ``running`` job with what the dispatcher needs of it: its owner's weight and
        quota (``api_keys``), its priority, deadline and counters, and the head of its backlog (at most
        ``cap`` requests, lowest index first) per provider/model with their estimated tokens. A job with
        nothing left in its backlog is listed with an empty ``backlog``. Nothing active: one cheap read."""

    # --- execution (workers) ----------------------------------------------------------------------

    def claim_requests(self, conn: Connection, claims: list[Claim]) -> list[ClaimedRequest | None]:
        """``claim_request`` of each claim, as one all-or-nothing write (one round trip where the store can:
        a worker's threads claim together). On an error nothing is written; the caller runs the claims one
        by one to find the claim it belongs to. This default runs them in turn in ``conn``'s transaction."""
        return [
            self.claim_request(conn, c.job_id, c.idx, timeout_s=c.timeout_s, margin_s=c.margin_s, worker_id=c.worker_id)
            for c in claims
        ]

    @abc.abstractmethod
    def claim_request(
        self, conn: Connection, job_id: UUID, idx: int, *, timeout_s: float, margin_s: float, worker_id: str | None
    ) -> ClaimedRequest | None:
        """Take the request for one attempt, or ``None`` if it is not ours to run.

        Takes a ``queued`` or ``retrying`` request, or a ``running`` one whose lease expired or that
        ``worker_id`` holds already (its first claim committed but the reply was lost with the
        connection), of a job that is neither final nor ``cancelling``. The claim bumps
        ``attempts``, records ``worker_id`` (whose death hands the request to another worker; ``None``: no holder), sets
        the lease (the job's ``timeout_s`` else ``timeout_s``, plus ``margin_s``) and starts the
        job if it was ``queued``. ``None`` — already final, running under another worker's live
        lease, or the job cancelled or finished — is how redelivered and duplicate messages become
        no-ops."""

    @abc.abstractmethod
    def record_success(self, conn: Connection, claimed: ClaimedRequest, answer: Answer) -> Progress | None:
        """Mark the request ``succeeded``, store its answer as its response and count it, once.

        Any attempt's answer is kept while the request is not final (``queued``, ``running`` or
        ``retrying``): a paid answer is stored even when its worker was presumed dead and the
        request handed to another. ``None`` if the request is final already (another attempt's
        answer was stored, or it ended otherwise): nothing is written."""

    def record_successes(self, conn: Connection, items: list[tuple[ClaimedRequest, Answer]]) -> list[Progress | None]:
        """``record_success`` of each item, as one all-or-nothing write (a group commit: one round trip
        where the store can). On an error nothing is written; the caller runs the items one by one to
        find the item it belongs to. This default runs them in turn in ``conn``'s transaction."""
        return [self.record_success(conn, claimed, answer) for claimed, answer in items]

    @abc.abstractmethod
    def record_end(
        self, conn: Connection, request_id: int, state: RequestState, *, attempt: int, failure: Failure
    ) -> Progress | None:
        """Move a ``running`` request to a final non-success state (``FINAL_STATE_COUNTER``) with ``failure``,
        and count it, once.

        Fenced by ``attempt``: ``None``, changing nothing, if the request is no longer running this attempt."""

    def count_ends(self, conn: Connection, job_id: UUID, counter: str, idxs: list[int]) -> Progress:
        """Count the requests ``idxs`` of the job, moved to a final state by the caller itself (the recovery
        sweep's reaping), on ``counter`` (a value of ``FINAL_STATE_COUNTER``)."""
        n = len(idxs)
        conn.execute(update(_JOBS).where(_JOBS.c.id == job_id).values({counter: _JOBS.c[counter] + n}))
        row = conn.execute(
            select(_JOBS.c.total, (_JOBS.c.succeeded + _JOBS.c.failed + _JOBS.c.cancelled + _JOBS.c.expired)).where(
                _JOBS.c.id == job_id
            )
        ).one()
        return Progress(n > 0 and row[1] >= row[0])

    @abc.abstractmethod
    def record_retry(
        self, conn: Connection, request_id: int, *, attempt: int, delay_s: float, failure: Failure
    ) -> bool:
        """Park a ``running`` request as ``retrying`` until ``delay_s`` from now, keeping this attempt's ``failure``.

        The attempt stays spent. Fenced by ``attempt``: False (nothing changed) if it was no longer ours."""

    @abc.abstractmethod
    def record_deferral(self, conn: Connection, request_id: int, *, attempt: int, delay_s: float) -> bool:
        """Over a shared rate limit: park a ``running`` request as ``retrying`` and give its attempt back.

        Fenced by ``attempt``: False (nothing changed) if it was no longer ours."""

    @abc.abstractmethod
    def set_race_winner(self, conn: Connection, job_id: UUID, idx: int) -> None:
        """Record the race's winner; the first one recorded stays (later calls change nothing)."""

    @abc.abstractmethod
    def skip_unsent(self, conn: Connection, job_id: UUID) -> Progress | None:
        """A race is won: every ``queued``/``retrying`` request ends ``skipped`` (counted as ``cancelled``).

        Requests in flight are left to finish. ``None`` if the job does not exist."""

    @abc.abstractmethod
    def finalize_job(self, conn: Connection, job_id: UUID) -> str | None:
        """Give a job whose requests are all final its final state, once; returns it.

        ``cancelled`` if it was ``cancelling``, else ``expired`` if any request expired, else
        ``failed`` for a race nobody won, else ``completed``. ``None`` if not due (requests still
        open) or final already: duplicates of the finalizer do nothing."""

    # --- control (clients) ------------------------------------------------------------------------

    @abc.abstractmethod
    def cancel_job(self, conn: Connection, job_id: UUID) -> int:
        """Cancel every request not yet sent; the job becomes ``cancelling`` until in-flight ones return.

        Returns how many requests were cancelled (counted as ``cancelled``); 0, changing nothing, for
        a final job. Locks the requests before the job row, the order claims take them in, so a
        cancel never deadlocks with a claim; once cancelled, no claim takes them. Follow with
        ``finalize_job``: a job with nothing in flight is ``cancelled`` at once."""

    @abc.abstractmethod
    def job_row(self, conn: Connection, job_id: UUID) -> dict[str, Any] | None:
        """The ``jobs`` row as a dict (timestamps timezone-aware), or ``None``."""

    def backlog(self, conn: Connection, job_id: UUID) -> int:
        """Requests of the job still in the backlog: ``queued`` and not released to the broker yet
        (``dispatched_at IS NULL``; ``JobStatus.queued``). Read through the partial index of migration 0007,
        so it costs the backlog's size, not the job's; the same Core statement on both databases."""
        count = conn.execute(
            select(func.count())
            .select_from(_REQUESTS)
            .where(
                _REQUESTS.c.job_id == job_id,
                _REQUESTS.c.state == literal_column("'queued'"),  # a literal: the partial index's predicate
                _REQUESTS.c.dispatched_at.is_(None),
            )
        ).scalar_one()
        return int(count)

    def response_body(self, conn: Connection, job_id: UUID, idx: int) -> dict[str, Any] | None:
        """The stored response of the job's request ``idx`` (a race's winner), or ``None``."""
        body = conn.execute(
            select(_RESPONSES.c.body).where(_RESPONSES.c.job_id == job_id, _RESPONSES.c.idx == idx)
        ).scalar_one_or_none()
        return dict(body) if body is not None else None

    @abc.abstractmethod
    def stream_results(self, engine: Engine, job_id: UUID, *, page_size: int = 1_000) -> Iterator[dict[str, Any]]:
        """Every request of a job with its response body (``None`` if none), in input order.

        Streamed (``page_size`` rows at a time), on a connection of its own."""

    def export_results_jsonl(self, engine: Engine, job_id: UUID, out: IO[bytes]) -> bool:
        """Write a job's results to ``out`` as JSONL (``batcher results``' format), built by the database.

        False when the database cannot (the caller renders ``stream_results`` itself)."""
        return False

    # --- metrics ----------------------------------------------------------------------------------

    def jobs_by_state(self, conn: Connection) -> dict[str, int]:
        """How many jobs are in each state (states with none are left out)."""
        return {str(state): int(n) for state, n in conn.execute(_JOBS_BY_STATE)}

    def open_requests_by_state(self, conn: Connection) -> dict[str, int]:
        """How many requests are ``queued``, ``running`` and ``retrying`` (states with none are left out)."""
        return {str(state): int(n) for state, n in conn.execute(_OPEN_REQUESTS_BY_STATE)}

    def backlog_size(self, conn: Connection) -> int:
        """Requests of every job still in the backlog: stored, not yet released to the broker."""
        return int(conn.execute(_BACKLOG_SIZE).scalar_one())

    # --- recovery ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def expire_overdue(self, conn: Connection) -> list[UUID]:
        """End every ``queued``/``retrying`` request of active jobs past their deadline as ``expired``.

        Returns the jobs whose counters moved (each overdue job once; again only if it has new
        unsent requests)."""

    @abc.abstractmethod
    def jobs_due_for_finalize(self, conn: Connection) -> list[UUID]:
        """Active jobs whose requests are all final (their finalizer may have been lost)."""


_JOBS = cast(Table, Job.__table__)
_RESPONSES = cast(Table, Response.__table__)
_REQUESTS = cast(Table, Request.__table__)

_WINDOW = (
    select(_REQUESTS.c.job_id, _REQUESTS.c.provider, _REQUESTS.c.model, func.count().label("n"))
    # Literally the predicate of the partial index ix_requests_window (a bound parameter would hide from
    # the planner that the index applies): O(window) rows, never O(backlog).
    .where(_REQUESTS.c.dispatched_at.is_not(None), text("requests.state IN ('queued', 'running', 'retrying')"))
    .group_by(_REQUESTS.c.job_id, _REQUESTS.c.provider, _REQUESTS.c.model)
)

_JOBS_BY_STATE = text("SELECT state, count(*) FROM jobs GROUP BY state")
_OPEN_REQUESTS_BY_STATE = text(
    # Only the open states: the partial index on requests(state) covers exactly these.
    "SELECT state, count(*) FROM requests WHERE state IN ('queued', 'running', 'retrying') GROUP BY state"
)

_BACKLOG_SIZE = text(
    # Exactly the predicate of the partial index ix_requests_backlog: an index-only count.
    "SELECT count(*) FROM requests WHERE state = 'queued' AND dispatched_at IS NULL"
)

_stores: dict[str, JobStore] = {}
_lock = threading.Lock()


def store_for(bind: Connection | Engine) -> JobStore:
    """The job store of ``bind``'s database, built once per dialect (the stores hold no state)."""
    store = _stores.get(bind.dialect.name)
    if store is None:
        with _lock:
            store = _stores.get(bind.dialect.name)
            if store is None:
                store = _stores[bind.dialect.name] = _build(bind.dialect.name)
    return store


def _build(dialect: str) -> JobStore:
    if dialect == "postgresql":
        from batcher._db.postgres import PostgresStore

        return PostgresStore()
    if dialect == "sqlite":
        from batcher._db.sqlite import SqliteStore

        return SqliteStore()
    raise ConfigurationError(
        f"batcher stores jobs in PostgreSQL (a cluster) or SQLite (embedded mode), not {dialect!r}: "
        "check BATCHER_DATABASE_URL"
    )
