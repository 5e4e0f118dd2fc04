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
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from batcher._states import JobKind, JobState, RequestState

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
        Index("ix_jobs_created_at", "created_at"),
        Index(
            "ix_jobs_active",
            "state",
            postgresql_where=text("state IN ('queued', 'running', 'cancelling')"),
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
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


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
