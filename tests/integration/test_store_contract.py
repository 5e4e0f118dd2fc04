"""The job store's contract (``batcher._db.contract.JobStore``), run against both of its peers:
``PostgresStore`` (a cluster) and ``SqliteStore`` (embedded mode), each on a database migrated by
``batcher._migrate.upgrade``.

Each test pins one promise of the contract's documentation: the state a statement guards on, that
running it twice changes nothing, how counters move, that a response is stored once, that writes of
an attempt are fenced by its number, and which final state a job gets.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, delete, insert, make_url, select, text, update

from batcher._config import Settings
from batcher._db.contract import FINAL_STATE_COUNTER, JobStore, store_for
from batcher._db.engine import _sqlite_engine
from batcher._db.models import ApiKey, Job, JobCounter, Request, Response
from batcher._db.postgres import PostgresStore
from batcher._db.rows import Answer, Claim, ClaimedRequest, Failure, NewJob, NewRequest, Progress
from batcher._db.sqlite import SqliteStore
from batcher._exceptions import ConfigurationError
from batcher._migrate import upgrade
from batcher._states import RequestState
from tests.conftest import PG_ADMIN_URL

J = Job.__table__.c
R = Request.__table__.c
RESP = Response.__table__.c
MESSAGES = [{"role": "user", "content": "hi"}]
BOOM = Failure("ProviderError", "boom", 500, error_body={"message": "boom", "code": "engine_down", "param": None})
TIMEOUT_S, MARGIN_S = 600.0, 30.0


@pytest.fixture(scope="module")
def contract_database_url() -> Iterator[str]:
    """A Postgres database of this module's own (created, migrated, dropped): the session's database has a
    live worker leading it, whose dispatcher may release a backlog these tests set up and then read."""
    name = f"batcher_contract_{uuid.uuid4().hex[:8]}"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(Settings(database_url=url))
    yield url
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if request.param == "postgres":
        eng = create_engine(request.getfixturevalue("contract_database_url"))
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'contract.db'}"
        upgrade(Settings(database_url=url))
        eng = _sqlite_engine(make_url(url), Settings(database_url=url))  # WAL + BEGIN IMMEDIATE, as embedded mode
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def store(engine: Engine) -> JobStore:
    return store_for(engine)


# --- helpers ------------------------------------------------------------------------------------


def _job(
    engine: Engine,
    store: JobStore,
    n: int,
    *,
    kind: str = "batch",
    params: dict[str, Any] | None = None,
    deadline_at: datetime | None = None,
) -> uuid.UUID:
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        assert store.insert_job(
            conn,
            NewJob(id=job_id, kind=kind, params={"params": {}, **(params or {})}, deadline_at=deadline_at, queue="q"),
        )
        total = store.copy_requests(
            conn,
            job_id,
            (NewRequest(idx=i, model=f"m{i}", provider="openai", messages=MESSAGES) for i in range(n)),
        )
        store.set_total(conn, job_id, total)
    return job_id


def _claim(engine: Engine, store: JobStore, job_id: uuid.UUID, idx: int, worker: str = "w") -> ClaimedRequest | None:
    with engine.begin() as conn:
        return store.claim_request(conn, job_id, idx, timeout_s=TIMEOUT_S, margin_s=MARGIN_S, worker_id=worker)


def _claimed(engine: Engine, store: JobStore, job_id: uuid.UUID, idx: int, worker: str = "w") -> ClaimedRequest:
    claimed = _claim(engine, store, job_id, idx, worker)
    assert claimed is not None
    return claimed


def _succeed(engine: Engine, store: JobStore, claimed: ClaimedRequest, body: dict[str, Any]) -> Progress | None:
    with engine.begin() as conn:
        usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        return store.record_success(conn, claimed, Answer(body, claimed.provider, claimed.model, usage, 12.5))


def _end(
    engine: Engine, store: JobStore, claimed: ClaimedRequest, state: RequestState, *, attempt: int | None = None
) -> Progress | None:
    with engine.begin() as conn:
        attempt = claimed.attempts if attempt is None else attempt
        return store.record_end(conn, claimed.request_id, state, attempt=attempt, failure=BOOM)


def _request(engine: Engine, job_id: uuid.UUID, idx: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(Request.__table__).where(R.job_id == job_id, R.idx == idx)).mappings().one()
    return dict(row)


def _states(engine: Engine, job_id: uuid.UUID) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(R.state).where(R.job_id == job_id).order_by(R.idx)).scalars())


def _responses(engine: Engine, job_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(Response.__table__).where(RESP.job_id == job_id)).mappings()]


def _api_key(engine: Engine) -> uuid.UUID:
    """An owner (jobs reference the API key that created them)."""
    key_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            insert(ApiKey).values(
                id=key_id, name="t", key_hash=key_id.hex + key_id.hex, prefix="bk-t", created_at=datetime.now(UTC)
            )
        )
    return key_id


def _job_row(engine: Engine, store: JobStore, job_id: uuid.UUID) -> dict[str, Any]:
    with engine.connect() as conn:
        row = store.job_row(conn, job_id)
    assert row is not None
    return row


def _counters(engine: Engine, store: JobStore, job_id: uuid.UUID) -> tuple[int, int, int, int, int]:
    row = _job_row(engine, store, job_id)
    return row["total"], row["succeeded"], row["failed"], row["cancelled"], row["expired"]


def _finalize(engine: Engine, store: JobStore, job_id: uuid.UUID) -> str | None:
    with engine.begin() as conn:
        return store.finalize_job(conn, job_id)


# --- choosing the store -------------------------------------------------------------------------


def test_the_store_is_chosen_once_per_database(engine: Engine, store: JobStore) -> None:
    expected = PostgresStore if engine.dialect.name == "postgresql" else SqliteStore
    assert type(store) is expected and store.dialect == engine.dialect.name
    assert store.cluster is (expected is PostgresStore)
    with engine.connect() as conn:
        assert store_for(conn) is store  # a connection and its engine share it; built once


def test_an_unknown_database_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        store_for(SimpleNamespace(dialect=SimpleNamespace(name="mysql")))  # type: ignore[arg-type]


def test_the_contract_is_the_whole_surface_of_both_peers() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    # Nothing callers could reach on one peer only: every statement is the contract's.
    assert public(PostgresStore) == public(SqliteStore) == public(JobStore) | {"dialect", "cluster"}
    assert JobStore.__abstractmethods__ and not PostgresStore.__abstractmethods__ | SqliteStore.__abstractmethods__


# --- submission ---------------------------------------------------------------------------------


def test_a_new_job_is_queued_with_zero_counters_and_aware_timestamps(engine: Engine, store: JobStore) -> None:
    deadline = datetime.now(UTC) + timedelta(hours=1)
    job_id = _job(engine, store, 3, params={"timeout_s": 5}, deadline_at=deadline)
    row = _job_row(engine, store, job_id)
    assert (row["state"], row["kind"], row["queue"], row["winner_index"]) == ("queued", "batch", "q", None)
    assert _counters(engine, store, job_id) == (3, 0, 0, 0, 0)
    assert row["params"] == {"params": {}, "timeout_s": 5}
    assert row["created_at"].tzinfo is not None and row["enqueued_at"] is None
    assert abs((row["deadline_at"] - deadline).total_seconds()) < 1
    assert _states(engine, job_id) == ["queued"] * 3
    with engine.connect() as conn:
        assert store.job_row(conn, uuid.uuid4()) is None


def test_a_job_s_priority_is_stored_and_its_backlog_counts_queued_unreleased_requests(
    engine: Engine, store: JobStore
) -> None:
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        assert store.insert_job(conn, NewJob(id=job_id, kind="batch", params={"params": {}}, priority=8))
        store.copy_requests(
            conn, job_id, (NewRequest(idx=i, model="m", provider="openai", messages=MESSAGES) for i in range(4))
        )
        store.set_total(conn, job_id, 4)
    assert _job_row(engine, store, job_id)["priority"] == 8
    assert _job_row(engine, store, _job(engine, store, 1))["priority"] == 5  # the default
    with engine.connect() as conn:
        assert store.backlog(conn, job_id) == 4
    with engine.begin() as conn:  # one released to the broker (the dispatcher's stamp), one running
        conn.execute(
            update(Request).where(Request.job_id == job_id, Request.idx == 0).values(dispatched_at=datetime.now(UTC))
        )
    _claimed(engine, store, job_id, 1)
    with engine.connect() as conn:
        assert store.backlog(conn, job_id) == 2
        assert store.backlog(conn, uuid.uuid4()) == 0


def test_an_idempotency_key_names_one_job_per_owner(engine: Engine, store: JobStore) -> None:
    owner, other, key = _api_key(engine), _api_key(engine), f"key-{uuid.uuid4().hex[:8]}"
    first, second, other_owner = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    def insert(job_id: uuid.UUID, owner_id: uuid.UUID, fingerprint: str) -> bool:
        with engine.begin() as conn:
            job = NewJob(
                id=job_id,
                kind="batch",
                params={"params": {}},
                owner_id=owner_id,
                idempotency_key=key,
                idempotency_fingerprint=fingerprint,
            )
            return store.insert_job(conn, job)

    assert insert(first, owner, "fp-1")
    assert not insert(second, owner, "fp-2")  # nothing inserted: the retry finds the first job
    assert insert(other_owner, other, "fp-3")  # keys are per owner
    with engine.connect() as conn:
        assert store.job_row(conn, second) is None
        assert store.job_by_idempotency_key(conn, owner, key) == (first, "fp-1")
        assert store.job_by_idempotency_key(conn, owner, "no-such-key") is None


def test_requests_are_stored_queued_in_order_and_a_failing_stream_stores_nothing(
    engine: Engine, store: JobStore
) -> None:
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        store.insert_job(conn, NewJob(id=job_id, kind="batch", params={"params": {}}))
        requests = [
            NewRequest(idx=0, model="a", provider="openai", messages=MESSAGES, params={"temperature": 0.5}),
            NewRequest(
                idx=1,
                model="b",
                provider="anthropic",
                messages=MESSAGES,
                custom_id="c-1",
                messages_json=json.dumps(MESSAGES),
            ),
        ]
        assert store.copy_requests(conn, job_id, iter(requests)) == 2
    rows = [_request(engine, job_id, i) for i in (0, 1)]
    assert [(r["model"], r["provider"], r["custom_id"], r["state"], r["attempts"]) for r in rows] == [
        ("a", "openai", None, "queued", 0),
        ("b", "anthropic", "c-1", "queued", 0),
    ]
    assert rows[0]["params"] == {"temperature": 0.5} and rows[1]["params"] is None
    assert rows[0]["messages"] == rows[1]["messages"] == MESSAGES

    class BadRequestError(Exception):
        pass

    def stream() -> Iterator[NewRequest]:
        yield NewRequest(idx=0, model="a", provider="openai", messages=MESSAGES)
        raise BadRequestError

    rejected = uuid.uuid4()

    def submit() -> None:
        with engine.begin() as conn:
            store.insert_job(conn, NewJob(id=rejected, kind="batch", params={"params": {}}))
            store.copy_requests(conn, rejected, stream())

    with pytest.raises(BadRequestError):
        submit()
    with engine.connect() as conn:
        assert store.job_row(conn, rejected) is None
    assert _states(engine, rejected) == []


def test_marking_enqueued_stamps_the_job(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 1)
    with engine.begin() as conn:
        store.mark_enqueued(conn, job_id)
    stamped = _job_row(engine, store, job_id)["enqueued_at"]
    assert stamped is not None and stamped.tzinfo is not None
    assert abs((datetime.now(UTC) - stamped).total_seconds()) < 60


# --- claims -------------------------------------------------------------------------------------


def test_a_claim_takes_a_queued_request_once_and_starts_its_job(engine: Engine, store: JobStore) -> None:
    deadline = datetime.now(UTC) + timedelta(hours=1)
    job_id = _job(engine, store, 2, params={"timeout_s": 20, "max_attempts": 3}, deadline_at=deadline)
    claimed = _claimed(engine, store, job_id, 1, "w1")
    assert (claimed.job_id, claimed.idx, claimed.kind, claimed.model, claimed.provider) == (
        job_id,
        1,
        "batch",
        "m1",
        "openai",
    )
    assert (claimed.messages, claimed.request_params, claimed.credentials, claimed.queue) == (MESSAGES, None, None, "q")
    assert claimed.job_params == {"params": {}, "timeout_s": 20, "max_attempts": 3}
    assert claimed.attempts == 1
    assert claimed.deadline_at is not None and abs((claimed.deadline_at - deadline).total_seconds()) < 1
    row = _request(engine, job_id, 1)
    assert (row["state"], row["attempts"], row["worker_id"], row["next_attempt_at"]) == ("running", 1, "w1", None)
    # The lease is the job's own timeout plus the margin.
    assert abs((row["lease_until"] - row["started_at"]).total_seconds() - (20 + MARGIN_S)) < 2
    job = _job_row(engine, store, job_id)
    assert job["state"] == "running" and job["started_at"] is not None
    # Running under a live lease held by another worker: not ours.
    assert _claim(engine, store, job_id, 1, "w2") is None
    assert _request(engine, job_id, 1)["attempts"] == 1
    # No such request.
    assert _claim(engine, store, job_id, 7, "w1") is None
    assert _claim(engine, store, uuid.uuid4(), 0, "w1") is None


def test_the_holder_may_claim_again_and_an_expired_lease_is_anyones(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 1, params={"timeout_s": 0.001})
    first = _claimed(engine, store, job_id, 0, "w1")
    with engine.begin() as conn:  # its first claim's reply was lost with the connection; this lease ends at once
        again = store.claim_request(conn, job_id, 0, timeout_s=TIMEOUT_S, margin_s=-1.0, worker_id="w1")
    assert again is not None and (first.attempts, again.attempts) == (1, 2)
    taken = _claimed(engine, store, job_id, 0, "w2")
    assert taken.attempts == 3
    assert _request(engine, job_id, 0)["worker_id"] == "w2"


def test_a_final_request_or_a_cancelled_job_is_never_claimed(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 3)
    done = _claimed(engine, store, job_id, 0)
    assert _succeed(engine, store, done, {"id": "x"}) is not None
    assert _claim(engine, store, job_id, 0, "w2") is None  # already final
    with engine.begin() as conn:
        store.cancel_job(conn, job_id)
    assert _claim(engine, store, job_id, 1) is None  # cancelled before it was sent
    # A cancelling job sends nothing new, even a request that is still queued by some other path.
    with engine.begin() as conn:
        conn.execute(update(Request).where(R.job_id == job_id, R.idx == 2).values(state="queued"))
    assert _claim(engine, store, job_id, 2) is None


# --- outcomes -----------------------------------------------------------------------------------


def test_a_success_is_stored_and_counted_exactly_once(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 2)
    claimed = _claimed(engine, store, job_id, 0)
    progress = _succeed(engine, store, claimed, {"id": "first"})
    assert progress == Progress(complete=False)
    assert _succeed(engine, store, claimed, {"id": "second"}) is None  # a redelivered task's answer
    (response,) = _responses(engine, job_id)
    assert response["body"] == {"id": "first"} and response["idx"] == 0
    assert (response["prompt_tokens"], response["completion_tokens"], response["total_tokens"]) == (3, 4, 7)
    row = _request(engine, job_id, 0)
    assert (row["state"], row["status_code"], row["latency_ms"], row["worker_id"], row["lease_until"]) == (
        "succeeded",
        200,
        12.5,
        None,
        None,
    )
    assert _counters(engine, store, job_id) == (2, 1, 0, 0, 0)
    with engine.connect() as conn:
        assert store.response_body(conn, job_id, 0) == {"id": "first"}
        assert store.response_body(conn, job_id, 1) is None
    last = _succeed(engine, store, _claimed(engine, store, job_id, 1), {"id": "other"})
    assert last == Progress(complete=True)


def test_a_group_of_claims_takes_each_request_as_a_claim_alone_would(engine: Engine, store: JobStore) -> None:
    """``claim_requests`` (a worker's threads claim together): the first claim of the group starts the job,
    a request that is not claimable is ``None`` in its place, and each claimed request is the caller's."""
    job_id = _job(engine, store, 3)
    done = _claimed(engine, store, job_id, 2)
    _succeed(engine, store, done, {"id": "done"})
    claims = [Claim(job_id, i, TIMEOUT_S, MARGIN_S, "w") for i in (1, 2, 0)]
    with engine.begin() as conn:
        claimed = store.claim_requests(conn, claims)
    assert [c.idx if c else None for c in claimed] == [1, None, 0]
    assert all(c.attempts == 1 for c in claimed if c)
    assert _states(engine, job_id) == ["running", "running", "succeeded"]
    with engine.begin() as conn:  # claimed already, under another worker's live lease: nobody else's
        assert store.claim_requests(conn, [Claim(job_id, 0, TIMEOUT_S, MARGIN_S, "other")]) == [None]


def test_a_group_of_successes_is_stored_and_counted_once_each_in_the_callers_order(
    engine: Engine, store: JobStore
) -> None:
    """``record_successes`` (a worker's group commit): each item as ``record_success`` alone would do it."""
    first, second = _job(engine, store, 2), _job(engine, store, 1)
    a, b, c = _claimed(engine, store, first, 0), _claimed(engine, store, second, 0), _claimed(engine, store, first, 1)
    _succeed(engine, store, c, {"id": "earlier"})  # already final: its item writes nothing
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    items = [(x, Answer({"id": name}, x.provider, x.model, usage, 1.0)) for x, name in ((a, "a"), (c, "c"), (b, "b"))]
    with engine.begin() as conn:
        progress = store.record_successes(conn, items)
    assert progress == [Progress(complete=True), None, Progress(complete=True)]
    assert [r["body"] for r in sorted(_responses(engine, first), key=lambda r: r["idx"])] == [
        {"id": "a"},
        {"id": "earlier"},
    ]
    assert [r["body"] for r in _responses(engine, second)] == [{"id": "b"}]
    assert _counters(engine, store, first)[:2] == (2, 2) and _counters(engine, store, second)[:2] == (1, 1)


def test_a_paid_answer_is_kept_whichever_attempt_brings_it(engine: Engine, store: JobStore) -> None:
    """Not fenced: an attempt presumed dead whose request is queued again still stores its answer, and the
    re-run's answer then finds the request final."""
    job_id = _job(engine, store, 1)
    stale = _claimed(engine, store, job_id, 0, "dead")
    with engine.begin() as conn:  # as the reaper or a retry would: no longer running this attempt
        assert store.record_retry(
            conn, stale.request_id, attempt=stale.attempts, delay_s=60, failure=Failure("ProviderTimeoutError", "t")
        )
    assert _succeed(engine, store, stale, {"id": "late"}) == Progress(complete=True)
    assert _claim(engine, store, job_id, 0, "w2") is None
    assert [r["body"] for r in _responses(engine, job_id)] == [{"id": "late"}]


@pytest.mark.parametrize("state", list(FINAL_STATE_COUNTER))
def test_an_end_is_fenced_by_its_attempt_and_counted_once(engine: Engine, store: JobStore, state: RequestState) -> None:
    job_id = _job(engine, store, 2)
    claimed = _claimed(engine, store, job_id, 0)
    assert _end(engine, store, claimed, state, attempt=claimed.attempts + 1) is None  # another attempt's
    assert _request(engine, job_id, 0)["state"] == "running"
    assert _end(engine, store, claimed, state) == Progress(complete=False)
    assert _end(engine, store, claimed, state) is None  # twice: no longer running
    row = _request(engine, job_id, 0)
    assert (row["state"], row["error_type"], row["error"], row["status_code"]) == (
        state.value,
        "ProviderError",
        "boom",
        500,
    )
    assert row["worker_id"] is None and row["lease_until"] is None and row["finished_at"] is not None
    _, succeeded, failed, cancelled, expired = _counters(engine, store, job_id)
    counted = {"failed": failed, "cancelled": cancelled, "expired": expired}
    assert counted == {name: int(name == FINAL_STATE_COUNTER[state]) for name in counted} and succeeded == 0
    assert _responses(engine, job_id) == []


def test_an_end_keeps_the_stored_latency_unless_given_one(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 2)
    for idx, latency in ((0, None), (1, 42.0)):
        claimed = _claimed(engine, store, job_id, idx)
        with engine.begin() as conn:
            conn.execute(update(Request).where(R.id == claimed.request_id).values(latency_ms=7.0))
            failure = Failure("X", "x", latency_ms=latency)
            store.record_end(conn, claimed.request_id, RequestState.FAILED, attempt=claimed.attempts, failure=failure)
    assert (_request(engine, job_id, 0)["latency_ms"], _request(engine, job_id, 1)["latency_ms"]) == (7.0, 42.0)


def test_a_retry_parks_the_request_and_keeps_the_attempt_spent(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 1)
    claimed = _claimed(engine, store, job_id, 0)

    def retry(attempt: int) -> bool:
        with engine.begin() as conn:
            failure = Failure("ProviderServerError", "503", 503, error_body="upstream overloaded")
            return store.record_retry(conn, claimed.request_id, attempt=attempt, delay_s=30, failure=failure)

    assert not retry(claimed.attempts + 1)  # fenced
    assert retry(claimed.attempts)
    assert not retry(claimed.attempts)  # no longer running
    row = _request(engine, job_id, 0)
    assert (row["state"], row["attempts"], row["error_type"], row["status_code"]) == (
        "retrying",
        1,
        "ProviderServerError",
        503,
    )
    assert row["error_body"] == "upstream overloaded"  # a text body, as the openai SDK keeps one
    assert row["worker_id"] is None and row["lease_until"] is None
    assert 20 < (row["next_attempt_at"] - row["started_at"]).total_seconds() < 40
    assert _counters(engine, store, job_id) == (1, 0, 0, 0, 0)  # not final: nothing counted
    again = _claimed(engine, store, job_id, 0, "w2")
    assert again.attempts == 2 and _request(engine, job_id, 0)["next_attempt_at"] is None


def test_a_deferral_gives_the_attempt_back(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 1)
    claimed = _claimed(engine, store, job_id, 0)
    with engine.begin() as conn:
        assert not store.record_deferral(conn, claimed.request_id, attempt=claimed.attempts + 1, delay_s=5)
        assert store.record_deferral(conn, claimed.request_id, attempt=claimed.attempts, delay_s=5)
        assert not store.record_deferral(conn, claimed.request_id, attempt=claimed.attempts, delay_s=5)
    row = _request(engine, job_id, 0)
    assert (row["state"], row["attempts"], row["worker_id"]) == ("retrying", 0, None)
    assert row["next_attempt_at"] is not None
    assert _claimed(engine, store, job_id, 0).attempts == 1


# --- races --------------------------------------------------------------------------------------


def test_a_race_keeps_its_first_winner_and_skips_what_was_not_sent(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 4, kind="fastest")
    winner = _claimed(engine, store, job_id, 0)
    in_flight = _claimed(engine, store, job_id, 1)
    retrying = _claimed(engine, store, job_id, 2)
    with engine.begin() as conn:
        store.record_retry(conn, retrying.request_id, attempt=1, delay_s=9, failure=Failure("E", "e"))
    _succeed(engine, store, winner, {"id": "win"})
    with engine.begin() as conn:
        store.set_race_winner(conn, job_id, 0)
        store.set_race_winner(conn, job_id, 1)  # later: changes nothing
        progress = store.skip_unsent(conn, job_id)
    assert progress == Progress(complete=False)  # one still in flight
    assert _job_row(engine, store, job_id)["winner_index"] == 0
    assert _states(engine, job_id) == ["succeeded", "running", "skipped", "skipped"]
    skipped = _request(engine, job_id, 3)
    assert (skipped["error_type"], skipped["error"]) == (
        "RequestCancelledError",
        "skipped: another model answered first",
    )
    assert _counters(engine, store, job_id) == (4, 1, 0, 2, 0)
    with engine.begin() as conn:
        assert store.skip_unsent(conn, job_id) == Progress(complete=False)  # again: nothing more
        assert store.skip_unsent(conn, uuid.uuid4()) is None
    assert _finalize(engine, store, job_id) is None  # one still in flight
    _succeed(engine, store, in_flight, {"id": "slower"})  # a call already in flight is stored
    assert _finalize(engine, store, job_id) == "completed"


def test_a_race_nobody_won_fails(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 2, kind="fastest")
    for idx in (0, 1):
        _end(engine, store, _claimed(engine, store, job_id, idx), RequestState.FAILED)
    assert _finalize(engine, store, job_id) == "failed"


# --- finishing, cancelling, expiring ------------------------------------------------------------


def test_a_job_is_finalized_once_and_only_when_due(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 2)
    _succeed(engine, store, _claimed(engine, store, job_id, 0), {"id": "a"})
    with engine.connect() as conn:
        assert job_id not in store.jobs_due_for_finalize(conn)
    assert _finalize(engine, store, job_id) is None  # one request still open
    _end(engine, store, _claimed(engine, store, job_id, 1), RequestState.FAILED)
    with engine.connect() as conn:
        assert job_id in store.jobs_due_for_finalize(conn)
    assert _finalize(engine, store, job_id) == "completed"  # some failures: still completed
    assert _finalize(engine, store, job_id) is None  # a duplicate finalizer
    row = _job_row(engine, store, job_id)
    assert row["state"] == "completed" and row["finished_at"] is not None and row["finished_at"].tzinfo is not None
    with engine.connect() as conn:
        assert job_id not in store.jobs_due_for_finalize(conn)
    assert _finalize(engine, store, uuid.uuid4()) is None


def test_cancel_takes_what_was_not_sent_and_in_flight_answers_still_count(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 4)
    done = _claimed(engine, store, job_id, 0)
    _succeed(engine, store, done, {"id": "before"})
    in_flight = _claimed(engine, store, job_id, 1)
    retrying = _claimed(engine, store, job_id, 2)
    with engine.begin() as conn:
        store.record_retry(conn, retrying.request_id, attempt=1, delay_s=9, failure=Failure("E", "e"))
    with engine.begin() as conn:
        assert store.cancel_job(conn, job_id) == 2  # the retrying one and the queued one
        assert store.finalize_job(conn, job_id) is None  # one still in flight
    assert _job_row(engine, store, job_id)["state"] == "cancelling"
    assert _states(engine, job_id) == ["succeeded", "running", "cancelled", "cancelled"]
    cancelled = _request(engine, job_id, 3)
    assert (cancelled["error_type"], cancelled["error"]) == ("RequestCancelledError", "cancelled before it was sent")
    assert _counters(engine, store, job_id) == (4, 1, 0, 2, 0)
    with engine.begin() as conn:
        assert store.cancel_job(conn, job_id) == 0  # again: nothing left to cancel
    assert _succeed(engine, store, in_flight, {"id": "in flight"}) == Progress(complete=True)
    assert _finalize(engine, store, job_id) == "cancelled"
    with engine.begin() as conn:
        assert store.cancel_job(conn, job_id) == 0  # final: unchanged
        assert store.cancel_job(conn, uuid.uuid4()) == 0
    assert _job_row(engine, store, job_id)["state"] == "cancelled"
    assert _counters(engine, store, job_id) == (4, 2, 0, 2, 0)


def test_a_job_with_nothing_in_flight_is_cancelled_at_once(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 2)
    with engine.begin() as conn:
        assert store.cancel_job(conn, job_id) == 2
        assert store.finalize_job(conn, job_id) == "cancelled"


def test_a_deadline_expires_what_was_not_sent_once(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 3, deadline_at=datetime.now(UTC) - timedelta(minutes=1))
    on_time = _job(engine, store, 1, deadline_at=datetime.now(UTC) + timedelta(hours=1))
    running = _claimed(engine, store, job_id, 0)
    with engine.begin() as conn:
        expired = store.expire_overdue(conn)
    assert job_id in expired and on_time not in expired
    assert _states(engine, job_id) == ["running", "expired", "expired"]
    assert _states(engine, on_time) == ["queued"]
    row = _request(engine, job_id, 1)
    assert (row["error_type"], row["error"]) == (
        "RequestExpiredError",
        "the job's completion window ended before it ran",
    )
    assert _counters(engine, store, job_id) == (3, 0, 0, 0, 2)
    with engine.begin() as conn:
        assert job_id not in store.expire_overdue(conn)  # nothing new to expire
    assert _counters(engine, store, job_id) == (3, 0, 0, 0, 2)
    assert _succeed(engine, store, running, {"id": "late but paid"}) == Progress(complete=True)
    assert _finalize(engine, store, job_id) == "expired"  # with its partial results


# --- counting under concurrency -----------------------------------------------------------------


def test_concurrent_stores_count_exactly_and_exactly_one_completes_the_job(engine: Engine, store: JobStore) -> None:
    """A wave of completions at once (16 counter shards on Postgres, one writer at a time on SQLite): exact
    counts, and exactly one store learns that the job is complete, however the last ones interleave."""
    n, threads = 96, 8
    job_id = _job(engine, store, n)
    claimed = [_claimed(engine, store, job_id, idx) for idx in range(n)]
    barrier = threading.Barrier(threads)

    def store_all(part: list[ClaimedRequest]) -> list[Progress | None]:
        barrier.wait()
        return [
            _end(engine, store, c, RequestState.FAILED) if c.idx % 4 == 3 else _succeed(engine, store, c, {"i": c.idx})
            for c in part
        ]

    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(store_all, [claimed[i::threads] for i in range(threads)])
        results = [progress for part in parts for progress in part]
    assert len(results) == n and all(progress is not None for progress in results)
    assert sum(progress.complete for progress in results if progress is not None) == 1
    assert _counters(engine, store, job_id) == (n, 72, 24, 0, 0)
    with engine.connect() as conn:
        assert job_id in store.jobs_due_for_finalize(conn)
    assert _finalize(engine, store, job_id) == "completed"
    # Final: the job row holds the exact counts by itself (Postgres folded its shards into it).
    with engine.connect() as conn:
        row = conn.execute(select(J.succeeded, J.failed, J.cancelled, J.expired).where(J.id == job_id)).one()
    assert tuple(row) == (72, 24, 0, 0)
    assert _counters(engine, store, job_id) == (n, 72, 24, 0, 0)


def test_concurrent_groups_of_stores_count_exactly_and_one_completes_the_job(engine: Engine, store: JobStore) -> None:
    """Two workers' group commits at once, their groups spanning the same counter shards in different orders
    (each a transaction holding its shards to its commit): no group waits forever on another, counts are
    exact, and exactly one item of all the groups learns that the job is complete."""
    n, writers, group = 192, 4, 12
    job_id = _job(engine, store, n)
    claimed = [_claimed(engine, store, job_id, idx) for idx in range(n)]
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    barrier = threading.Barrier(writers)

    def write(part: list[ClaimedRequest]) -> list[Progress | None]:
        barrier.wait()
        out: list[Progress | None] = []
        for start in range(0, len(part), group):
            items = [(c, Answer({"i": c.idx}, c.provider, c.model, usage, 1.0)) for c in part[start : start + group]]
            with engine.begin() as conn:
                out.extend(store.record_successes(conn, list(reversed(items))))
        return out

    shuffled = random.Random(16).sample(claimed, n)  # each group over many shards, the last ones settling together
    with ThreadPoolExecutor(writers) as pool:
        parts = pool.map(write, [shuffled[i::writers] for i in range(writers)])
        results = [progress for part in parts for progress in part]
    assert len(results) == n and all(progress is not None for progress in results)
    assert sum(progress.complete for progress in results if progress is not None) == 1
    assert _counters(engine, store, job_id) == (n, n, 0, 0, 0)
    assert _finalize(engine, store, job_id) == "completed"


def _backend_pid(conn: Any) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _wait_until_blocked(engine: Engine, pid: int, timeout_s: float = 30.0) -> None:
    """Until backend ``pid`` waits on a lock another transaction holds (polled: Postgres has no event for it)."""
    deadline = time.monotonic() + timeout_s
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            wait = conn.execute(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar()
            conn.rollback()  # a fresh snapshot of pg_stat_activity on the next read
            if wait == "Lock":
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited on a lock")


def test_a_cancel_and_a_group_of_stores_of_the_same_job_never_deadlock(engine: Engine, store: JobStore) -> None:
    """Found by CI (a cancel during a running batch failed with ``DeadlockDetected``): a group of stores took
    a counter shard and then the next store's request row, while a cancel held that request and waited for
    the shard. Every writer now takes a job's request rows first (in index order), its shards after them (in
    shard order), its job row last. The worst interleaving is forced here: the cancel holds request 1 and
    is held up before the shards (a third transaction holds request 2) while the group of stores starts."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks: SQLite has one writer at a time")
    job_id = _job(engine, store, 20)
    first = _claimed(engine, store, job_id, 0)  # shard 0, which the cancel needs too (for request 16)
    late = _claimed(engine, store, job_id, 1, "presumed-dead")
    with engine.begin() as conn:  # queued again (as the reaper would), its paid answer still may land
        assert store.record_retry(conn, late.request_id, attempt=late.attempts, delay_s=60, failure=BOOM)
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    items = [(c, Answer({"i": c.idx}, c.provider, c.model, usage, 1.0)) for c in (first, late)]
    pids: dict[str, int] = {}
    started = {name: threading.Event() for name in ("cancel", "stores")}

    def cancel() -> int:
        with engine.begin() as conn:
            pids["cancel"] = _backend_pid(conn)
            started["cancel"].set()
            return store.cancel_job(conn, job_id)

    def stores() -> list[Progress | None]:
        with engine.begin() as conn:
            pids["stores"] = _backend_pid(conn)
            started["stores"].set()
            return store.record_successes(conn, items)

    with engine.connect() as holder, ThreadPoolExecutor(2) as pool:
        holder.execute(select(R.id).where(R.job_id == job_id, R.idx == 2).with_for_update())
        cancelled = pool.submit(cancel)
        assert started["cancel"].wait(30)
        _wait_until_blocked(engine, pids["cancel"])  # it holds request 1 and waits for request 2
        stored = pool.submit(stores)
        assert started["stores"].wait(30)
        _wait_until_blocked(engine, pids["stores"])  # request 1 is the cancel's
        holder.rollback()
        assert cancelled.result(timeout=60) == 19
        # Request 1 was cancelled first; request 0 was the job's last open request.
        assert stored.result(timeout=60) == [Progress(complete=True), None]
    assert _counters(engine, store, job_id) == (20, 1, 0, 19, 0)
    assert _finalize(engine, store, job_id) == "cancelled"


def test_a_job_stored_without_counter_shards_counts_on_its_row(engine: Engine, store: JobStore) -> None:
    """A job stored by a version before the shards (a submitter not yet upgraded in a rolling upgrade): its
    requests count on the ``jobs`` row, as before, and the last one still completes it, once."""
    job_id = _job(engine, store, 4)
    with engine.begin() as conn:
        conn.execute(delete(JobCounter).where(JobCounter.__table__.c.job_id == job_id))
        conn.execute(update(Job).where(J.id == job_id).values(open_shards=0))
    claimed = [_claimed(engine, store, job_id, idx) for idx in range(4)]
    assert _succeed(engine, store, claimed[0], {"i": 0}) == Progress(complete=False)
    assert _end(engine, store, claimed[1], RequestState.FAILED) == Progress(complete=False)
    with engine.begin() as conn:
        conn.execute(update(Request).where(R.job_id == job_id, R.idx == 2).values(state="failed"))
        assert store.count_ends(conn, job_id, "failed", [2]) == Progress(complete=False)
    assert _succeed(engine, store, claimed[3], {"i": 3}) == Progress(complete=True)
    assert _counters(engine, store, job_id) == (4, 2, 2, 0, 0)
    assert _finalize(engine, store, job_id) == "completed"


def test_requests_ended_by_the_caller_count_once_and_can_complete_the_job(engine: Engine, store: JobStore) -> None:
    """``count_ends``: the recovery sweep moves requests of lost workers itself, then counts them."""
    job_id = _job(engine, store, 20)
    for idx in range(18):
        _succeed(engine, store, _claimed(engine, store, job_id, idx), {"i": idx})
    with engine.begin() as conn:
        conn.execute(update(Request).where(R.job_id == job_id, R.idx >= 18).values(state="failed"))
        assert store.count_ends(conn, job_id, "failed", [18]) == Progress(complete=False)
        assert store.count_ends(conn, job_id, "failed", [19]) == Progress(complete=True)
    assert _counters(engine, store, job_id) == (20, 18, 2, 0, 0)
    assert _finalize(engine, store, job_id) == "completed"


def test_a_cancel_that_ends_the_last_open_requests_leaves_the_job_due(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 40)
    for idx in range(39):
        _succeed(engine, store, _claimed(engine, store, job_id, idx), {"i": idx})
    with engine.begin() as conn:
        assert store.cancel_job(conn, job_id) == 1
        assert job_id in store.jobs_due_for_finalize(conn)
        assert store.finalize_job(conn, job_id) == "cancelled"
    assert _counters(engine, store, job_id) == (40, 39, 0, 1, 0)


# --- reading results ----------------------------------------------------------------------------


def test_results_stream_in_input_order_with_their_bodies(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 5)
    _succeed(engine, store, _claimed(engine, store, job_id, 3), {"id": "three"})
    _end(engine, store, _claimed(engine, store, job_id, 1), RequestState.FAILED)
    rows = list(store.stream_results(engine, job_id, page_size=2))
    assert [r["idx"] for r in rows] == [0, 1, 2, 3, 4]
    assert set(rows[0]) == {
        "idx",
        "custom_id",
        "model",
        "provider",
        "state",
        "attempts",
        "error_type",
        "error",
        "status_code",
        "error_body",
        "latency_ms",
        "body",
    }
    assert [(r["state"], r["body"]) for r in rows] == [
        ("queued", None),
        ("failed", None),
        ("queued", None),
        ("succeeded", {"id": "three"}),
        ("queued", None),
    ]
    assert (rows[1]["error_type"], rows[1]["error"], rows[1]["status_code"]) == ("ProviderError", "boom", 500)
    assert rows[1]["error_body"] == BOOM.error_body  # the provider's error object, for e.body / e.code
    assert list(store.stream_results(engine, uuid.uuid4())) == []


def test_the_database_writes_jsonl_where_it_can(engine: Engine, store: JobStore) -> None:
    job_id = _job(engine, store, 2)
    _succeed(engine, store, _claimed(engine, store, job_id, 0), {"id": "zero"})
    out = io.BytesIO()
    written = store.export_results_jsonl(engine, job_id, out)
    assert written is store.cluster  # Postgres builds the lines; on SQLite the caller renders them
    if written:
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [(line["index"], line["state"], line["response"]) for line in lines] == [
            (0, "succeeded", {"id": "zero"}),
            (1, "queued", None),
        ]
        assert lines[1]["error"] == {
            "type": "RequestError",
            "message": "not finished yet (queued)",
            "status_code": None,
            "llm_provider": "openai",
            "body": None,
        }
    else:
        assert out.getvalue() == b""


def test_counts_by_state(engine: Engine, store: JobStore) -> None:
    with engine.connect() as conn:
        jobs_before, open_before = store.jobs_by_state(conn), store.open_requests_by_state(conn)
    job_id = _job(engine, store, 3)
    _claimed(engine, store, job_id, 0)
    with engine.connect() as conn:
        jobs_after, open_after = store.jobs_by_state(conn), store.open_requests_by_state(conn)
    assert jobs_after.get("running", 0) == jobs_before.get("running", 0) + 1
    assert open_after.get("running", 0) == open_before.get("running", 0) + 1
    assert open_after.get("queued", 0) == open_before.get("queued", 0) + 2
    assert set(open_after) <= {"queued", "running", "retrying"}


# --- dispatch: the backlog and the broker window --------------------------------------------------


def _backlog_job(
    engine: Engine,
    store: JobStore,
    models: list[str],
    *,
    priority: int = 5,
    owner: uuid.UUID | None = None,
    kind: str = "batch",
) -> uuid.UUID:
    """A job whose request ``i`` goes to ``models[i]`` with ``10 + i`` estimated tokens."""
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        store.insert_job(
            conn, NewJob(id=job_id, kind=kind, params={"params": {}}, queue="q", priority=priority, owner_id=owner)
        )
        total = store.copy_requests(
            conn,
            job_id,
            (
                NewRequest(idx=i, model=m, provider="openai", messages=MESSAGES, est_tokens=10 + i)
                for i, m in enumerate(models)
            ),
        )
        store.set_total(conn, job_id, total)
    return job_id


def _release(
    engine: Engine, store: JobStore, job_id: uuid.UUID, n: int, **only: str
) -> list[tuple[int, int | None, str]]:
    with engine.begin() as conn:
        return [(r.idx, r.est_tokens, r.model) for r in store.release(conn, job_id, n, **only)]


def _window(engine: Engine, store: JobStore, job_id: uuid.UUID) -> dict[str, int]:
    with engine.connect() as conn:
        return {w.model: w.count for w in store.window(conn) if w.job_id == job_id}


def _dispatched(engine: Engine, job_id: uuid.UUID) -> list[bool]:
    with engine.connect() as conn:
        rows = conn.execute(select(R.dispatched_at).where(R.job_id == job_id).order_by(R.idx)).scalars()
        return [value is not None for value in rows]


def test_requests_are_stored_in_the_backlog_with_their_estimate(engine: Engine, store: JobStore) -> None:
    job_id = _backlog_job(engine, store, ["a", "a"])
    assert _dispatched(engine, job_id) == [False, False]
    assert _job_row(engine, store, job_id)["priority"] == 5
    with engine.connect() as conn:
        assert list(conn.execute(select(R.est_tokens).where(R.job_id == job_id).order_by(R.idx)).scalars()) == [10, 11]


def test_release_takes_the_lowest_indices_once_and_stamps_them(engine: Engine, store: JobStore) -> None:
    job_id = _backlog_job(engine, store, ["a", "b", "a", "b", "a"])
    assert _release(engine, store, job_id, 2) == [(0, 10, "a"), (1, 11, "b")]
    assert _dispatched(engine, job_id) == [True, True, False, False, False]
    assert _release(engine, store, job_id, 5, provider="openai", model="b") == [(3, 13, "b")]
    assert _release(engine, store, job_id, 10) == [(2, 12, "a"), (4, 14, "a")]
    assert _release(engine, store, job_id, 10) == []  # the backlog is empty: nothing twice
    assert _release(engine, store, job_id, 0) == []


def test_a_release_that_rolls_back_leaves_the_backlog_as_it_was(engine: Engine, store: JobStore) -> None:
    """The publish happens inside the release's transaction: a refused publish releases nothing."""
    job_id = _backlog_job(engine, store, ["a", "a"])

    class RefusedError(Exception):
        pass

    def refused_publish() -> None:
        with engine.begin() as conn:
            assert len(store.release(conn, job_id, 2)) == 2
            raise RefusedError

    with pytest.raises(RefusedError):
        refused_publish()
    assert _dispatched(engine, job_id) == [False, False]


def test_a_cancelling_or_final_job_releases_nothing(engine: Engine, store: JobStore) -> None:
    job_id = _backlog_job(engine, store, ["a", "a", "a"])
    _release(engine, store, job_id, 1)
    _claimed(engine, store, job_id, 0)  # in flight: the cancel leaves the job cancelling
    with engine.begin() as conn:
        store.cancel_job(conn, job_id)
    assert _job_row(engine, store, job_id)["state"] == "cancelling"
    assert _release(engine, store, job_id, 10) == []
    assert _dispatched(engine, job_id) == [True, False, False]


def test_the_window_counts_released_requests_until_they_are_final(engine: Engine, store: JobStore) -> None:
    job_id = _backlog_job(engine, store, ["a", "b", "a", "a"])
    assert _window(engine, store, job_id) == {}  # the backlog is not in the window
    _release(engine, store, job_id, 3)
    assert _window(engine, store, job_id) == {"a": 2, "b": 1}
    claimed = _claimed(engine, store, job_id, 0)
    assert _window(engine, store, job_id) == {"a": 2, "b": 1}  # running still occupies the window
    _succeed(engine, store, claimed, {"id": "x"})
    assert _window(engine, store, job_id) == {"a": 1, "b": 1}
    retried = _claimed(engine, store, job_id, 1)
    with engine.begin() as conn:
        store.record_retry(conn, retried.request_id, attempt=retried.attempts, delay_s=30, failure=BOOM)
    assert _window(engine, store, job_id) == {"a": 1, "b": 1}  # a retry waiting for its countdown too


def test_take_back_returns_released_queued_requests_to_the_backlog(engine: Engine, store: JobStore) -> None:
    job_id = _backlog_job(engine, store, ["a", "a", "a", "a"])
    other = _backlog_job(engine, store, ["a"])
    _release(engine, store, job_id, 3)
    _release(engine, store, other, 1)
    _claimed(engine, store, job_id, 0)  # running: its worker holds it, it keeps its place
    with engine.begin() as conn:
        assert store.take_back(conn, [job_id]) == 2
        assert store.take_back(conn, []) == 0
    assert _dispatched(engine, job_id) == [True, False, False, False]
    assert _dispatched(engine, other) == [True]  # another job was not named
    assert _release(engine, store, job_id, 10) == [(1, 11, "a"), (2, 12, "a"), (3, 13, "a")]
    with engine.begin() as conn:
        assert store.take_back(conn) >= 4  # every job's
    assert _dispatched(engine, other) == [False]


def test_the_backlog_lists_active_jobs_with_the_head_of_their_backlog(engine: Engine, store: JobStore) -> None:
    owner = _api_key(engine)
    with engine.begin() as conn:
        conn.execute(update(ApiKey).where(ApiKey.id == owner).values(weight=3.0, max_concurrent_requests=7))
    job_id = _backlog_job(engine, store, ["a", "b", "a", "a", "b"], priority=8, owner=owner)
    drained = _backlog_job(engine, store, ["a"])
    _release(engine, store, drained, 1)
    done = _backlog_job(engine, store, ["a"])
    with engine.begin() as conn:
        store.cancel_job(conn, done)
        store.finalize_job(conn, done)
    with engine.connect() as conn:
        jobs = {job.id: job for job in store.dispatch_backlog(conn, cap=3)}
    assert done not in jobs  # final: nothing to release
    assert jobs[drained].backlog == ()  # active, nothing left in its backlog
    job = jobs[job_id]
    assert (job.priority, job.owner_id, job.weight, job.max_concurrent, job.kind, job.queue, job.done) == (
        8,
        owner,
        3.0,
        7,
        "batch",
        "q",
        0,
    )
    assert job.created_at.tzinfo is not None
    # At most `cap` requests of the head, lowest indices first: 0 (a), 1 (b), 2 (a).
    assert sorted((p.model, p.count, p.tokens) for p in job.backlog) == [("a", 2, 22), ("b", 1, 11)]
    assert jobs[drained].weight == 1.0 and jobs[drained].owner_id is None
