"""The schema exists only through Alembic: upgrade on an empty database, downgrade, upgrade again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text

from batcher._config import Settings
from batcher._db.contract import store_for
from batcher._db.models import Base
from batcher._db.rows import Answer
from batcher._migrate import downgrade, upgrade
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    name = f"batcher_migr_{uuid.uuid4().hex[:8]}"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_upgrade_creates_database_and_schema_then_downgrade_removes_it(empty_database_url: str) -> None:
    settings = Settings(database_url=empty_database_url)
    upgrade(settings)  # the database does not exist yet: `batcher db upgrade` creates it
    engine = create_engine(empty_database_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"jobs", "requests", "responses", "alembic_version"} <= tables
        # The migrations produce exactly the tables and columns the models declare.
        for table in Base.metadata.sorted_tables:
            migrated = {c["name"] for c in inspect(engine).get_columns(table.name)}
            assert migrated == {c.name for c in table.columns}, table.name
        downgrade(settings, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade(settings)
        assert "requests" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_job_active_during_the_counter_shards_upgrade_keeps_its_counts_and_completes_once(
    empty_database_url: str,
) -> None:
    """Migration 0009 gives a job in flight one counter shard per slice with open requests: what it counted
    before stays on its ``jobs`` row, its last store still reports completion, and finalizing folds it all."""
    settings = Settings(database_url=empty_database_url)
    upgrade(settings, "0008")
    engine = create_engine(empty_database_url)
    job_id = uuid.uuid4()
    n = 20  # requests 0-9 answered before the upgrade (counted on the row), 10-19 still open
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, kind, state, total, succeeded, params) "
                    "VALUES (:id, 'batch', 'running', :n, 10, '{\"params\": {}}')"
                ),
                {"id": job_id, "n": n},
            )
            for idx in range(n):
                conn.execute(
                    text(
                        "INSERT INTO requests (job_id, idx, model, provider, messages, state, attempts, dispatched_at) "
                        "VALUES (:id, :idx, 'm', 'openai', '[]', :state, 1, now())"
                    ),
                    {"id": job_id, "idx": idx, "state": "succeeded" if idx < 10 else "queued"},
                )
        upgrade(settings)
        store = store_for(engine)
        with engine.connect() as conn:
            row = store.job_row(conn, job_id)
            open_shards = conn.execute(text("SELECT open_shards FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
        assert row is not None and (row["total"], row["succeeded"]) == (n, 10)
        assert open_shards == 10  # indices 10-19: one per shard 10-15 and 0-3
        completes = []
        for idx in range(10, n):
            with engine.begin() as conn:
                claimed = store.claim_request(conn, job_id, idx, timeout_s=60, margin_s=5, worker_id="w")
            assert claimed is not None
            with engine.begin() as conn:
                progress = store.record_success(conn, claimed, Answer({"i": idx}, "openai", "m", None, 1.0))
            assert progress is not None
            completes.append(progress.complete)
        assert completes == [False] * 9 + [True]
        with engine.begin() as conn:
            assert store.finalize_job(conn, job_id) == "completed"
            folded = conn.execute(text("SELECT succeeded, open_shards FROM jobs WHERE id = :id"), {"id": job_id}).one()
            shards = conn.execute(text("SELECT count(*) FROM job_counters WHERE job_id = :id"), {"id": job_id})
            assert tuple(folded) == (n, 0) and shards.scalar() == 0
    finally:
        engine.dispose()
