"""The SQL of the HTTP service's API keys (the ``api_keys`` table). Postgres only, as the service is.

Only a key's SHA-256 is stored (``batcher.api.auth``): a request finds its key with one indexed lookup.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, RowMapping, text


def insert_key(
    conn: Connection, *, name: str, key_hash: str, prefix: str, admin: bool, allow_api_base: bool
) -> RowMapping:
    """Store a new key's hash; returns its row."""
    return (
        conn.execute(
            text(
                "INSERT INTO api_keys (id, name, key_hash, prefix, is_admin, can_set_api_base) "
                "VALUES (:id, :name, :hash, :prefix, :admin, :api_base) RETURNING *"
            ),
            {
                "id": uuid.uuid4(),
                "name": name,
                "hash": key_hash,
                "prefix": prefix,
                "admin": admin,
                "api_base": allow_api_base,
            },
        )
        .mappings()
        .one()
    )


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
