"""The dispatcher's tick (``batcher._dispatch.Dispatcher.tick``) over a real store, on both databases, with an
in-process Redis (``fakeredis``) and a publisher that records what it is asked to send (or refuses).

These pin the mechanics the fault tests rely on: the window is never exceeded, a request is never marked
released without its message, Redis losing its data sends every queued released request again, an
adaptive limit caps its model, races go whole, and cancelled jobs release nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import fakeredis
import pytest
from sqlalchemy import Engine, create_engine, make_url, select, update

from batcher import _keys
from batcher._config import Settings
from batcher._db import recovery
from batcher._db.contract import JobStore, store_for
from batcher._db.engine import _sqlite_engine
from batcher._db.models import Request
from batcher._db.rows import NewJob, NewRequest
from batcher._dispatch import Dispatcher, capacity_for
from batcher._migrate import upgrade
from tests.support.workers import drop_database

R = Request.__table__.c
MESSAGES = [{"role": "user", "content": "hi"}]
WINDOW_MIN = 8


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database of the test's own: a tick sees every active job of its database."""
    if request.param == "postgres":
        base = request.getfixturevalue("database_url")
        url = base.rsplit("/", 1)[0] + f"/tick_{uuid.uuid4().hex[:10]}"
        upgrade(Settings(database_url=url))
        eng = create_engine(url)
        yield eng
        eng.dispose()
        drop_database(url)
    else:
        url = f"sqlite:///{tmp_path / 'tick.db'}"
        upgrade(Settings(database_url=url))
        eng = _sqlite_engine(make_url(url), Settings(database_url=url))
        yield eng
        eng.dispose()


class Broker:
    """Records every message asked for; refuses while ``down``."""

    def __init__(self) -> None:
        self.sent: list[tuple[uuid.UUID, int, str]] = []
        self.fronted: list[uuid.UUID] = []
        self.down = False

    def publish(self, job_id: uuid.UUID, indices: Sequence[int], queue: str, *, front: bool = False) -> None:
        if self.down:
            raise ConnectionError("the broker is away")
        self.sent += [(job_id, idx, queue) for idx in indices]
        if front:
            self.fronted.append(job_id)

    def of(self, job_id: uuid.UUID) -> list[int]:
        return [idx for job, idx, _ in self.sent if job == job_id]


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def redis_client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def _dispatcher(engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker) -> Dispatcher:
    settings = Settings(window_min=WINDOW_MIN, window_per_slot=2, queue="q", race_queue="q.race")
    return Dispatcher(engine, store_for(engine), redis_client, broker.publish, settings)


def _job(engine: Engine, models: Sequence[str], *, kind: str = "batch", queue: str = "q") -> uuid.UUID:
    job_id = uuid.uuid4()
    store = store_for(engine)
    with engine.begin() as conn:
        store.insert_job(conn, NewJob(id=job_id, kind=kind, params={"params": {}}, queue=queue))
        total = store.copy_requests(
            conn,
            job_id,
            (
                NewRequest(idx=i, model=m, provider="openai", messages=MESSAGES, est_tokens=5)
                for i, m in enumerate(models)
            ),
        )
        store.set_total(conn, job_id, total)
    return job_id


def _released(engine: Engine, job_id: uuid.UUID) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(R.idx).where(R.job_id == job_id, R.dispatched_at.is_not(None)).order_by(R.idx)
            ).scalars()
        )


def _finish(engine: Engine, store: JobStore, job_id: uuid.UUID, indices: Sequence[int]) -> None:
    """Requests that ran and ended (as a worker would), leaving the window."""
    for idx in indices:
        with engine.begin() as conn:
            claimed = store.claim_request(conn, job_id, idx, timeout_s=60, margin_s=5, worker_id=None)
            assert claimed is not None
            from batcher._db.rows import Answer

            store.record_success(conn, claimed, Answer({"id": "x"}, "openai", "m", None, 1.0))


def test_the_window_is_never_exceeded_and_refills_as_requests_finish(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    store = store_for(engine)
    job_id = _job(engine, ["m"] * 30)
    dispatcher = _dispatcher(engine, redis_client, broker)
    report = dispatcher.tick()
    assert (report.capacity, report.released) == (WINDOW_MIN, WINDOW_MIN)  # no live worker: the minimum
    assert broker.of(job_id) == list(range(WINDOW_MIN)) == _released(engine, job_id)
    assert {queue for _, _, queue in broker.sent} == {"q"}
    assert dispatcher.tick().released == 0  # full: nothing more
    _finish(engine, store, job_id, [0, 1, 2])
    assert dispatcher.tick().released == 3
    assert broker.of(job_id) == list(range(WINDOW_MIN + 3)) == _released(engine, job_id)  # each exactly once


def test_a_job_with_nothing_in_flight_goes_to_the_front_of_the_queue(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    store = store_for(engine)
    big = _job(engine, ["m"] * 100)
    dispatcher = _dispatcher(engine, redis_client, broker)
    dispatcher.tick()
    assert broker.fronted == [big]  # its first window: nothing of it was in flight
    small = _job(engine, ["m"] * 3)
    _finish(engine, store, big, range(6))
    broker.fronted.clear()
    dispatcher.tick()
    assert broker.of(small) == [0, 1, 2]
    assert broker.fronted == [small]  # the newcomer jumps the waiting messages; the running job does not


def test_the_window_follows_the_live_workers_slots(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    job_id = _job(engine, ["m"] * 100)
    with engine.begin() as conn:
        recovery.register_worker(conn, worker_id="w1", hostname="h", pid=1, queues=["q"], concurrency=10)
        recovery.register_worker(conn, worker_id="w2", hostname="h", pid=2, queues=["q"], concurrency=15)
    report = _dispatcher(engine, redis_client, broker).tick()
    assert report.capacity == capacity_for(25, Settings(window_min=WINDOW_MIN, window_per_slot=2)) == 50
    assert len(broker.of(job_id)) == 50


def test_a_refused_publish_releases_nothing(engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker) -> None:
    job_id = _job(engine, ["m"] * 4)
    dispatcher = _dispatcher(engine, redis_client, broker)
    broker.down = True
    with pytest.raises(ConnectionError):
        dispatcher.tick()
    assert _released(engine, job_id) == []  # never released without a message
    broker.down = False
    assert dispatcher.tick().released == 4
    assert broker.of(job_id) == [0, 1, 2, 3]


def test_a_lost_redis_sends_every_queued_released_request_again(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    store = store_for(engine)
    job_id = _job(engine, ["m"] * 6)
    dispatcher = _dispatcher(engine, redis_client, broker)
    first = dispatcher.tick()
    assert first.reconciled and first.released == 6
    assert redis_client.exists(_keys.DISPATCH_EPOCH_KEY) and redis_client.ttl(_keys.DISPATCH_EPOCH_KEY) == -1
    _finish(engine, store, job_id, [0])
    with engine.begin() as conn:  # request 1 is running on a worker: its message is not in the broker any more
        assert store.claim_request(conn, job_id, 1, timeout_s=60, margin_s=5, worker_id=None) is not None
    assert dispatcher.tick().released == 0
    redis_client.flushall()  # every message is gone, and the epoch with them
    broker.sent.clear()
    report = dispatcher.tick()
    assert (report.reconciled, report.taken_back, report.released) == (True, 4, 4)
    assert broker.of(job_id) == [2, 3, 4, 5]  # the queued ones, once each; neither the done nor the running one
    assert dispatcher.tick().released == 0


def test_an_adaptive_limit_caps_its_model_and_not_the_others(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    job_id = _job(engine, ["slow", "fast"] * 4)
    redis_client.set(_keys.adaptive_key("openai", "slow"), 2)
    _dispatcher(engine, redis_client, broker).tick()
    with engine.connect() as conn:
        models = conn.execute(
            select(R.model).where(R.job_id == job_id, R.dispatched_at.is_not(None)).order_by(R.idx)
        ).scalars()
        released = list(models)
    assert released.count("slow") == 2 and released.count("fast") == 4


def test_a_race_is_released_whole_even_when_the_window_is_full(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    batch = _job(engine, ["m"] * 20)
    dispatcher = _dispatcher(engine, redis_client, broker)
    dispatcher.tick()
    race = _job(engine, ["a", "b", "c"], kind="fastest", queue="q.race")
    report = dispatcher.tick()
    assert report.races_released == 3 and report.released == 0
    assert broker.of(race) == [0, 1, 2]
    assert {queue for job, _, queue in broker.sent if job == race} == {"q.race"}
    assert len(broker.of(batch)) == WINDOW_MIN


def test_a_cancelled_job_releases_nothing_more(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    store = store_for(engine)
    cancelled = _job(engine, ["m"] * 20)
    other = _job(engine, ["m"] * 20)
    dispatcher = _dispatcher(engine, redis_client, broker)
    dispatcher.tick()
    with engine.begin() as conn:
        store.cancel_job(conn, cancelled)
        store.finalize_job(conn, cancelled)
    before = len(broker.of(cancelled))
    for _ in range(3):
        dispatcher.tick()
    assert len(broker.of(cancelled)) == before
    assert len(broker.of(other)) == WINDOW_MIN  # the cancelled job's slots went to the other


def test_an_idle_cluster_writes_nothing_and_an_active_one_its_standing(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    dispatcher = _dispatcher(engine, redis_client, broker)
    report = dispatcher.tick()
    assert (report.active_jobs, report.released) == (0, 0)
    assert not redis_client.exists(_keys.DISPATCH_STANDING_KEY)
    job_id = _job(engine, ["m"] * 20)
    dispatcher.tick()
    standing = json.loads(redis_client.hget(_keys.DISPATCH_STANDING_KEY, str(job_id)) or b"{}")
    assert set(standing) == {"position", "ahead", "share", "rate"}
    assert 0 < redis_client.ttl(_keys.DISPATCH_STANDING_KEY) <= _keys.DISPATCH_STANDING_TTL_S


def test_a_running_request_taken_back_from_a_dead_worker_stays_in_the_window(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    """Reaped requests keep their release (the sweep sends them a new message): no second release."""
    store = store_for(engine)
    job_id = _job(engine, ["m"] * 3)
    dispatcher = _dispatcher(engine, redis_client, broker)
    dispatcher.tick()
    with engine.begin() as conn:
        recovery.register_worker(conn, worker_id="dead", hostname="h", pid=1, queues=["q"], concurrency=1)
        assert store.claim_request(conn, job_id, 0, timeout_s=60, margin_s=5, worker_id="dead") is not None
        conn.execute(update(Request.__table__).where(R.job_id == job_id, R.idx == 0).values(lease_until=None))
        conn.execute(update(recovery.W).where(recovery.W.c.id == "dead").values(stopped_at=recovery.W.c.heartbeat_at))
    with engine.begin() as conn:
        reaped = recovery.reap_lost(conn, lapse_s=1, default_max_attempts=5, stuck_s=3600)
    assert [(r.idx, r.state) for r in reaped] == [(0, "queued")]
    broker.sent.clear()
    assert dispatcher.tick().released == 0
    assert _released(engine, job_id) == [0, 1, 2]


def test_a_wake_up_ticks_the_loop_before_its_interval(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    """The loop waits on the wake channel: with an interval of a minute, only the wake-up can release."""
    import threading

    from batcher._dispatch import wake
    from tests.integration.helpers import until

    settings = Settings(window_min=WINDOW_MIN, queue="q", race_queue="q.race", dispatch_interval_s=60)
    dispatcher = Dispatcher(engine, store_for(engine), redis_client, broker.publish, settings)
    stop = threading.Event()
    ticks: list[int] = []
    real_tick = dispatcher.tick

    def counted_tick() -> object:
        report = real_tick()
        ticks.append(report.released)
        return report

    dispatcher.tick = counted_tick  # type: ignore[method-assign]
    thread = threading.Thread(target=dispatcher.run, args=(stop, lambda: True), daemon=True)
    thread.start()
    try:
        until(lambda: ticks and redis_client.pubsub_numsub(_keys.DISPATCH_WAKE_CHANNEL)[0][1], 10, "subscribed")
        job_id = _job(engine, ["m"] * 3)
        wake(redis_client)
        until(lambda: broker.of(job_id) == [0, 1, 2], 10, "released on the wake-up")
    finally:
        stop.set()
        wake(redis_client)
        thread.join(10)
    assert not thread.is_alive()


def test_a_job_on_a_queue_no_live_worker_consumes_is_not_released(
    engine: Engine, redis_client: fakeredis.FakeRedis, broker: Broker
) -> None:
    store = store_for(engine)
    with engine.begin() as conn:
        recovery.register_worker(conn, worker_id="w1", hostname="h", pid=1, queues=["q", "q.race"], concurrency=5)
    served = _job(engine, ["m"] * 3)
    idle = _job(engine, ["m"] * 3, queue="nobody")
    dispatcher = _dispatcher(engine, redis_client, broker)
    assert dispatcher.tick().released == 3
    assert broker.of(served) == [0, 1, 2] and broker.of(idle) == []
    assert redis_client.hget(_keys.DISPATCH_STANDING_KEY, str(idle)) is None
    assert redis_client.hget(_keys.DISPATCH_STANDING_KEY, str(served)) is not None
    _finish(engine, store, served, [0, 1, 2])
    with engine.begin() as conn:
        store.finalize_job(conn, served)
    dispatcher.tick()
    assert redis_client.hget(_keys.DISPATCH_STANDING_KEY, str(served)) is None  # ended: its entry goes
