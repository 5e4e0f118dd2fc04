"""The statements of liveness and recovery (``batcher/_db/recovery.py``), on both databases batcher
runs on (Postgres for a cluster, SQLite for embedded mode), and the publisher's withdrawal of a
cancelled job's messages.

These pin the rules the fault tests rely on: who counts as dead, what a reaped request becomes,
and what a submission does when the broker is away.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, create_engine, select, update

from batcher._celery import make_celery_app
from batcher._config import Settings
from batcher._db import recovery
from batcher._db.contract import store_for
from batcher._db.models import Request, Worker
from batcher._db.rows import Answer, ClaimedRequest, Failure, NewJob, NewRequest
from batcher._migrate import upgrade
from batcher._publish import Publisher
from batcher._states import JobKind
from batcher._submit import RequestSpec, submit
from batcher._validation import CallOptions


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgres":
        url = request.getfixturevalue("database_url")
    else:
        url = f"sqlite:///{tmp_path / 'recovery.db'}"
        upgrade(Settings(database_url=url))
    eng = create_engine(url)
    if request.param == "sqlite":
        from sqlalchemy import make_url

        from batcher._db.engine import _sqlite_engine

        eng.dispose()
        eng = _sqlite_engine(make_url(url), Settings(database_url=url))
    yield eng
    eng.dispose()


MESSAGES = [{"role": "user", "content": "x"}]


def _job(engine: Engine, n: int, *, params: dict[str, object] | None = None) -> uuid.UUID:
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        store_for(conn).insert_job(
            conn, NewJob(id=job_id, kind="batch", total=n, params={"params": {}, **(params or {})}, queue="q")
        )
        store_for(conn).copy_requests(
            conn,
            job_id,
            (
                NewRequest(idx=i, model="gpt-x", provider="openai", messages=[{"role": "user", "content": "x"}])
                for i in range(n)
            ),
        )
    return job_id


def _claim(engine: Engine, job_id: uuid.UUID, idx: int, worker: str) -> ClaimedRequest:
    with engine.begin() as conn:
        claimed = store_for(conn).claim_request(conn, job_id, idx, timeout_s=600, margin_s=30, worker_id=worker)
    assert claimed is not None
    return claimed


def _register(engine: Engine, worker: str) -> None:
    with engine.begin() as conn:
        recovery.register_worker(conn, worker_id=worker, hostname="h", pid=1, queues=["q"], concurrency=1)


def _age(engine: Engine, worker: str, seconds: float) -> None:
    """Make a worker's last heartbeat ``seconds`` old."""
    from datetime import UTC, datetime, timedelta

    with engine.begin() as conn:
        then = datetime.now(UTC) - timedelta(seconds=seconds)
        if engine.dialect.name == "sqlite":
            then = then.replace(tzinfo=None)
        conn.execute(update(Worker.__table__).where(Worker.__table__.c.id == worker).values(heartbeat_at=then))


def _states(engine: Engine, job_id: uuid.UUID) -> dict[int, tuple[str, int, str | None]]:
    r = Request.__table__.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(r.idx, r.state, r.lost, r.error_type).where(r.job_id == job_id).order_by(r.idx)
        ).all()
    return {row.idx: (row.state, row.lost, row.error_type) for row in rows}


def test_a_dead_workers_requests_are_queued_again_and_a_live_ones_are_not(engine: Engine) -> None:
    job = _job(engine, 3)
    dead, alive = f"dead-{uuid.uuid4().hex[:6]}", f"alive-{uuid.uuid4().hex[:6]}"
    _register(engine, dead)
    _register(engine, alive)
    _claim(engine, job, 0, dead)
    _claim(engine, job, 1, alive)
    _age(engine, dead, 60)
    with engine.begin() as conn:
        reaped = recovery.reap_lost(conn, lapse_s=20, default_max_attempts=5, stuck_s=900)
    assert [(r.job_id, r.idx, r.state, r.queue) for r in reaped] == [(job, 0, "queued", "q")]
    assert _states(engine, job) == {0: ("queued", 1, None), 1: ("running", 0, None), 2: ("queued", 0, None)}
    with engine.begin() as conn:  # idempotent: nothing more to take
        assert recovery.reap_lost(conn, lapse_s=20, default_max_attempts=5, stuck_s=900) == []


def test_a_request_that_lost_its_budget_of_workers_fails_and_is_counted(engine: Engine) -> None:
    job = _job(engine, 2, params={"max_attempts": 2})
    for attempt in (1, 2):
        worker = f"w{attempt}-{uuid.uuid4().hex[:6]}"
        _register(engine, worker)
        claimed = _claim(engine, job, 0, worker)
        assert claimed.attempts == attempt
        _age(engine, worker, 60)
        with engine.begin() as conn:
            (reaped,) = recovery.reap_lost(conn, lapse_s=20, default_max_attempts=5, stuck_s=900)
        assert reaped.state == ("queued" if attempt == 1 else "failed")
    state, lost, error_type = _states(engine, job)[0]
    assert (state, lost, error_type) == ("failed", 2, "WorkerLostError")
    with engine.connect() as conn:
        row = store_for(conn).job_row(conn, job)
    assert row is not None and row["failed"] == 1


def test_a_cancelling_jobs_lost_requests_end_cancelled(engine: Engine) -> None:
    job = _job(engine, 2)
    worker = f"w-{uuid.uuid4().hex[:6]}"
    _register(engine, worker)
    _claim(engine, job, 0, worker)
    with engine.begin() as conn:
        assert store_for(conn).cancel_job(conn, job) == 1  # the other, unsent
    _age(engine, worker, 60)
    with engine.begin() as conn:
        (reaped,) = recovery.reap_lost(conn, lapse_s=20, default_max_attempts=5, stuck_s=900)
        assert reaped.state == "cancelled"
        assert store_for(conn).finalize_job(conn, job) == "cancelled"


def test_a_stopping_worker_gives_back_without_spending_an_attempt_and_late_answers_still_count(engine: Engine) -> None:
    job = _job(engine, 1)
    worker = f"w-{uuid.uuid4().hex[:6]}"
    _register(engine, worker)
    claimed = _claim(engine, job, 0, worker)
    with engine.begin() as conn:
        (ref,) = recovery.release_held(conn, worker)
    assert (ref.job_id, ref.idx, ref.queue) == (job, 0, "q")
    assert _states(engine, job)[0] == ("queued", 0, None)
    with engine.connect() as conn:
        r = Request.__table__.c
        attempts = conn.execute(select(r.attempts).where(r.job_id == job)).scalar_one()
    assert attempts == 0
    # The call it gave back still answered before the process exited: the answer is kept, once.
    with engine.begin() as conn:
        progress = store_for(conn).record_success(conn, claimed, Answer({"id": "x"}, "openai", "gpt-x", None, 1.0))
    assert progress is not None and progress.complete
    with engine.begin() as conn:  # a second answer (the re-run) is not stored again
        assert store_for(conn).record_success(conn, claimed, Answer({"id": "y"}, "openai", "gpt-x", None, 1.0)) is None


def test_a_claim_redis_failed_under_goes_back_to_the_backlog_without_spending_an_attempt(engine: Engine) -> None:
    job = _job(engine, 2)
    worker, other = f"w-{uuid.uuid4().hex[:6]}", f"o-{uuid.uuid4().hex[:6]}"
    _register(engine, worker)
    _register(engine, other)
    mine = _claim(engine, job, 0, worker)
    theirs = _claim(engine, job, 1, other)
    with engine.begin() as conn:
        assert recovery.give_back(conn, mine.request_id, worker)
        assert not recovery.give_back(conn, theirs.request_id, worker)  # another worker's claim is left alone
    r = Request.__table__.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(r.idx, r.state, r.attempts, r.worker_id, r.dispatched_at).where(r.job_id == job).order_by(r.idx)
        ).all()
    assert tuple(rows[0]) == (0, "queued", 0, None, None)  # the dispatcher releases it again
    assert (rows[1].state, rows[1].worker_id) == ("running", other)
    with engine.begin() as conn:  # once it ended, there is nothing to give back
        store_for(conn).record_success(conn, theirs, Answer({"id": "x"}, "openai", "gpt-x", None, 1.0))
        assert not recovery.give_back(conn, theirs.request_id, other)


def test_a_stale_attempts_failure_changes_nothing(engine: Engine) -> None:
    """Fencing: an attempt whose request was taken back and claimed again cannot fail it."""
    from batcher._states import RequestState

    job = _job(engine, 1)
    old, new = f"old-{uuid.uuid4().hex[:6]}", f"new-{uuid.uuid4().hex[:6]}"
    _register(engine, old)
    _register(engine, new)
    stale = _claim(engine, job, 0, old)
    _age(engine, old, 60)
    with engine.begin() as conn:
        recovery.reap_lost(conn, lapse_s=20, default_max_attempts=5, stuck_s=900)
    _claim(engine, job, 0, new)
    with engine.begin() as conn:
        assert (
            store_for(conn).record_end(
                conn, stale.request_id, RequestState.FAILED, attempt=stale.attempts, failure=Failure("X", "late")
            )
            is None
        )
    assert _states(engine, job)[0][0] == "running"


@pytest.fixture
def broker(redis_url: str) -> Iterator[tuple[Publisher, redis.Redis[bytes], str]]:
    settings = Settings(redis_url=redis_url)
    app = make_celery_app(settings)
    client = redis.Redis.from_url(redis_url)
    queue = f"pub-{uuid.uuid4().hex[:8]}"
    yield Publisher(app), client, queue
    client.delete(queue)
    client.close()
    app.close()


def _queued_ids(client: redis.Redis[bytes], queue: str) -> Counter[str]:
    return Counter(json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1))


def test_withdrawing_a_cancelled_jobs_messages_leaves_every_other_message(
    broker: tuple[Publisher, redis.Redis[bytes], str],
) -> None:
    publisher, client, queue = broker
    cancelled, other = uuid.uuid4(), uuid.uuid4()
    publisher.publish_requests(other, range(0, 700, 2), queue=queue)
    publisher.publish_requests(cancelled, range(1_200), queue=queue)  # more than one scan chunk, interleaved
    publisher.publish_requests(other, range(1, 700, 2), queue=queue)
    assert publisher.withdraw_job(cancelled, [queue, f"{queue}.none"]) == 1_200
    ids = _queued_ids(client, queue)
    assert len(ids) == 700 and set(ids.values()) == {1}
    assert all(i.startswith(str(other)) for i in ids)
    assert publisher.withdraw_job(cancelled, [queue]) == 0


def test_a_batch_is_stored_and_accepted_with_the_broker_away_and_a_race_names_its_stored_job(
    database_url: str, tmp_path: Path
) -> None:
    """Redis unreachable after the commit: a batch is accepted into the backlog (the dispatcher releases it
    later; the wake-up is best effort); a race, released by its submitter, gets ``EnqueueError`` naming the
    job, which stays stored with nothing marked released."""
    from batcher._exceptions import EnqueueError

    settings = Settings(database_url=database_url, redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    app = make_celery_app(settings)
    engine = create_engine(database_url)
    spec = RequestSpec(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    try:
        batch = submit(engine, app, settings, kind=JobKind.BATCH, specs=[spec], options=CallOptions(mock_response="ok"))
        with engine.connect() as conn:
            row = store_for(conn).job_row(conn, batch)
        assert row is not None and row["total"] == 1 and row["enqueued_at"] is not None
        with pytest.raises(EnqueueError) as refused:
            _submit_race(engine, app, settings, spec)
        job_id = uuid.UUID(refused.value.job_id)
        assert str(job_id) in str(refused.value)
        row, released = _job_and_release_stamps(engine, job_id)
        assert released == [None, None]
        assert row is not None and row["total"] == 2 and row["enqueued_at"] is None
    finally:
        engine.dispose()
        app.close()


def test_a_released_race_is_stamped_enqueued_in_the_transaction_that_released_it(
    database_url: str, redis_url: str
) -> None:
    """A race's submitter publishes its requests and stamps ``enqueued_at`` in one transaction: after the
    submit, every request is released and the job is marked accepted."""
    settings = Settings(database_url=database_url, redis_url=redis_url, race_queue=f"race-stamp-{uuid.uuid4().hex}")
    app = make_celery_app(settings)
    engine = create_engine(database_url)
    spec = RequestSpec(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    try:
        job_id = _submit_race(engine, app, settings, spec)
        row, released = _job_and_release_stamps(engine, job_id)
        assert len(released) == 2 and all(stamp is not None for stamp in released)
        assert row is not None and row["enqueued_at"] is not None
    finally:
        engine.dispose()
        app.close()


def _submit_race(engine: Engine, app: Celery, settings: Settings, spec: RequestSpec) -> uuid.UUID:
    """A race of ``spec``'s prompt to two models, mocked."""
    return submit(
        engine,
        app,
        settings,
        kind=JobKind.FASTEST,
        specs=[spec, RequestSpec(model="claude-3-5-haiku", messages=spec.messages)],
        options=CallOptions(mock_response="ok"),
    )


def _job_and_release_stamps(engine: Engine, job_id: uuid.UUID) -> tuple[dict[str, Any] | None, list[Any]]:
    """The job's row and its requests' ``dispatched_at`` (None: still in the backlog)."""
    with engine.connect() as conn:
        row = store_for(conn).job_row(conn, job_id)
        released = conn.execute(
            select(Request.__table__.c.dispatched_at).where(Request.__table__.c.job_id == job_id)
        ).scalars()
        return row, list(released)
