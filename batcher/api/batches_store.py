"""The SQL of OpenAI-style batches (the ``batches`` table). Postgres only, as the HTTP service is.

Every status change is guarded by the status it expects (``WHERE status = 'validating'``), so two
replicas advancing the same batch, or a reader racing a cancel, change it once. The job a batch
runs is stored and controlled through the job store (``batcher._db.contract``); the file records
of its output and error files through ``batcher._files_store``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from batcher._db.postgres import SHARD_SUMS
from batcher._scheduling import DEFAULT_PRIORITY
from batcher._validation import text_problem

_LOAD = f"""
    SELECT b.*, j.state AS job_state, j.total AS job_total, j.succeeded + s.succeeded AS job_succeeded,
           j.failed + s.failed AS job_failed, j.cancelled + s.cancelled AS job_cancelled,
           j.expired + s.expired AS job_expired, j.finished_at AS job_finished_at
      FROM batches AS b LEFT JOIN jobs AS j ON j.id = b.job_id {SHARD_SUMS}
"""
"""A job's counts are its row's plus its counter shards' (``batcher._db.postgres``)."""

_TERMINAL_SQL = "('completed', 'failed', 'expired', 'cancelled')"


def try_lock(conn: Connection, batch_id: str) -> bool:
    """A transaction-scoped advisory lock on one batch; False if another session holds it."""
    got: bool = conn.execute(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended(:id, 0))"), {"id": batch_id}
    ).scalar_one()
    return got


def load(conn: Connection, batch_id: str) -> dict[str, Any] | None:
    """The batch with its job's state and counters (``job_*``), or ``None``."""
    if text_problem(batch_id) is not None:  # an id Postgres cannot even compare names no batch
        return None
    row = conn.execute(text(_LOAD + " WHERE b.id = :id"), {"id": batch_id}).mappings().first()
    return dict(row) if row else None


class KeyReusedError(Exception):
    """The ``Idempotency-Key`` was used by an earlier create with another body."""


def insert(
    conn: Connection,
    *,
    batch_id: str,
    owner_id: uuid.UUID,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    window: timedelta,
    window_override: str | None,
    metadata: dict[str, str] | None,
    output_expires_after_s: int | None,
    idempotency_key: str | None,
    idempotency_fingerprint: str | None,
    priority: int = DEFAULT_PRIORITY,
) -> tuple[str, bool]:
    """Store a ``validating`` batch: returns its id and whether it is new.

    Every create makes a new batch, except one repeating an ``Idempotency-Key`` of the same owner:
    that returns the first batch's id (the unique index is the check, so a concurrent duplicate waits
    for the first transaction), or raises ``KeyReusedError`` if the first create had another body."""
    inserted = conn.execute(
        text(
            "INSERT INTO batches (id, owner_id, input_file_id, endpoint, completion_window, window_override, "
            "batch_metadata, output_expires_after_s, idempotency_key, idempotency_fingerprint, status, expires_at, "
            "priority) "
            "VALUES (:id, :owner, :file, :endpoint, :window, :window_override, CAST(:metadata AS jsonb), "
            ":output_expires_after_s, :key, :fingerprint, 'validating', now() + make_interval(secs => :window_s), "
            ":priority) "
            "ON CONFLICT (owner_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id"
        ),
        {
            "id": batch_id,
            "owner": owner_id,
            "file": input_file_id,
            "endpoint": endpoint,
            "window": completion_window,
            "window_override": window_override,
            "metadata": json.dumps(metadata) if metadata is not None else None,
            "output_expires_after_s": output_expires_after_s,
            "key": idempotency_key,
            "fingerprint": idempotency_fingerprint,
            "window_s": window.total_seconds(),
            "priority": priority,
        },
    ).scalar_one_or_none()
    if inserted is not None:
        return str(inserted), True
    existing = conn.execute(
        text("SELECT id, idempotency_fingerprint FROM batches WHERE owner_id = :owner AND idempotency_key = :key"),
        {"owner": owner_id, "key": idempotency_key},
    ).one()
    if existing.idempotency_fingerprint != idempotency_fingerprint:
        raise KeyReusedError(existing.id)
    return str(existing.id), False


_USAGE = """
    SELECT COALESCE(SUM(prompt_tokens), 0) AS input_tokens,
           COALESCE(SUM(completion_tokens), 0) AS output_tokens,
           COALESCE(SUM(COALESCE(total_tokens, COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))), 0)
               AS total_tokens,
           COALESCE(SUM(CASE WHEN jsonb_typeof(body #> '{usage,prompt_tokens_details,cached_tokens}') = 'number'
                        THEN (body #>> '{usage,prompt_tokens_details,cached_tokens}')::numeric END), 0)
               AS cached_tokens,
           COALESCE(SUM(CASE WHEN jsonb_typeof(body #> '{usage,completion_tokens_details,reasoning_tokens}') = 'number'
                        THEN (body #>> '{usage,completion_tokens_details,reasoning_tokens}')::numeric END), 0)
               AS reasoning_tokens
      FROM responses WHERE job_id = :job
"""


def usage_of_nothing() -> dict[str, Any]:
    """The usage of a batch that ran nothing (failed validation, cancelled while validating)."""
    return {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }


def usage(conn: Connection, job_id: uuid.UUID | None) -> dict[str, Any]:
    """Token usage summed over the job's stored responses, in the shape of OpenAI's ``BatchUsage``."""
    if job_id is None:
        return usage_of_nothing()
    n = {k: int(v) for k, v in conn.execute(text(_USAGE), {"job": job_id}).mappings().one().items()}
    return {
        "input_tokens": n["input_tokens"],
        "input_tokens_details": {"cached_tokens": n["cached_tokens"]},
        "output_tokens": n["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": n["reasoning_tokens"]},
        "total_tokens": n["total_tokens"],
    }


def set_model(conn: Connection, batch_id: str, model: str | None) -> None:
    """Record the model(s) the input file's lines name."""
    conn.execute(text("UPDATE batches SET model = :model WHERE id = :id"), {"id": batch_id, "model": model})


def mark_failed(conn: Connection, batch_id: str, errors: list[dict[str, Any]]) -> None:
    """``validating`` → ``failed``, with the lines' errors."""
    conn.execute(
        text(
            "UPDATE batches SET status = 'failed', failed_at = now(), errors = CAST(:errors AS jsonb) "
            "WHERE id = :id AND status = 'validating'"
        ),
        {"id": batch_id, "errors": json.dumps(errors)},
    )


def mark_in_progress(conn: Connection, batch_id: str, job_id: uuid.UUID) -> bool:
    """``validating`` → ``in_progress``, running ``job_id``. False if it was no longer validating (cancelled)."""
    started = conn.execute(
        text(
            "UPDATE batches SET status = 'in_progress', in_progress_at = now(), job_id = :job "
            "WHERE id = :id AND status = 'validating' RETURNING id"
        ),
        {"id": batch_id, "job": job_id},
    ).scalar_one_or_none()
    return started is not None


def mark_cancelling(conn: Connection, batch_id: str) -> None:
    """``in_progress`` → ``cancelling``."""
    conn.execute(
        text(
            "UPDATE batches SET status = 'cancelling', cancelling_at = now() WHERE id = :id AND status = 'in_progress'"
        ),
        {"id": batch_id},
    )


def cancel_validating(conn: Connection, batch_id: str) -> bool:
    """``validating`` → ``cancelled`` at once (nothing was stored yet). False if validation finished meanwhile."""
    done = conn.execute(
        text(
            "UPDATE batches SET status = 'cancelled', cancelling_at = now(), cancelled_at = now() "
            "WHERE id = :id AND status = 'validating' RETURNING id"
        ),
        {"id": batch_id},
    ).scalar_one_or_none()
    return done is not None


def mark_finalizing(conn: Connection, batch_id: str, at: datetime | None) -> None:
    """``in_progress`` → ``finalizing`` since ``at`` (when its job finished)."""
    conn.execute(
        text("UPDATE batches SET status = 'finalizing', finalizing_at = :at WHERE id = :id AND status = 'in_progress'"),
        {"id": batch_id, "at": at},
    )


_FINISH_COLUMNS = frozenset({"completed_at", "expired_at", "cancelled_at"})


def finish(
    conn: Connection,
    batch_id: str,
    *,
    target: str,
    column: str,
    output_file_id: str | None,
    error_file_id: str | None,
    job_finished_at: datetime | None,
    usage: dict[str, Any] | None = None,
) -> None:
    """Any status not terminal → ``target`` (stamping ``column``), with its output and error files.

    ``completed`` is stamped now; ``expired`` and ``cancelled`` when the job finished."""
    if column not in _FINISH_COLUMNS:
        raise ValueError(f"not a batch's final timestamp: {column!r}")
    at = "now()" if target == "completed" else "COALESCE(:job_finished_at, now())"
    conn.execute(
        text(
            f"UPDATE batches SET status = :target, {column} = {at}, output_file_id = :output, "
            f"error_file_id = :error, usage = CAST(:usage AS jsonb) WHERE id = :id AND status NOT IN {_TERMINAL_SQL}"
        ),
        {
            "usage": json.dumps(usage) if usage is not None else None,
            "id": batch_id,
            "target": target,
            "output": output_file_id,
            "error": error_file_id,
            "job_finished_at": job_finished_at,
        },
    )
