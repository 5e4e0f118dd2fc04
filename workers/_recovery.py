"""The recovery sweep: Postgres says what must still happen; make sure the broker knows.

Run periodically by Celery beat (``batcher.recover``) and on demand by ``batcher recover``.
Re-enqueueing is always safe: a request is claimed atomically, so a duplicate message for
it is a no-op. What it repairs:

- a worker died mid-request (``kill -9``): the request's lease runs out and it is re-sent;
  messages it had reserved but not started are re-sent once their job stalls;
- Redis lost its data (FLUSHALL, restart without persistence), detected by the missing
  epoch key: every queued request of an active job is re-sent;
- a delayed retry message was lost: retrying requests overdue by the grace period;
- a submitter died between storing and publishing: jobs never marked enqueued;
- a job's deadline passed: its unsent requests end ``expired``;
- a finalizer message was lost: jobs whose requests are all final are finalized.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from itertools import groupby

from batcher import _keys
from batcher._db import store
from batcher._publish import publish_requests
from batcher._states import JobKind
from batcher._submit import enqueue
from workers import _execute
from workers._context import WorkerContext

log = logging.getLogger("batcher.recovery")


@dataclass
class SweepReport:
    broker_data_lost: bool = False
    requests_reenqueued: int = 0
    jobs_republished: int = 0
    jobs_expired: int = 0
    jobs_finalized: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}


def sweep(ctx: WorkerContext) -> SweepReport:
    settings = ctx.settings
    report = SweepReport()
    # SET NX returns True only when the key was missing: Redis lost its data, or this is the first sweep.
    report.broker_data_lost = bool(ctx.redis.set(_keys.BROKER_EPOCH_KEY, "1", nx=True))

    with ctx.engine.begin() as conn:
        stale = store.requests_to_reenqueue(
            conn, everything_queued=report.broker_data_lost, grace_s=settings.queued_grace_s
        )
        stale += store.stalled_requests(conn, stall_s=settings.stall_grace_s)
        never = store.jobs_never_enqueued(conn, grace_s=settings.queued_grace_s)
    for (job_id, kind), group in groupby(sorted(set(stale)), key=lambda row: (row[0], row[2])):
        indices = [idx for _, idx, _ in group]
        queue = settings.race_queue if kind == JobKind.FASTEST.value else settings.queue
        publish_requests(ctx.app, job_id, indices, queue=queue)
        report.requests_reenqueued += len(indices)
    for job_id, kind, total in never:
        enqueue(ctx.engine, ctx.app, settings, job_id, JobKind(kind), total)
        report.jobs_republished += 1

    with ctx.engine.begin() as conn:
        report.jobs_expired = len(store.expire_overdue(conn))
        due: list[uuid.UUID] = store.jobs_due_for_finalize(conn)
    for job_id in due:
        if _execute.finalize(ctx, str(job_id)) is not None:
            report.jobs_finalized += 1
    if any(asdict(report).values()):
        log.info("recovery sweep: %s", report.as_dict())
    return report
