"""The SQL of the HTTP service's API keys (the ``api_keys`` table). Postgres only, as the service is.

Only a key's SHA-256 is stored (``batcher.api.auth``): a request finds its key with one indexed lookup.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, RowMapping, text

from batcher._db.postgres import SHARD_SUMS, SHARDED_DONE

LIMIT_COLUMNS = ("weight", "max_concurrent_requests", "max_queued_prompts")
"""A key's share and quotas (migration 0007): what ``batcher keys create`` and ``keys set`` change."""


def insert_key(
    conn: Connection,
    *,
    name: str,
    key_hash: str,
    prefix: str,
    admin: bool,
    allow_api_base: bool,
    limits: dict[str, Any] | None = None,
) -> RowMapping:
    """Store a new key's hash (with its share and quotas, ``LIMIT_COLUMNS``; unset: the defaults); returns its row."""
    values = {"weight": 1.0, "max_concurrent_requests": None, "max_queued_prompts": None, **(limits or {})}
    return (
        conn.execute(
            text(
                "INSERT INTO api_keys (id, name, key_hash, prefix, is_admin, can_set_api_base, weight, "
                "max_concurrent_requests, max_queued_prompts) "
                "VALUES (:id, :name, :hash, :prefix, :admin, :api_base, :weight, :max_concurrent_requests, "
                ":max_queued_prompts) RETURNING *"
            ),
            {
                "id": uuid.uuid4(),
                "name": name,
                "hash": key_hash,
                "prefix": prefix,
                "admin": admin,
                "api_base": allow_api_base,
                **{column: values[column] for column in LIMIT_COLUMNS},
            },
        )
        .mappings()
        .one()
    )


def set_limits(conn: Connection, key_id: uuid.UUID, limits: dict[str, Any]) -> RowMapping | None:
    """Change some of a key's ``LIMIT_COLUMNS`` (``None`` clears a quota); its row, or ``None`` if unknown."""
    columns = [c for c in LIMIT_COLUMNS if c in limits]
    if not columns:
        return conn.execute(text("SELECT * FROM api_keys WHERE id = :id"), {"id": key_id}).mappings().first()
    assignments = ", ".join(f"{c} = :{c}" for c in columns)  # names from LIMIT_COLUMNS only, never from input
    return (
        conn.execute(
            text(f"UPDATE api_keys SET {assignments} WHERE id = :id RETURNING *"),
            {"id": key_id, **{c: limits[c] for c in columns}},
        )
        .mappings()
        .first()
    )


# --- the queued-prompts quota (``batcher._quotas``) ------------------------------------------------

_QUOTA_LOCK_NAMESPACE = "batcher:max_queued_prompts:"


def queued_prompts_quota(conn: Connection, key_id: uuid.UUID) -> int | None:
    """The key's ``max_queued_prompts`` (``None``: no quota, or no such key)."""
    quota: int | None = conn.execute(
        text("SELECT max_queued_prompts FROM api_keys WHERE id = :id"), {"id": key_id}
    ).scalar_one_or_none()
    return quota


def lock_queued_prompts(conn: Connection, key_id: uuid.UUID) -> None:
    """A transaction-scoped advisory lock on the key's quota: two submissions of one key count and insert
    one after the other, so both cannot pass on the same count. Released when the transaction ends."""
    conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
        {"name": _QUOTA_LOCK_NAMESPACE + str(key_id)},
    )


_UNFINISHED = text(
    f"""
    SELECT COALESCE(sum(j.total - {SHARDED_DONE}), 0) AS unfinished,
           COALESCE(sum({SHARDED_DONE} / GREATEST(EXTRACT(EPOCH FROM now() - j.started_at), 1.0))
                    FILTER (WHERE j.started_at IS NOT NULL), 0) AS rate
      FROM jobs AS j {SHARD_SUMS}
     WHERE j.owner_id = :id AND j.state IN ('queued', 'running', 'cancelling')
    """
)
"""A job's counts are its row's plus its counter shards' (``batcher._db.postgres``)."""


def unfinished_prompts(conn: Connection, key_id: uuid.UUID) -> tuple[int, float]:
    """The key's requests not final yet (queued, running, retrying) over its active jobs, from the jobs'
    counters (one row per active job, not one per request), and the rate at which its started jobs have
    been finishing requests (per second, since each started; 0 when none has)."""
    row = conn.execute(_UNFINISHED, {"id": key_id}).one()
    return int(row.unfinished), float(row.rate)


def all_keys(conn: Connection) -> list[RowMapping]:
    """Every key's row, revoked ones included, oldest first."""
    return list(conn.execute(text("SELECT * FROM api_keys ORDER BY created_at")).mappings())


def revoke(conn: Connection, key_id: uuid.UUID) -> bool:
    """Revoke a key, once: False if it is unknown or revoked already."""
    result = conn.execute(
        text("UPDATE api_keys SET revoked_at = now() WHERE id = :id AND revoked_at IS NULL"), {"id": key_id}
    )
    return bool(result.rowcount)


def active_key(conn: Connection, key_hash: str) -> dict[str, Any] | None:
    """The key with this hash, unless revoked: its id, name and permissions."""
    row = (
        conn.execute(
            text(
                "SELECT id, name, is_admin, can_set_api_base FROM api_keys "
                "WHERE key_hash = :hash AND revoked_at IS NULL"
            ),
            {"hash": key_hash},
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None
