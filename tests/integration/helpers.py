"""Reading what the system stored, straight from Postgres and Redis, for assertions."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text

from batcher import Client


def rows(client: Client, sql: str, **params: Any) -> list[dict[str, Any]]:
    with client.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def count_jobs(client: Client) -> int:
    return int(rows(client, "SELECT count(*) AS n FROM jobs")[0]["n"])


def queue_length(client: Client) -> int:
    s = client.settings
    return int(client.redis.llen(s.queue)) + int(client.redis.llen(s.race_queue))


def requests_of(client: Client, job_id: uuid.UUID) -> list[dict[str, Any]]:
    return rows(client, "SELECT * FROM requests WHERE job_id = :id ORDER BY idx", id=job_id)


def responses_of(client: Client, job_id: uuid.UUID) -> list[dict[str, Any]]:
    return rows(client, "SELECT * FROM responses WHERE job_id = :id ORDER BY idx", id=job_id)
