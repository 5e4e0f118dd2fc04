"""Publishing request tasks to the broker, many at a time.

Tasks are sent by name (the submitter needs no task code), with ``ignore_result`` and a
deterministic id ``<job>:<index>``, so the submitting process never subscribes to result
channels and a re-publish of the same request is recognisably the same task. Messages carry
only ``(job_id, index)``: the prompt stays in Postgres, so Redis holds ~0.5 KB per request.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from celery import Celery, group

RUN_REQUEST_TASK = "batcher.run_request"
FINALIZE_JOB_TASK = "batcher.finalize_job"
RECOVER_TASK = "batcher.recover"

PUBLISH_BATCH_SIZE = 1_000
"""Messages buffered per pipelined flush to Redis (kombu's ``Producer.batch``)."""

FANOUT_GROUP_MAX = 64
"""Fan-outs up to this size (models of one prompt) are sent as one Celery ``group``."""


def task_id(job_id: uuid.UUID | str, idx: int) -> str:
    return f"{job_id}:{idx}"


def publish_requests(app: Celery, job_id: uuid.UUID, indices: Iterable[int], *, queue: str) -> None:
    """Enqueue one ``run_request`` task per index."""
    job = str(job_id)
    with app.producer_or_acquire() as producer, producer.batch(PUBLISH_BATCH_SIZE):
        for idx in indices:
            app.send_task(
                RUN_REQUEST_TASK,
                args=(job, idx),
                task_id=task_id(job, idx),
                queue=queue,
                ignore_result=True,
                producer=producer,
            )


def publish_fanout(app: Celery, job_id: uuid.UUID, count: int, *, queue: str) -> None:
    """Enqueue the per-model tasks of one prompt as a Celery group (one publish round)."""
    job = str(job_id)
    sigs = [
        app.signature(RUN_REQUEST_TASK, args=(job, idx)).set(task_id=task_id(job, idx), queue=queue, ignore_result=True)
        for idx in range(count)
    ]
    group(sigs).apply_async()


def publish_finalize(app: Celery, job_id: uuid.UUID | str, *, queue: str) -> None:
    app.send_task(FINALIZE_JOB_TASK, args=(str(job_id),), queue=queue, ignore_result=True)
