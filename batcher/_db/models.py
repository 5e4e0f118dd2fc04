"""The schema. It exists in a database only through the Alembic migrations in ``alembic/``.

Postgres is the source of truth: a job's progress is its counters here, never a Redis value.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from batcher._states import JobKind, JobState, RequestState

_BACKLOG = "state = 'queued' AND dispatched_at IS NULL"
_WINDOW = "dispatched_at IS NOT NULL AND state IN ('queued', 'running', 'retrying')"

JSONType = JSON().with_variant(JSONB(), "postgresql")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in(values: Any) -> str:
    return ", ".join(f"'{v.value}'" for v in values)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One call of a batch function (or one submitted file)."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"kind IN ({_in(JobKind)})", name="kind"),
        CheckConstraint(f"state IN ({_in(JobState)})", name="state"),
        CheckConstraint("priority BETWEEN 0 AND 9", name="priority"),
        Index("ix_jobs_created_at", "created_at"),
        Index(
            "ix_jobs_active",
            "state",
            postgresql_where=text("state IN ('queued', 'running', 'cancelling')"),
        ),
        Index("ix_jobs_owner_created", "owner_id", "created_at", "id"),
        Index(
            "uq_jobs_owner_idempotency_key",
            "owner_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    total: Mapped[int] = mapped_column(Integer)
    succeeded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Requests cancelled before sending, or skipped because a race was already won."""
    expired: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    """The call's parameters, secrets removed (``api_key`` never reaches this column)."""
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    winner_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Fastest-response: the index of the request whose answer won."""
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    credentials: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Fernet ciphertext of a per-call ``api_key`` (never the key itself); see ``batcher._secrets``."""
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """Set once every task has been published; recovery re-publishes jobs left without it."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    owner_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("api_keys.id"), nullable=True)
    """The API key that submitted the job over HTTP; ``None`` for jobs submitted in-process."""
    idempotency_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The ``Idempotency-Key`` header of the HTTP create: a retried create returns this job."""
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """SHA-256 of the create's body: the same key with another body is refused, not answered with this job."""
    queue: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The broker queue its requests go to (chosen at submission); recovery re-sends them there."""
    # migration 0007
    priority: Mapped[int] = mapped_column(SmallInteger, default=5, server_default="5")
    """0-9, higher first: the dispatcher serves a higher priority's backlog before any lower one's."""
    # migration 0009
    open_shards: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Postgres: how many of its ``job_counters`` rows still count open requests; the statement that takes it
    to 0 counted the job's last open request (see ``batcher._db.postgres``). Unused on SQLite."""


class JobCounter(Base):
    """One shard of an active job's counters on Postgres (migration 0009): request ``idx`` counts in shard
    ``idx % JOB_COUNTER_SHARDS``, so a wave of completions updates 16 rows, not one. The job's counts are its
    ``jobs`` columns plus its shards' sums; finalizing folds the shards into the ``jobs`` row and deletes
    them. SQLite (one writer at a time) keeps its counters on the ``jobs`` row and leaves this table empty."""

    __tablename__ = "job_counters"

    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    total: Mapped[int] = mapped_column(Integer)
    """The requests this shard counts (for a job active when migration 0009 ran: those still open then)."""
    succeeded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    expired: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Request(Base):
    """One prompt x one model: the unit of work of one Celery task."""

    __tablename__ = "requests"
    __table_args__ = (
        UniqueConstraint("job_id", "idx", name="uq_requests_job_id_idx"),
        CheckConstraint(f"state IN ({_in(RequestState)})", name="state"),
        Index(
            "ix_requests_unfinished",
            "state",
            "job_id",
            postgresql_where=text("state IN ('queued', 'running', 'retrying')"),
        ),
        # migration 0007: the backlog (what the dispatcher releases next) and the window (what is released)
        Index(
            "ix_requests_backlog",
            "job_id",
            "idx",
            postgresql_where=text(_BACKLOG),
            sqlite_where=text(_BACKLOG),
        ),
        Index("ix_requests_window", "job_id", postgresql_where=text(_WINDOW), sqlite_where=text(_WINDOW)),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    model: Mapped[str] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(String(32))
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    """Per-request parameters that override the job's (lines of a submitted file)."""
    state: Mapped[str] = mapped_column(String(16), default=RequestState.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_body: Mapped[Any] = mapped_column(JSONType, nullable=True)
    """The provider's error object of the last failed attempt (``ProviderError.body``), keys redacted."""
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The worker (``workers.id``) whose claim is running it; a lapsed heartbeat hands it to another."""
    lost: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """How many times the worker running it died; past the attempt budget the request fails."""
    # migration 0007
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """When its message was released to the broker; ``NULL``: still in the backlog (``batcher._dispatch``)."""
    est_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Estimated tokens (prompt + completion budget), set at submission: what fair sharing charges."""


class Worker(Base):
    """A worker process, alive while its heartbeat is recent (see ``workers/_liveness.py``)."""

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_heartbeat_at", "heartbeat_at"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(Text, default="", server_default="")
    concurrency: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    stopping_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """Set at SIGTERM: the worker takes no new work and hands back what it cannot finish."""
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """Set when it exited cleanly: its requests were handed back already."""


class Response(Base):
    """The stored answer of a succeeded request; at most one per request (exactly-once storage)."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_job_id_idx", "job_id", "idx"),)

    request_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("requests.id", ondelete="CASCADE"),
        primary_key=True,
    )
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)
    """The whole normalised ModelResponse (OpenAI ``chat.completion`` shape)."""
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# --- HTTP API (migration 0002) ------------------------------------------------------------------


class ApiKey(Base):
    """A key of the HTTP API. Only a SHA-256 of the key is stored; the key is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    """The key's first characters, to recognise it in listings without revealing it."""
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    can_set_api_base: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """May send jobs with their own ``api_base`` (with their own ``api_key``); admins always may."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # migration 0007
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    """This key's share of the cluster against other keys with work waiting (1 = an equal share)."""
    max_concurrent_requests: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """At most this many of the key's requests released at once (``NULL``: no quota)."""
    max_queued_prompts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """At most this many unfinished prompts; a submission beyond it is refused with 429 (``NULL``: no quota)."""


class File(Base):
    """An uploaded file (content in ``file_chunks``) or a batch's output/error file (rendered on download)."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_owner_created", "owner_id", "created_at", "id"),
        Index("ix_files_expires_at", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("api_keys.id"))
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Set on ``batch_output`` files: their content is rendered from this batch's results."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class FileChunk(Base):
    """One slice (``settings.file_chunk_bytes``) of an uploaded file's bytes, in order of ``seq``."""

    __tablename__ = "file_chunks"

    file_id: Mapped[str] = mapped_column(String(64), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Batch(Base):
    """An OpenAI Batch API batch: one input file run as one job."""

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_owner_created", "owner_id", "created_at", "id"),
        Index(
            "uq_batches_owner_idempotency_key",
            "owner_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        CheckConstraint("priority BETWEEN 0 AND 9", name="priority"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("api_keys.id"))
    input_file_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(Text)
    completion_window: Mapped[str] = mapped_column(String(16))
    batch_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # migration 0005
    model: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The model the input file's lines name (distinct models, comma-separated, in order), set by validation."""
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    """Token usage summed from the stored responses, recorded once the batch is final."""
    window_override: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """batcher's extension ``batcher_completion_window``: the window used (``completion_window`` stays as sent)."""
    output_expires_after_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """``output_expires_after.seconds``: the output and error files expire this long after they are created."""
    idempotency_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # migration 0008
    priority: Mapped[int] = mapped_column(SmallInteger, default=5, server_default="5")
    """batcher's extension ``batcher_priority`` (0-9, higher first): the priority of the job it runs."""


# --- evaluation runs (migration 0003) ------------------------------------------------------------

_EVAL_RUN_STATES = "'pending', 'answering', 'judging', 'completed', 'failed'"  # batcher.evals.states.RunState


class EvalSchedule(Base):
    """A suite run on a cron schedule by the ``batcher.eval_tick`` beat task."""

    __tablename__ = "eval_schedules"
    __table_args__ = (UniqueConstraint("suite_path", "cron", "timezone", name="uq_eval_schedules_suite_cron_tz"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    suite_name: Mapped[str] = mapped_column(Text)
    suite_path: Mapped[str] = mapped_column(Text)
    """Absolute path of the suite file, read afresh at every firing (edits apply the next night)."""
    cron: Mapped[str] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text)
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    active_since: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    """Ticks before this (creation, or the last resume) never fire: no backlog after a pause."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class EvalRun(Base):
    """One run of a suite: its items x models, their answers and scores, and its summary."""

    __tablename__ = "eval_runs"
    __table_args__ = (
        CheckConstraint(f"state IN ({_EVAL_RUN_STATES})", name="state"),
        CheckConstraint("trigger IN ('manual', 'schedule')", name="trigger"),
        # The claim of a schedule tick: two beat processes insert the same row, one wins.
        UniqueConstraint("schedule_id", "scheduled_for", name="uq_eval_runs_schedule_tick"),
        Index("ix_eval_runs_suite_created", "suite_name", "created_at"),
        Index(
            "ix_eval_runs_active",
            "state",
            postgresql_where=text("state IN ('pending', 'answering', 'judging')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    suite_name: Mapped[str] = mapped_column(Text)
    suite_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the resolved suite and its items: an unchanged suite resumes its unfinished run."""
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    """The resolved suite (models, scorers, thresholds): a run never re-reads its file."""
    state: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16))
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("eval_schedules.id", ondelete="SET NULL"), nullable=True
    )
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    item_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    comparison: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    """Against the previous completed run of the suite: score deltas and flipped items."""
    regressed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    submitting_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """Set while a job is being submitted: after a crash, the job is found by its metadata and adopted."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EvalRunJob(Base):
    """A batcher job submitted for a run (answers, or judge verdicts); a resumed run has several."""

    __tablename__ = "eval_run_jobs"

    run_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("eval_runs.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class EvalItem(Base):
    """One dataset item as the run saw it."""

    __tablename__ = "eval_items"

    run_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("eval_runs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[str] = mapped_column(Text)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    expected: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    item_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class EvalResult(Base):
    """One item x one model: the answer (or error), its cost, and its scores."""

    __tablename__ = "eval_results"

    run_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("eval_runs.id", ondelete="CASCADE"), primary_key=True)
    model_idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(Text)
    """The model's label in the suite (its ``name``, else the model string)."""
    key: Mapped[str] = mapped_column(Text)
    """Hash of (model, messages, params): the request's ``custom_id`` and the cache key."""
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Answered from the response cache: nothing was sent (or paid) for it in this run."""
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class EvalResponse(Base):
    """The response cache: the latest successful answer per request key."""

    __tablename__ = "eval_responses"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    model: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
