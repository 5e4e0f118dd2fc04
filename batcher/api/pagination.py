"""Keyset pagination over ``(created_at, id)``, newest first, with OpenAI's ``after=<last id>`` cursor.

The cursor is an object id, as the ``openai`` SDK sends it; an offset would skip or repeat
rows while new ones are created, and a server that ignored ``after`` would make the SDK's
auto-paging loop forever.

The listings' SQL (over ``jobs``, ``files`` and ``batches``, what each key may see) lives here;
Postgres only, as the HTTP service is.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import Connection, text

from batcher._db.postgres import SHARD_COLUMNS, SHARD_SUMS, fold_shards
from batcher.api.auth import Principal
from batcher.api.errors import ApiError


def page(
    conn: Connection,
    table: Literal["jobs", "files", "batches"],
    principal: Principal,
    *,
    after: Any | None,
    limit: int,
    order: Literal["asc", "desc"] = "desc",
    where: str = "TRUE",
    params: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` rows visible to ``principal`` after the row ``after``; and whether more follow."""
    owner_sql, bind = _owner_filter(principal)
    bind = {**bind, **(params or {}), "limit": limit + 1}
    conditions = [owner_sql, where]
    if after is not None:
        if isinstance(after, str) and "\x00" in after:  # Postgres cannot even compare it: it names nothing
            raise ApiError(400, f"'after' names no object of yours: {after!r}.", param="after", code="invalid_cursor")
        cursor = conn.execute(
            text(f"SELECT created_at, id FROM {table} WHERE id = :after_id AND {owner_sql}"),
            {**bind, "after_id": after},
        ).first()
        if cursor is None:
            raise ApiError(400, f"'after' names no object of yours: '{after}'.", param="after", code="invalid_cursor")
        conditions.append(f"(created_at, id) {'<' if order == 'desc' else '>'} (:after_at, :after_id)")
        bind.update(after_at=cursor.created_at, after_id=cursor.id)
    direction = "DESC" if order == "desc" else "ASC"
    # A job's counts are its row's plus its counter shards' (``batcher._db.postgres``).
    columns, source = ("j.*, " + SHARD_COLUMNS, f"jobs AS j {SHARD_SUMS}") if table == "jobs" else ("*", table)
    rows = (
        conn.execute(
            text(
                f"SELECT {columns} FROM {source} WHERE {' AND '.join(conditions)} "
                f"ORDER BY created_at {direction}, id {direction} LIMIT :limit"
            ),
            bind,
        )
        .mappings()
        .all()
    )
    found = [dict(r) for r in rows[:limit]]
    return [fold_shards(r) for r in found] if table == "jobs" else found, len(rows) > limit


def _owner_filter(principal: Principal) -> tuple[str, dict[str, Any]]:
    """A SQL condition limiting rows to the key's own (admins see everything)."""
    if principal.is_admin:
        return "TRUE", {}
    return "owner_id = :owner_id", {"owner_id": principal.id}
