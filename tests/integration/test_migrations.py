"""The schema exists only through Alembic: upgrade on an empty database, downgrade, upgrade again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text

from batcher._config import Settings
from batcher._db.models import Base
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
