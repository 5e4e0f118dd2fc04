"""Reading what the system stored, straight from its database and broker, for assertions.

Written with SQLAlchemy Core on the models' tables, so the same assertions read Postgres
(cluster mode) and SQLite (embedded mode) alike.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, func, select, text

from batcher import Client
from batcher._db.models import Job, Request, Response
from batcher.testing import FakeProvider


def rows(client: Client, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Raw SQL, for Postgres-only assertions."""
    with client.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def _all(client: Client, table: Table, job_id: uuid.UUID) -> list[dict[str, Any]]:
    with client.engine.connect() as conn:
        query = select(table).where(table.c.job_id == job_id).order_by(table.c.idx)
        return [dict(r) for r in conn.execute(query).mappings()]


def count_jobs(client: Client) -> int:
    with client.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Job.__table__)).scalar_one())


def job_of(client: Client, job_id: uuid.UUID) -> dict[str, Any]:
    with client.engine.connect() as conn:
        return dict(conn.execute(select(Job.__table__).where(Job.__table__.c.id == job_id)).mappings().one())


def queue_length(client: Client) -> int:
    """Messages waiting in the broker (Redis); embedded mode's in-memory broker reports 0."""
    s = client.settings
    if s.redis_url.startswith("memory:"):
        return 0
    return int(client.redis.llen(s.queue)) + int(client.redis.llen(s.race_queue))


def requests_of(client: Client, job_id: uuid.UUID) -> list[dict[str, Any]]:
    return _all(client, Request.__table__, job_id)  # type: ignore[arg-type]


def responses_of(client: Client, job_id: uuid.UUID) -> list[dict[str, Any]]:
    return _all(client, Response.__table__, job_id)  # type: ignore[arg-type]


def until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy (the event waited for)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def exactly_one_response_each(client: Client, job_id: object, n: int) -> None:
    """Exactly-once storage: the job has ``n`` requests and each has one stored response."""
    per_request = rows(
        client,
        "SELECT r.idx, count(resp.request_id) AS n FROM requests r LEFT JOIN responses resp "
        "ON resp.request_id = r.id WHERE r.job_id = :id GROUP BY r.idx",
        id=job_id,
    )
    assert len(per_request) == n
    assert {row["n"] for row in per_request} == {1}


def sends_per_prompt(fake: FakeProvider, model: str) -> Counter[str]:
    """How many times the provider received each prompt of ``model``."""
    return Counter(r.prompt for r in fake.requests if r.model == model and r.prompt is not None)
