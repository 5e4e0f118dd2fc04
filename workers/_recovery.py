"""The recovery sweep: Postgres says what must still happen; make sure the broker knows.

Run every ``BATCHER_RECOVERY_INTERVAL_S`` by the cluster's leader (one worker, elected through a
Postgres advisory lock: ``workers._liveness``), and on demand by ``batcher recover``. Every step
is idempotent and re-sending is always safe (a request is claimed atomically, so a duplicate
message is a no-op), but each step also takes care not to create duplicates. What it repairs, in
order:

1. **A worker died** (``kill -9``, OOM kill, lost machine): its heartbeat lapsed, so every request
   it was running is queued again (or ``failed`` with ``WorkerLostError`` once the worker was lost
   as often as the request's attempt budget, or ``cancelled`` if its job is being cancelled), and
   its message is moved back from the dead worker's unacknowledged set to the queue (or published
   afresh if Redis no longer has it). A new leader waits one lapse before reaping, so workers cut
   off from Postgres for a while (an outage) are not declared dead on their first missed beat.
2. **Messages stranded with a dead worker**: messages delivered ``BATCHER_STRANDED_MESSAGE_S``
   ago whose request never started go back to their queue.
3. **A delayed retry's message was lost**: retries overdue by ``BATCHER_QUEUED_GRACE_S``.
4. **Orphans**: with the active jobs' queues empty, a queued request *released* to the broker
   (``dispatched_at`` set) that no worker holds has lost its message (seen twice in a row, to let a
   delivery in progress land): it is published again (it stays released, in the window).
5. Deadlines (unsent requests end ``expired``) and finalizers (jobs whose requests are all final).
6. Pruning: rows of long-gone workers, and uploaded or output files past their ``expires_at``.

Requests still in the backlog need nothing from the sweep: the dispatcher (``batcher._dispatch``)
releases them, and takes back what Redis lost when it finds its epoch key gone. Reaped and handed-back
requests stay released: they get a new message here, and keep their place in the window.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import redis
from sqlalchemy import Connection

from batcher import _files_store
from batcher._db import recovery
from batcher._db.recovery import ActiveJob, RequestRef
from batcher._dispatch import queue_for
from batcher._publish import RUN_REQUEST_TASK, task_id
from batcher._submit import kombu_errors, publisher_for
from workers import _execute
from workers._broker import BrokerMessages, HeldMessage
from workers._context import WorkerContext

log = logging.getLogger("batcher.recovery")

REAPED_JITTER_S = 2.0
"""A request taken back from a dead worker runs again after a random delay of up to this."""
WORKER_RETENTION_S = 86_400.0
"""Rows of workers that stopped or died are kept a day (the dashboard and ``batcher workers`` show them)."""
ORPHAN_CONFIRMATIONS = 2
"""Sweeps in a row that must see a queued request without any message before it is re-sent."""


@dataclass
class SweepReport:
    requests_reaped: int = 0
    requests_failed_worker_lost: int = 0
    messages_moved_back: int = 0
    requests_republished: int = 0
    jobs_expired: int = 0
    jobs_finalized: int = 0
    files_expired: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}


@dataclass
class SweepState:
    """What one leader remembers between sweeps."""

    orphan_candidates: dict[tuple[uuid.UUID, int], int] = field(default_factory=dict)


def sweep(
    ctx: WorkerContext, conn: Connection | None = None, *, reap: bool = True, state: SweepState | None = None
) -> SweepReport:
    """One pass. ``conn`` is the leader's own session (its loss aborts the pass: the fence);
    ``reap=False`` skips step 1 (a new leader's first lapse)."""
    if conn is None:
        with ctx.engine.connect() as own:
            return sweep(ctx, own, reap=reap, state=state)
    settings = ctx.settings
    report = SweepReport()
    state = state or SweepState()
    broker = broker_messages(ctx)
    to_publish: list[RequestRef] = []
    reaped_refs: list[RequestRef] = []
    finished_jobs: set[uuid.UUID] = set()

    # 1. Requests whose worker is gone.
    if reap:
        with conn.begin():
            reaped = recovery.reap_lost(
                conn,
                lapse_s=settings.worker_lapse_s,
                default_max_attempts=settings.max_attempts,
                stuck_s=settings.store_retry_window_s + settings.worker_lapse_s,
            )
        for item in reaped:
            if item.state == "queued":
                report.requests_reaped += 1
                reaped_refs.append(RequestRef(item.job_id, item.idx, item.kind, item.queue))
            else:
                report.requests_failed_worker_lost += int(item.state == "failed")
                finished_jobs.add(item.job_id)

    held: list[HeldMessage] = list(broker.held()) if broker is not None else []
    held_by_request = {(m.job_id, m.idx): m for m in held}

    # 1b. A reaped request's old message (held by the dead worker) is dropped and a new one sent,
    # each after a random short delay: requests that died together do not all run together again,
    # so a poison request ends up alone when it kills its next worker, and its neighbours survive.
    if broker is not None and reaped_refs:
        reaped_keys = {(r.job_id, r.idx) for r in reaped_refs}
        broker.forget([m for m in held if (m.job_id, m.idx) in reaped_keys])
        held = [m for m in held if (m.job_id, m.idx) not in reaped_keys]
        held_by_request = {(m.job_id, m.idx): m for m in held}
    report.requests_republished += publish_each(ctx, reaped_refs, jitter_s=REAPED_JITTER_S)

    # 2. Messages a dead worker held (received, not finished): back to their queue, at once. Each
    # worker has its own unacknowledged set, so the holder is known; a live worker's are left alone.
    if broker is not None:
        with conn.begin():
            alive = recovery.worker_liveness(conn, lapse_s=settings.worker_lapse_s)
        abandoned = _abandoned(conn, held, alive, reap=reap, stranded_s=settings.stranded_message_s)
        report.messages_moved_back = broker.move_back(abandoned)
        moved = {(m.job_id, m.idx) for m in abandoned}
        held = [m for m in held if (m.job_id, m.idx) not in moved]

    with conn.begin():
        active = recovery.active_jobs(conn)

    # 3. Retries whose delayed message was lost.
    with conn.begin():
        overdue = recovery.overdue_retries(conn, grace_s=settings.queued_grace_s)
    to_publish += [r for r in overdue if (r.job_id, r.idx) not in held_by_request]

    # 4. Orphans: queues empty, yet released queued requests that no worker holds.
    if broker is not None:
        to_publish += _orphans(ctx, conn, broker, active, held_by_request, state)

    report.requests_republished += publish_each(ctx, to_publish)

    # 5. Deadlines and finalizers.
    with conn.begin():
        report.jobs_expired = len(ctx.store.expire_overdue(conn))
        due: list[uuid.UUID] = ctx.store.jobs_due_for_finalize(conn)
    for job_id in {*due, *finished_jobs}:
        if _execute.finalize(ctx, str(job_id)) is not None:
            report.jobs_finalized += 1
    with conn.begin():
        recovery.prune_workers(conn, older_than_s=WORKER_RETENTION_S)
    with conn.begin():
        report.files_expired = _files_store.prune_expired(conn)
    if any(asdict(report).values()):
        log.info("recovery sweep: %s", report.as_dict())
    return report


def _abandoned(
    conn: Connection, held: list[HeldMessage], alive: dict[str, bool], *, reap: bool, stranded_s: float
) -> list[HeldMessage]:
    """Held messages whose holder is gone: a dead or stopped worker's (once reaping is allowed), and,
    where the holder is unknown (kombu's shared set, a worker that never registered), messages
    delivered ``stranded_s`` ago whose request never started."""
    cutoff = time.time() - stranded_s
    out = [m for m in held if m.holder is not None and alive.get(m.holder) is False and reap]
    unknown = [m for m in held if (m.holder is None or m.holder not in alive) and m.delivered_at < cutoff]
    if unknown:
        with conn.begin():
            states = recovery.request_states(conn, [(m.job_id, m.idx) for m in unknown])
        out += [m for m in unknown if states.get((m.job_id, m.idx)) == "queued"]
    return out


def broker_messages(ctx: WorkerContext) -> BrokerMessages | None:
    """The broker's view, when it is Redis (embedded mode's in-memory broker dies with its process)."""
    url = ctx.settings.redis_url
    if not url.startswith(("redis://", "rediss://")):
        return None
    prefix = str(ctx.app.conf.broker_transport_options.get("global_keyprefix", ""))
    return BrokerMessages(ctx.redis, prefix=prefix)


def _orphans(
    ctx: WorkerContext,
    conn: Connection,
    broker: BrokerMessages,
    active: list[ActiveJob],
    held: dict[tuple[uuid.UUID, int], HeldMessage],
    state: SweepState,
) -> list[RequestRef]:
    queues = {queue_for(job.kind, ctx.settings, job.queue) for job in active}
    if not active or any(broker.queue_length(queue) for queue in queues):
        state.orphan_candidates.clear()
        return []
    with conn.begin():
        queued = recovery.released_queued_requests(conn, sorted(job.id for job in active))
    seen: dict[tuple[uuid.UUID, int], int] = {}
    out = []
    for ref in queued:
        key = (ref.job_id, ref.idx)
        if key in held:
            continue
        seen[key] = state.orphan_candidates.get(key, 0) + 1
        if seen[key] >= ORPHAN_CONFIRMATIONS:
            out.append(ref)
            del seen[key]
    state.orphan_candidates = seen
    return out


def publish_each(ctx: WorkerContext, refs: Iterable[RequestRef], *, jitter_s: float = 0.0) -> int:
    """A new message for each request (``jitter_s``: each due after a random delay up to that)."""
    by_queue: dict[tuple[uuid.UUID, str], list[int]] = defaultdict(list)
    for ref in refs:
        by_queue[(ref.job_id, queue_for(ref.kind, ctx.settings, ref.queue))].append(ref.idx)
    publisher = publisher_for(ctx.app)
    count = 0
    for (job_id, queue), indices in by_queue.items():
        try:
            if jitter_s > 0:
                for idx in sorted(set(indices)):
                    ctx.app.send_task(
                        RUN_REQUEST_TASK,
                        args=(str(job_id), idx),
                        task_id=task_id(job_id, idx),
                        countdown=random.uniform(0, jitter_s),
                        queue=queue,
                        ignore_result=True,
                    )
            else:
                publisher.publish_requests(job_id, sorted(set(indices)), queue=queue)
            count += len(indices)
        except (redis.RedisError, *kombu_errors()) as exc:  # type: ignore[misc]
            log.warning("could not re-publish %d requests of job %s yet: %s", len(indices), job_id, exc)
    return count
