"""The pieces of a newcomer's first minutes that need no services: database errors as one line, the
revision this code knows, the no-worker watch, exit statuses, and a worker's missing-key warnings."""

from __future__ import annotations

import logging
import pickle
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from batcher import ConfigurationError, JobKind, JobState, JobStatus, NoWorkerError, ServiceUnavailableError, Settings
from batcher._client import Client, Job
from batcher._db.engine import database_problem, where
from batcher._migrate import alembic_config, known_revisions
from batcher._transport import Consumers
from batcher._waiting import NO_WORKER_GRACE_S
from batcher.cli import EXIT_JOB_DID_NOT_RUN, EXIT_OK, EXIT_REQUESTS_FAILED, outcome_exit_code
from workers._liveness import warn_missing_provider_keys

URL = "postgresql+psycopg://bob:s3cret@db.example:5433/batcher"
AT = "BATCHER_DATABASE_URL (bob@db.example:5433/batcher)"


def driver_error(message: str) -> OperationalError:
    return OperationalError("connect", {}, psycopg.OperationalError(message))


@pytest.mark.parametrize(
    ("driver", "kind", "line"),
    [
        (
            'connection failed: connection to server at "10.0.0.1", port 5433 failed: FATAL:  database "batcher" '
            "does not exist",
            ConfigurationError,
            f"{AT}: database 'batcher' does not exist: run 'batcher db upgrade' to create and migrate it",
        ),
        (
            'connection failed: connection to server at "10.0.0.1", port 5433 failed: FATAL:  role "bob" '
            "does not exist",
            ConfigurationError,
            f"{AT}: role 'bob' does not exist: create it (createuser bob) or put an existing user in the URL",
        ),
        (
            'connection failed: connection to server at "10.0.0.1", port 5433 failed: FATAL:  password '
            'authentication failed for user "bob"',
            ConfigurationError,
            f"{AT}: password authentication failed for user 'bob': put the right password in the URL "
            "(postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE)",
        ),
        (
            'connection failed: connection to server at "10.0.0.1", port 5433 failed: fe_sendauth: no password '
            "supplied",
            ConfigurationError,
            f"{AT}: the server asks for a password and the URL has none: put it in the URL "
            "(postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE)",
        ),
        (
            'connection failed: connection to server at "10.0.0.1", port 5433 failed: Connection refused',
            ServiceUnavailableError,
            f'{AT} does not answer (connection failed: connection to server at "10.0.0.1", port 5433 failed: '
            "Connection refused): start PostgreSQL there or point the variable at a running one",
        ),
    ],
)
def test_a_database_mistake_is_one_line_with_its_fix(driver: str, kind: type[Exception], line: str) -> None:
    problem = database_problem(driver_error(driver), URL)
    assert type(problem) is kind
    assert str(problem) == line
    assert "s3cret" not in str(problem)


def test_where_never_shows_the_password() -> None:
    assert where(URL) == "bob@db.example:5433/batcher"
    assert where("sqlite:///x/batcher.db") == "x/batcher.db"


def test_a_postgres_url_is_rewritten_for_sqlalchemy() -> None:
    assert Settings(database_url="postgres://u:p@h:5432/d").database_url == "postgresql+psycopg://u:p@h:5432/d"


def test_auto_migrate_is_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHER_AUTO_MIGRATE", raising=False)
    assert Settings().auto_migrate is True
    monkeypatch.setenv("BATCHER_AUTO_MIGRATE", "false")
    assert Settings().auto_migrate is False


def test_the_head_read_from_the_files_is_alembics() -> None:
    from alembic.script import ScriptDirectory

    revisions, head = known_revisions()
    scripts = ScriptDirectory.from_config(alembic_config("postgresql+psycopg://x@y/z"))
    assert head == scripts.get_current_head()
    assert revisions == {script.revision for script in scripts.walk_revisions()}


def test_no_worker_error_pickles_and_is_a_service_error() -> None:
    err = NoWorkerError("batcher", job_id="j1")
    assert isinstance(err, ServiceUnavailableError)
    assert str(err) == "no worker is consuming queue 'batcher': start one with 'batcher worker'"
    back = pickle.loads(pickle.dumps(err))  # noqa: S301 (our own bytes)
    assert (type(back), str(back), back.queue, back.job_id) == (NoWorkerError, str(err), "batcher", "j1")


# --- the no-worker watch, on a stub transport and a clock of our own ------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def status(done: int = 0, state: JobState = JobState.QUEUED) -> JobStatus:
    return JobStatus(
        id=uuid.uuid4(),
        kind=JobKind.BATCH,
        state=state,
        total=2,
        succeeded=done,
        failed=0,
        cancelled=0,
        expired=0,
        params={},
        created_at=datetime.now(UTC),
    )


class StubTransport:
    """Answers ``status`` and ``poll`` from a script; ``consumers`` says how many live workers there are."""

    wait_slice_s = 1.0

    def __init__(self, clock: Clock, live: list[int] | None, done: list[int] | None = None) -> None:
        self.clock = clock
        self.live = live
        self.done = done or []
        self.checks = 0

    def status(self, job_id: uuid.UUID) -> JobStatus:
        return status(self.done.pop(0) if self.done else 0)

    def poll(self, job_id: uuid.UUID, timeout_s: float, until: str) -> Any:
        from batcher._transport import Poll

        self.clock.sleep(timeout_s)
        if self.clock.now > 2_000:
            raise AssertionError("waited forever")
        return Poll(self.status(job_id))

    def consumers(self, job_id: uuid.UUID) -> Consumers | None:
        self.checks += 1
        if self.live is None:
            return None
        return Consumers(queue="q", live=self.live.pop(0) if len(self.live) > 1 else self.live[0])


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("batcher._waiting.time.monotonic", clock.monotonic)
    monkeypatch.setattr("batcher._waiting.time.sleep", clock.sleep)
    return clock


def job_on(transport: StubTransport) -> Job:
    client = Client(Settings(), transport=transport)  # type: ignore[arg-type]
    return Job(client, uuid.uuid4(), JobKind.BATCH)


def test_a_wait_with_no_live_worker_raises_after_the_grace(clock: Clock) -> None:
    transport = StubTransport(clock, live=[0])
    started = clock.now
    with pytest.raises(NoWorkerError, match="queue 'q'"):
        job_on(transport).wait()
    assert NO_WORKER_GRACE_S <= clock.now - started <= NO_WORKER_GRACE_S + 2


def test_a_worker_appearing_keeps_the_wait_going(clock: Clock) -> None:
    transport = StubTransport(clock, live=[0, 0, 1])
    with pytest.raises(AssertionError, match="waited forever"):  # the stub's own bound: it never gave up
        job_on(transport).wait()


def test_progress_keeps_the_wait_going(clock: Clock) -> None:
    transport = StubTransport(clock, live=[0], done=list(range(2_000)))
    with pytest.raises(AssertionError, match="waited forever"):
        job_on(transport).wait()


def test_a_transport_that_cannot_tell_is_asked_once(clock: Clock) -> None:
    transport = StubTransport(clock, live=None)
    with pytest.raises(AssertionError, match="waited forever"):
        job_on(transport).wait()
    assert transport.checks == 1


# --- exit statuses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "state", "failed", "code"),
    [
        (JobKind.BATCH, JobState.COMPLETED, 0, EXIT_OK),
        (JobKind.BATCH, JobState.COMPLETED, 1, EXIT_REQUESTS_FAILED),
        (JobKind.ALL, JobState.COMPLETED, 2, EXIT_REQUESTS_FAILED),
        (JobKind.FASTEST, JobState.COMPLETED, 2, EXIT_OK),  # a race with a winner succeeded
        (JobKind.FASTEST, JobState.FAILED, 3, EXIT_REQUESTS_FAILED),
        (JobKind.BATCH, JobState.CANCELLED, 0, EXIT_JOB_DID_NOT_RUN),
        (JobKind.BATCH, JobState.EXPIRED, 0, EXIT_JOB_DID_NOT_RUN),
    ],
)
def test_the_exit_status_follows_the_outcome(kind: JobKind, state: JobState, failed: int, code: int) -> None:
    final = status(state=state).model_copy(update={"kind": kind, "failed": failed})
    assert outcome_exit_code(final) == code


# --- a worker without a provider's key says so at start ----------------------------------------


def test_a_worker_warns_once_per_provider_without_a_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="batcher.liveness"):
        missing = warn_missing_provider_keys({"OPENAI_API_KEY": "sk-x", "CO_API_KEY": "co-x"})
    assert missing == ["anthropic"]
    assert [r.getMessage() for r in caplog.records] == [
        "no API key for anthropic in this worker's environment (set ANTHROPIC_API_KEY): its models "
        "(anthropic/*, claude-*) will fail with AuthenticationError unless their job carries api_key="
    ]
