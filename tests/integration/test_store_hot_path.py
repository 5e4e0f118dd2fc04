"""The per-completion statements run straight through psycopg; their failures must look like SQLAlchemy's.

Workers retry ``sqlalchemy.exc.OperationalError`` (a write after a paid call, and the task itself),
so a lost Postgres connection on this path must surface as exactly that, with the broken
connection thrown away rather than handed to the next task.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DataError, OperationalError, ProgrammingError

from batcher._db import postgres

STORE = postgres.PostgresStore()


@pytest.mark.parametrize("how", ["connect", "begin"])  # as tests and as workers (`_write`) open it
def test_a_lost_server_is_an_operational_error_and_the_connection_is_discarded(database_url: str, how: str) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        conn = engine.connect()
        if how == "begin":
            conn.begin()  # as `with ctx.db.begin()` in a worker's `_write`
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        killer = create_engine(database_url)
        with killer.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        killer.dispose()
        with pytest.raises(OperationalError) as caught:
            STORE.claim_request(conn, uuid.uuid4(), 0, timeout_s=60, margin_s=5, worker_id=None)
        assert caught.value.connection_invalidated
        assert conn.invalidated
        if how == "begin":
            conn.rollback()  # what leaving `with engine.begin()` on the exception does
        conn.close()
        # The pool (of one) opened a fresh connection: the same call works (and finds nothing to claim).
        with engine.begin() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
            assert STORE.claim_request(conn, uuid.uuid4(), 0, timeout_s=60, margin_s=5, worker_id=None) is None
    finally:
        engine.dispose()


def test_a_statement_error_is_sqlalchemys_and_leaves_the_connection_usable(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            with pytest.raises(ProgrammingError):
                postgres._hot(conn, "SELECT no_such_column FROM jobs", {})
            assert not conn.invalidated
            conn.rollback()
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_a_group_of_statements_is_one_round_trip_answered_in_order(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            sql = "SELECT %(x)s::int AS x WHERE %(x)s::int > 0"
            rows = postgres._hot_many(conn, [(sql, {"x": 2}), ("SELECT %(y)s::text AS y", {"y": "b"}), (sql, {"x": 0})])
            assert rows == [{"x": 2}, {"y": "b"}, None]
    finally:
        engine.dispose()


def test_a_group_with_a_failing_statement_writes_nothing_and_is_sqlalchemys_error(database_url: str) -> None:
    """The statements of a group commit together: one error, and none of them is written."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0).execution_options(isolation_level="AUTOCOMMIT")
    table = f"t_{uuid.uuid4().hex[:8]}"
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE TABLE {table} (n int)"))
            insert = f"INSERT INTO {table} VALUES (10 / %(d)s::int) RETURNING n"
            with pytest.raises(DataError):
                postgres._hot_many(conn, [(insert, {"d": 1}), (insert, {"d": 0}), (insert, {"d": 2})])
            assert not conn.invalidated
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0
            assert postgres._hot_many(conn, [(insert, {"d": 1}), (insert, {"d": 2})]) == [{"n": 10}, {"n": 5}]
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 2
            conn.execute(text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()


def test_a_group_on_a_lost_server_is_an_operational_error_and_the_connection_is_discarded(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        conn = engine.connect()
        conn.begin()
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        killer = create_engine(database_url)
        with killer.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        killer.dispose()
        with pytest.raises(OperationalError) as caught:
            postgres._hot_many(conn, [("SELECT %(x)s::int AS x", {"x": 1}), ("SELECT %(x)s::int AS x", {"x": 2})])
        assert caught.value.connection_invalidated and conn.invalidated
        conn.rollback()
        conn.close()
        with engine.begin() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
            assert postgres._hot_many(
                conn, [("SELECT %(x)s::int AS x", {"x": 1}), ("SELECT %(x)s::int AS x", {"x": 2})]
            ) == [{"x": 1}, {"x": 2}]
    finally:
        engine.dispose()
