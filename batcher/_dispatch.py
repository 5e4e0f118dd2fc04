"""The dispatcher: Postgres holds the backlog, the broker holds a bounded window, refilled here.

A job's requests are stored ``queued`` with ``dispatched_at`` NULL (the backlog). At each tick
(``BATCHER_DISPATCH_INTERVAL_S``, or sooner when a submission wakes it on ``DISPATCH_WAKE_CHANNEL``)
the cluster's leader (``workers._liveness``) tops the broker up:

1. **Reconcile.** ``DISPATCH_EPOCH_KEY`` missing means Redis is new or lost its data (a flush, a
   restart without persistence): every request released but still ``queued`` lost its message, so it
   is taken back into the backlog (``JobStore.take_back``) before the key is set again (no expiry).
2. **Measure.** capacity = the live workers' slots (``workers.concurrency``, heartbeat recent) x
   ``BATCHER_WINDOW_PER_SLOT``, at least ``BATCHER_WINDOW_MIN``; free = capacity - released requests
   not final yet (``JobStore.window``). Redis thus holds O(workers x window) messages whatever the
   size of the jobs.
3. **Races first.** A race's requests are released by its submitter; one whose publish was refused is
   released here, whole, outside the window's accounting (it is a handful of requests).
4. **Plan.** Every other active job with a backlog becomes a ``JobView`` (owner, priority, deadline,
   the owner's weight and quota, the average estimated tokens of its backlog); a model whose adaptive
   limit is known (``adaptive_key``, written by workers) caps what may be released of it (in flight ≤
   the limit). ``FairScheduler.plan`` shares the free slots (``batcher._scheduling``).
5. **Release** each grant (``release_job``): the release statement stamps ``dispatched_at`` and the
   messages are published *before* the commit, so a request is never released without a message; then
   the scheduler is charged what really went.
6. **Standing.** Every active job's place in line (``FairScheduler.standing``) and its completions per
   second go to ``DISPATCH_STANDING_KEY`` (expiring: no dispatcher, no standing); entries it wrote for
   jobs that ended are removed.

Only jobs whose queue a live worker consumes (``workers.queues``) are released: messages nobody takes
would only occupy Redis and the window. With no worker registered, every queue counts.

An idle cluster costs one ``EXISTS`` and one indexed read per tick. Nothing is logged per tick at INFO.
The tick is a plain method over a store, an engine, a Redis client and a publish function, so it is
tested without workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis
from sqlalchemy import Engine

from batcher import _keys
from batcher._config import Settings
from batcher._db import recovery
from batcher._db.contract import JobStore
from batcher._db.rows import ActiveJob, Released
from batcher._scheduling import FairScheduler, JobView
from batcher._states import JobKind

log = logging.getLogger("batcher.dispatch")


class Publish(Protocol):
    """``publish(job_id, indices, queue, front=False)``: one message per index; raises when the broker
    refuses. ``front``: the messages go where workers take the next one (ahead of those waiting)."""

    def __call__(self, job_id: uuid.UUID, indices: Sequence[int], queue: str, *, front: bool = False) -> None: ...


CAPACITY_REFRESH_S = 1.0
"""The live workers' slots are read at most this often (a worker joining or dying changes them rarely)."""
RATE_SMOOTHING = 0.3
"""Weight of the latest tick in each job's completions-per-second estimate (an exponential average)."""
FAILURE_LOG_EVERY_S = 30.0
"""A dispatcher that keeps failing (Redis or the database away) says so at most this often."""


def queue_for(kind: JobKind | str, settings: Settings, recorded: str | None = None) -> str:
    """The queue of a job's requests: the one recorded on the job at submission, else by kind (races
    have their own queue, so a race never waits behind a large batch)."""
    if recorded:
        return recorded
    return settings.race_queue if JobKind(kind) is JobKind.FASTEST else settings.queue


def capacity_for(slots: int, settings: Settings) -> int:
    """The window: requests released and not final that the cluster keeps at most."""
    return max(settings.window_min, slots * settings.window_per_slot)


def release_job(
    engine: Engine,
    store: JobStore,
    publish: Publish,
    job_id: uuid.UUID,
    limit: int,
    *,
    queue: str,
    provider: str | None = None,
    model: str | None = None,
    front: bool = False,
    mark_enqueued: bool = False,
) -> list[Released]:
    """Release up to ``limit`` backlog requests of a job and publish their messages, in one transaction
    that commits only after the publish: a refused publish raises and rolls the release back.
    ``mark_enqueued``: stamp the job's ``enqueued_at`` in the same transaction (a race's submitter: one
    commit, not two, on the path to its first answer)."""
    with engine.begin() as conn:
        released = store.release(conn, job_id, limit, provider=provider, model=model)
        if released:
            publish(job_id, [r.idx for r in released], queue, front=front)
        if mark_enqueued:
            store.mark_enqueued(conn, job_id)
    return released


def wake(client: Any) -> None:
    """Ask the dispatcher to tick now (a submission, best effort: it ticks anyway within its interval)."""
    if client is None:
        return
    try:
        client.publish(_keys.DISPATCH_WAKE_CHANNEL, b"1")
    except (redis.RedisError, OSError) as exc:
        log.debug("could not wake the dispatcher: %s", exc)


@dataclass
class TickReport:
    """What one tick did (for tests and debugging)."""

    reconciled: bool = False
    taken_back: int = 0
    capacity: int = 0
    in_flight: int = 0
    released: int = 0
    races_released: int = 0
    active_jobs: int = 0


@dataclass
class _Rate:
    at: float
    done: int
    per_s: float = 0.0


class Dispatcher:
    """The tick and its loop (see the module docstring). Holds only soft state: the scheduler's virtual
    times and the jobs' rates, which a new leader's dispatcher starts afresh."""

    def __init__(
        self,
        engine: Engine,
        store: JobStore,
        client: Any,
        publish: Publish,
        settings: Settings,
        *,
        scheduler: FairScheduler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.store = store
        self.redis = client
        self.publish = publish
        self.settings = settings
        self.scheduler = scheduler or FairScheduler()
        self.clock = clock
        self._capacity: tuple[float, int, frozenset[str] | None] | None = None
        self._standing_ids: set[str] = set()
        self._rates: dict[uuid.UUID, _Rate] = {}
        self._failing_since: float | None = None
        self._last_failure_log = 0.0

    # --- one tick -----------------------------------------------------------------------------------

    def tick(self) -> TickReport:
        report = TickReport()
        self._reconcile(report)
        capacity, consumed = self._current_capacity()
        report.capacity = capacity
        per_job: dict[uuid.UUID, int] = defaultdict(int)
        per_model: dict[tuple[str, str], int] = defaultdict(int)
        with self.engine.begin() as conn:
            for item in self.store.window(conn):
                per_job[item.job_id] += item.count
                per_model[(item.provider, item.model)] += item.count
            report.in_flight = sum(per_job.values())
            free = capacity - report.in_flight
            # The head of each backlog is read only as far as this tick can release.
            jobs = self.store.dispatch_backlog(conn, cap=max(1, min(capacity, free)))
        if consumed is not None:  # a queue no live worker consumes: its messages would only sit in Redis
            jobs = [job for job in jobs if queue_for(job.kind, self.settings, job.queue) in consumed]
        report.active_jobs = len(jobs)
        if not jobs:
            self._rates.clear()
            if self._standing_ids:  # the last active jobs ended: their entries go too
                self.redis.hdel(_keys.DISPATCH_STANDING_KEY, *self._standing_ids)
                self._standing_ids = set()
            return report
        now = datetime.now(UTC)
        self._update_rates(jobs)

        batches = []
        for job in jobs:
            if job.kind == JobKind.FASTEST.value:
                report.races_released += self._release_race(job)
            else:
                batches.append(job)

        room = self._adaptive_room(batches, per_model)
        views = {job.id: self._view(job, per_job.get(job.id, 0), room) for job in batches}
        rate = sum(r.per_s for r in self._rates.values()) or None
        if any(v.backlog > 0 for v in views.values()):
            by_id = {job.id: job for job in batches}
            # Every active job, those without a backlog too: their in-flight requests count against
            # their owner's quota, and the scheduler's virtual times follow who is active.
            for grant in self.scheduler.plan(list(views.values()), max(0, free), now, rate=rate):
                if grant.count <= 0 or grant.job_id not in by_id:
                    continue
                # A job with nothing in flight (new, or held back until now) has its grant put at the
                # front of the queue: it starts within a tick instead of behind the window's backlog.
                # Only latency moves: its share is what the policy granted.
                front = views[grant.job_id].in_flight == 0
                released = self._release(by_id[grant.job_id], grant.count, room, front=front)
                if released:
                    report.released += len(released)
                    tokens = sum(r.est_tokens or 1 for r in released)
                    self.scheduler.charge(views[grant.job_id], len(released), tokens)
        self._write_standing(list(views.values()), capacity, now, rate)
        return report

    def _reconcile(self, report: TickReport) -> None:
        if self.redis.exists(_keys.DISPATCH_EPOCH_KEY):
            return
        with self.engine.begin() as conn:
            report.taken_back = self.store.take_back(conn)
        self.redis.set(_keys.DISPATCH_EPOCH_KEY, str(time.time()))
        report.reconciled = True
        log.info(
            "the broker holds no dispatch epoch (new, flushed or restarted): %d released requests "
            "taken back into the backlog to be released again",
            report.taken_back,
        )

    def _current_capacity(self) -> tuple[int, frozenset[str] | None]:
        """The window, and the queues live workers consume (``None``: any, as when no worker registered yet
        or one lists no queue)."""
        now = self.clock()
        if self._capacity is not None and now - self._capacity[0] < CAPACITY_REFRESH_S:
            return self._capacity[1], self._capacity[2]
        with self.engine.begin() as conn:
            workers = recovery.live_workers(conn, lapse_s=self.settings.worker_lapse_s)
        capacity = capacity_for(sum(int(w.get("concurrency") or 0) for w in workers), self.settings)
        listed = [[q for q in str(w.get("queues") or "").split(",") if q] for w in workers]
        consumed = None if not workers or not all(listed) else frozenset(q for qs in listed for q in qs)
        self._capacity = (now, capacity, consumed)
        return capacity, consumed

    def _update_rates(self, jobs: Sequence[ActiveJob]) -> None:
        now = self.clock()
        fresh: dict[uuid.UUID, _Rate] = {}
        for job in jobs:
            last = self._rates.get(job.id)
            if last is None:
                fresh[job.id] = _Rate(now, job.done)
                continue
            elapsed = now - last.at
            if elapsed <= 0:
                fresh[job.id] = last
                continue
            latest = max(0, job.done - last.done) / elapsed
            fresh[job.id] = _Rate(now, job.done, RATE_SMOOTHING * latest + (1 - RATE_SMOOTHING) * last.per_s)
        self._rates = fresh

    def _adaptive_room(
        self, jobs: Sequence[ActiveJob], per_model: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str], int]:
        """For each model of the backlogs whose adaptive limit is known: how many more may be in flight."""
        models = sorted({(part.provider, part.model) for job in jobs for part in job.backlog})
        if not models:
            return {}
        limits = self.redis.mget([_keys.adaptive_key(p, m) for p, m in models])
        room = {}
        for key, raw in zip(models, limits, strict=True):
            if raw is None:
                continue
            try:
                limit = int(float(raw))
            except ValueError:
                continue
            room[key] = max(0, limit - per_model.get(key, 0))
        return room

    def _view(self, job: ActiveJob, in_flight: int, room: dict[tuple[str, str], int]) -> JobView:
        """The job for the policy. Its backlog is its whole size (what deadlines at risk are judged by),
        unless a model's adaptive limit caps it: then what the head of the backlog may release now."""
        tokens = sum(part.tokens for part in job.backlog)
        counted = sum(part.count for part in job.backlog)
        releasable = max(0, job.total - job.done - in_flight) if job.backlog else 0
        if any((part.provider, part.model) in room for part in job.backlog):
            releasable = sum(min(part.count, room.get((part.provider, part.model), part.count)) for part in job.backlog)
        return JobView(
            id=job.id,
            owner=job.owner_id,
            priority=job.priority,
            deadline_at=job.deadline_at,
            created_at=job.created_at,
            backlog=releasable,
            in_flight=in_flight,
            tokens_per_request=tokens / counted if counted else 1.0,
            weight=job.weight,
            owner_max_concurrent=job.max_concurrent,
        )

    def _release(
        self, job: ActiveJob, count: int, room: dict[tuple[str, str], int], *, front: bool = False
    ) -> list[Released]:
        queue = queue_for(job.kind, self.settings, job.queue)
        if not any((part.provider, part.model) in room for part in job.backlog):
            return release_job(self.engine, self.store, self.publish, job.id, count, queue=queue, front=front)
        released: list[Released] = []
        for part in job.backlog:
            key = (part.provider, part.model)
            allowed = min(part.count, count - len(released), room.get(key, part.count))
            if allowed <= 0:
                continue
            got = release_job(
                self.engine,
                self.store,
                self.publish,
                job.id,
                allowed,
                queue=queue,
                provider=part.provider,
                model=part.model,
                front=front,
            )
            if key in room:
                room[key] -= len(got)
            released += got
        return released

    def _release_race(self, job: ActiveJob) -> int:
        if not job.backlog:
            return 0
        queue = queue_for(job.kind, self.settings, job.queue)
        return len(release_job(self.engine, self.store, self.publish, job.id, job.total, queue=queue))

    def _write_standing(self, views: list[JobView], capacity: int, now: datetime, rate: float | None) -> None:
        standing = self.scheduler.standing(views, capacity, now, rate=rate) if views else {}
        mapping = {}
        for job_id, place in standing.items():
            entry = {"position": place.position, "ahead": place.ahead, "share": place.share}
            entry["rate"] = round(self._rates[job_id].per_s, 3) if job_id in self._rates else 0.0
            mapping[str(job_id)] = json.dumps(entry)
        gone = self._standing_ids - set(mapping)  # entries this dispatcher wrote for jobs no longer active
        pipe = self.redis.pipeline(transaction=False)
        if gone:
            pipe.hdel(_keys.DISPATCH_STANDING_KEY, *gone)
        if mapping:
            pipe.hset(_keys.DISPATCH_STANDING_KEY, mapping=mapping)
            pipe.expire(_keys.DISPATCH_STANDING_KEY, _keys.DISPATCH_STANDING_TTL_S)
        pipe.execute()
        self._standing_ids = set(mapping)

    # --- the loop -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event, leading: Callable[[], bool]) -> None:
        """Tick every ``dispatch_interval_s`` while ``leading()``, woken early by the wake channel; until ``stop``."""
        interval = self.settings.dispatch_interval_s
        pubsub: Any = None
        while not stop.is_set():
            if not leading():
                _close(pubsub)
                pubsub = None
                stop.wait(interval)
                continue
            try:
                self.tick()
                self._failing_since = None
            except Exception as exc:  # never let the loop die: Redis or the database may be away for a while
                self._failed(exc)
            pubsub = self._wait(pubsub, stop, interval)
        _close(pubsub)

    def _failed(self, exc: BaseException) -> None:
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_failure_log >= FAILURE_LOG_EVERY_S:
            self._last_failure_log = now
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.warning("dispatcher tick failed (retrying every tick): %s: %s", type(exc).__name__, first[:300])

    def _wait(self, pubsub: Any, stop: threading.Event, interval: float) -> Any:
        """Sleep up to ``interval``, returning early on a wake-up; keeps the subscription between ticks."""
        try:
            if pubsub is None:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(_keys.DISPATCH_WAKE_CHANNEL)
            if pubsub.get_message(timeout=interval) is not None:
                while pubsub.get_message(timeout=0) is not None:  # several wake-ups: one tick
                    pass
            return pubsub
        except (redis.RedisError, OSError, ValueError):
            _close(pubsub)
            stop.wait(interval)
            return None


def _close(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):  # closing a subscription on a dead connection
            pubsub.close()
