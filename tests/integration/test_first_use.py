"""The first minutes of a new user (issue #14): a database is migrated on first use or named in one line,
every database mistake is one line with its fix and an exit status, and a wait that no worker will ever
serve says so instead of blocking.

CLI commands run as a user runs them (a subprocess); the Python API is called in this process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from batcher import AsyncClient, Client, ConfigurationError, JobState, NoWorkerError, Settings
from batcher._migrate import MIGRATION_LOCK_ID, known_revisions, upgrade
from batcher.cli import EXIT_ERROR, EXIT_JOB_DID_NOT_RUN, EXIT_OK, EXIT_REQUESTS_FAILED, EXIT_WAIT_TIMEOUT
from batcher.testing import FakeProvider, ModelBehaviour
from batcher.testing.servers import PostgresServer
from tests.conftest import PG_ADMIN_URL

HEAD = known_revisions()[1]
PG_BASE = PG_ADMIN_URL.rsplit("/", 1)[0]  # postgresql+psycopg://postgres@127.0.0.1:5432
AT = "postgres@127.0.0.1:5432"


def batcher(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", *args], env=env, capture_output=True, text=True, timeout=120, input=stdin
    )


def only_line(result: subprocess.CompletedProcess[str]) -> str:
    """stderr must be exactly one line (no traceback, no log noise): return it."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def admin(sql: str) -> None:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


@pytest.fixture
def db_name() -> Iterator[str]:
    """A database name nobody uses (the database is not created here); dropped at the end if it exists."""
    name = f"batcher_first_{uuid.uuid4().hex[:8]}"
    yield name
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def revision_of(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def status_env(cluster_env: dict[str, str], **overrides: str) -> dict[str, str]:
    return {**cluster_env, **overrides}


NO_JOB = "00000000-0000-0000-0000-000000000000"


# --- the database, on first use -------------------------------------------------------------------


def test_first_use_creates_and_migrates_a_missing_database(cluster_env: dict[str, str], db_name: str) -> None:
    url = f"{PG_BASE}/{db_name}"
    result = batcher(status_env(cluster_env, BATCHER_DATABASE_URL=url), "status", NO_JOB)
    assert result.returncode == EXIT_ERROR
    said = [line.split("batcher.migrate: ", 1)[-1] for line in result.stderr.splitlines()]
    assert said == [  # one line about the migration (INFO, where logging shows it), none per revision
        f"created database {AT}/{db_name} and migrated it to {HEAD} (first use; BATCHER_AUTO_MIGRATE=false "
        "leaves it to 'batcher db upgrade')",
        f"error: no job {NO_JOB}",
    ], result.stderr
    assert revision_of(url) == HEAD


def test_keys_create_on_a_new_deployment_migrates_first(cluster_env: dict[str, str], db_name: str) -> None:
    """The HTTP service's first step (a key) works on a database nobody migrated yet."""
    url = f"{PG_BASE}/{db_name}"
    result = batcher(status_env(cluster_env, BATCHER_DATABASE_URL=url), "keys", "create", "--name", "first")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bk-")  # the key, shown once
    assert revision_of(url) == HEAD


def test_first_use_migrates_an_empty_database_from_the_python_api(cluster_env: dict[str, str], db_name: str) -> None:
    admin(f'CREATE DATABASE "{db_name}"')
    url = f"{PG_BASE}/{db_name}"
    with Client(Settings(database_url=url, redis_url=cluster_env["BATCHER_REDIS_URL"])):
        pass
    assert revision_of(url) == HEAD


def test_concurrent_first_uses_migrate_once_without_racing(db_name: str) -> None:
    """Three upgrades at once on a database that does not exist: one creates it, the advisory lock
    lines the migrations up, and none of them fails."""
    url = f"{PG_BASE}/{db_name}"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(Settings(database_url=url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert revision_of(url) == HEAD
    assert MIGRATION_LOCK_ID != 0x6261746368657221  # not the leader's lock


# --- database mistakes: one line with the fix, exit status 2 ----------------------------------------


def test_missing_database_without_auto_migrate(cluster_env: dict[str, str], db_name: str) -> None:
    line = (
        f"BATCHER_DATABASE_URL ({AT}/{db_name}): database '{db_name}' does not exist: "
        "run 'batcher db upgrade' to create and migrate it"
    )
    env = status_env(cluster_env, BATCHER_DATABASE_URL=f"{PG_BASE}/{db_name}", BATCHER_AUTO_MIGRATE="false")
    result = batcher(env, "status", NO_JOB)
    assert (result.returncode, only_line(result)) == (EXIT_ERROR, f"error: {line}")

    settings = Settings(database_url=f"{PG_BASE}/{db_name}", redis_url=cluster_env["BATCHER_REDIS_URL"])
    with pytest.raises(ConfigurationError) as raised:
        Client(settings.model_copy(update={"auto_migrate": False}))
    assert str(raised.value) == line
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no chained traceback

    upgraded = batcher(env, "db", "upgrade")  # the fix the line names
    assert upgraded.returncode == EXIT_OK, upgraded.stderr
    assert batcher(env, "status", NO_JOB).stderr.strip() == f"error: no job {NO_JOB}"


def test_unmigrated_and_outdated_schema_without_auto_migrate(cluster_env: dict[str, str], db_name: str) -> None:
    admin(f'CREATE DATABASE "{db_name}"')
    url = f"{PG_BASE}/{db_name}"
    env = status_env(cluster_env, BATCHER_DATABASE_URL=url, BATCHER_AUTO_MIGRATE="0")
    result = batcher(env, "status", NO_JOB)
    assert (result.returncode, only_line(result)) == (
        EXIT_ERROR,
        f"error: BATCHER_DATABASE_URL ({AT}/{db_name}): the database is at revision none, batcher needs {HEAD}: "
        "run 'batcher db upgrade'",
    )
    upgrade(Settings(database_url=url), "0001")
    result = batcher(env, "status", NO_JOB)
    assert only_line(result).endswith(
        f"the database is at revision 0001, batcher needs {HEAD}: run 'batcher db upgrade'"
    )
    # With auto-migration (the default) the same first use brings it to head.
    assert batcher(status_env(cluster_env, BATCHER_DATABASE_URL=url), "status", NO_JOB).returncode == EXIT_ERROR
    assert revision_of(url) == HEAD


def test_a_schema_newer_than_the_code(cluster_env: dict[str, str], db_name: str) -> None:
    url = f"{PG_BASE}/{db_name}"
    upgrade(Settings(database_url=url))
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    result = batcher(status_env(cluster_env, BATCHER_DATABASE_URL=url), "status", NO_JOB)
    assert (result.returncode, only_line(result)) == (
        EXIT_ERROR,
        f"error: BATCHER_DATABASE_URL ({AT}/{db_name}): the database is at revision 9999, which this batcher "
        f"does not know (its newest is {HEAD}): a newer batcher migrated it; run that version here too",
    )


def test_unknown_role(cluster_env: dict[str, str]) -> None:
    url = "postgresql+psycopg://nobody_here@127.0.0.1:5432/batcher"
    result = batcher(status_env(cluster_env, BATCHER_DATABASE_URL=url), "status", NO_JOB)
    assert (result.returncode, only_line(result)) == (
        EXIT_ERROR,
        "error: BATCHER_DATABASE_URL (nobody_here@127.0.0.1:5432/batcher): role 'nobody_here' does not exist: "
        "create it (createuser nobody_here) or put an existing user in the URL",
    )


@pytest.fixture
def limited_role() -> Iterator[str]:
    """A role that may log in but may create neither databases nor tables in a database it does not own."""
    role = f"batcher_limited_{uuid.uuid4().hex[:6]}"
    admin(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    yield role
    admin(f'DROP ROLE IF EXISTS "{role}"')


def test_a_role_that_may_not_create_or_migrate(cluster_env: dict[str, str], db_name: str, limited_role: str) -> None:
    url = f"postgresql+psycopg://{limited_role}@127.0.0.1:5432/{db_name}"
    result = batcher(status_env(cluster_env, BATCHER_DATABASE_URL=url), "status", NO_JOB)
    assert (result.returncode, only_line(result)) == (
        EXIT_ERROR,
        f"error: BATCHER_DATABASE_URL ({limited_role}@127.0.0.1:5432/{db_name}): database '{db_name}' does not "
        f"exist and role '{limited_role}' may not create it: create it as a superuser (createdb -O {limited_role} "
        f"{db_name}), then run 'batcher db upgrade'",
    )
    admin(f'CREATE DATABASE "{db_name}"')  # owned by postgres: on PostgreSQL 15+ others may not create tables
    result = batcher(status_env(cluster_env, BATCHER_DATABASE_URL=url), "status", NO_JOB)
    line = only_line(result)
    assert result.returncode == EXIT_ERROR
    assert line.startswith(
        f"error: BATCHER_DATABASE_URL ({limited_role}@127.0.0.1:5432/{db_name}): role '{limited_role}' may not "
        "migrate the database (permission denied for schema public"
    ), line
    assert line.endswith("): run 'batcher db upgrade' as its owner")


def test_a_postgres_url_is_taken_as_sqlalchemys(cluster_env: dict[str, str]) -> None:
    """``postgres://`` (Heroku's, libpq's spelling) works as ``postgresql+psycopg://``."""
    url = cluster_env["BATCHER_DATABASE_URL"].replace("postgresql+psycopg://", "postgres://")
    assert Settings(database_url=url).database_url == cluster_env["BATCHER_DATABASE_URL"]
    result = batcher(status_env(cluster_env, BATCHER_DATABASE_URL=url), "status", NO_JOB)
    assert (result.returncode, only_line(result)) == (EXIT_ERROR, f"error: no job {NO_JOB}")


def test_an_unreachable_database(cluster_env: dict[str, str]) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/batcher"
    result = batcher(status_env(cluster_env, BATCHER_DATABASE_URL=url), "status", NO_JOB)
    assert (result.returncode, only_line(result)) == (
        EXIT_ERROR,
        "error: BATCHER_DATABASE_URL (127.0.0.1:1) does not answer: start PostgreSQL there, point the variable at "
        "a running one, or unset BATCHER_REDIS_URL and BATCHER_DATABASE_URL to run embedded",
    )


def test_a_wrong_or_missing_password(cluster_env: dict[str, str]) -> None:
    """A server of its own that asks ``bob`` for a password (this machine's trusts everyone)."""
    server = PostgresServer()
    server.init()
    hba = server.datadir / "pg_hba.conf"
    hba.write_text("host all bob 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    server.start()
    try:
        engine = create_engine(server.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE ROLE bob LOGIN PASSWORD 'right'"))
        engine.dispose()
        at = f"bob@127.0.0.1:{server.port}/batcher"
        wrong = batcher(
            status_env(
                cluster_env, BATCHER_DATABASE_URL=f"postgresql+psycopg://bob:wrong@127.0.0.1:{server.port}/batcher"
            ),
            "status",
            NO_JOB,
        )
        assert (wrong.returncode, only_line(wrong)) == (
            EXIT_ERROR,
            f"error: BATCHER_DATABASE_URL ({at}): password authentication failed for user 'bob': put the right "
            "password in the URL (postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE)",
        )
        assert ":wrong@" not in wrong.stderr  # the password is never repeated
        missing = batcher(
            status_env(cluster_env, BATCHER_DATABASE_URL=f"postgresql+psycopg://bob@127.0.0.1:{server.port}/batcher"),
            "status",
            NO_JOB,
        )
        assert (missing.returncode, only_line(missing)) == (
            EXIT_ERROR,
            f"error: BATCHER_DATABASE_URL ({at}): the server asks for a password and the URL has none: put it in "
            "the URL (postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE)",
        )
    finally:
        server.stop("immediate")
        shutil.rmtree(server.workdir, ignore_errors=True)


# --- no worker ------------------------------------------------------------------------------------


@pytest.fixture
def lonely_env(cluster_env: dict[str, str]) -> dict[str, str]:
    """The session's cluster, with queues no worker consumes."""
    tag = uuid.uuid4().hex[:8]
    return {**cluster_env, "BATCHER_QUEUE": f"lonely-{tag}", "BATCHER_RACE_QUEUE": f"lonely-{tag}.race"}


@pytest.fixture
def lonely_client(lonely_env: dict[str, str]) -> Iterator[Client]:
    settings = Settings(queue=lonely_env["BATCHER_QUEUE"], race_queue=lonely_env["BATCHER_RACE_QUEUE"])
    with Client(settings) as client:
        yield client
        client.redis.delete(settings.queue, settings.race_queue)


def test_wait_with_no_worker_raises_one_line(lonely_client: Client, worker: object) -> None:
    queue = lonely_client.settings.queue
    job = lonely_client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "anyone?"}]])
    with pytest.raises(NoWorkerError) as raised:
        job.wait()
    assert str(raised.value) == f"no worker is consuming queue {queue!r}: start one with 'batcher worker'"
    assert raised.value.job_id == str(job.id) and raised.value.queue == queue
    assert job.status().state is JobState.QUEUED  # stored: it runs once a worker consumes the queue

    race = lonely_client.submit_fastest(
        models=["gpt-4o-mini", "claude-3-haiku"], messages=[{"role": "user", "content": "x"}]
    )
    with pytest.raises(NoWorkerError, match=f"queue '{lonely_client.settings.race_queue}'"):
        race.first_response()


def test_an_async_wait_with_no_worker_raises_the_same_line(lonely_client: Client, worker: object) -> None:
    queue = lonely_client.settings.queue

    async def scenario() -> None:
        async with AsyncClient(lonely_client.settings) as client:
            job = await client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "anyone?"}]])
            with pytest.raises(NoWorkerError) as raised:
                await job.wait()
            assert str(raised.value) == f"no worker is consuming queue {queue!r}: start one with 'batcher worker'"
            assert (await job.status()).state is JobState.QUEUED

    asyncio.run(scenario())


def test_cli_wait_with_no_worker_exits_3(lonely_env: dict[str, str], lonely_client: Client, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps("hello") + "\n")
    queue = lonely_env["BATCHER_QUEUE"]
    line = f"error: no worker is consuming queue {queue!r}: start one with 'batcher worker'"

    submitted = batcher(lonely_env, "submit", str(prompts), "--model", "gpt-4o-mini", "--wait")
    assert submitted.returncode == EXIT_JOB_DID_NOT_RUN
    assert submitted.stderr.splitlines()[-1] == line and "Traceback" not in submitted.stderr
    job_id = submitted.stdout.splitlines()[0]

    waited = batcher(lonely_env, "wait", job_id)
    assert waited.returncode == EXIT_JOB_DID_NOT_RUN
    assert waited.stderr.splitlines()[-1] == line and "Traceback" not in waited.stderr

    timed_out = batcher(lonely_env, "wait", job_id, "--timeout", "0.5")  # before the no-worker grace
    assert timed_out.returncode == EXIT_WAIT_TIMEOUT, timed_out.stderr
    assert timed_out.stderr.splitlines()[-1].startswith(f"error: job {job_id} is still queued after 0.5 s")

    lonely_client.job(job_id).cancel()
    cancelled = batcher(lonely_env, "wait", job_id)
    assert cancelled.returncode == EXIT_JOB_DID_NOT_RUN, cancelled.stderr
    assert " cancelled " in cancelled.stdout


def test_cli_exit_status_follows_the_outcome(
    client: Client, cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    fake_provider.set_behaviour("gpt-first-use-400", ModelBehaviour(fail_always_status=400))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps({"messages": [{"role": "user", "content": "fine"}], "model": "gpt-4o-mini"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "refused"}], "model": "gpt-first-use-400"})
        + "\n"
    )
    some_failed = batcher(cluster_env, "submit", str(prompts), "--wait")
    assert some_failed.returncode == EXIT_REQUESTS_FAILED, some_failed.stderr
    assert "1 succeeded, 1 failed" in some_failed.stdout
    waited = batcher(cluster_env, "wait", some_failed.stdout.splitlines()[0])
    assert waited.returncode == EXIT_REQUESTS_FAILED

    prompts.write_text(json.dumps("all good") + "\n")
    fine = batcher(cluster_env, "submit", str(prompts), "--model", "gpt-4o-mini", "--wait")
    assert fine.returncode == EXIT_OK, fine.stderr

    helped = batcher(cluster_env, "--help")
    assert "Exit status of wait and submit --wait:" in helped.stdout
