"""Celery tasks. Thin: each delegates to a function that takes the worker context.

``shared_task``: registered on every app, the workers' and embedded mode's alike.
"""

from __future__ import annotations

from celery import Task, shared_task
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from batcher._publish import FINALIZE_JOB_TASK, RECOVER_TASK, RUN_REQUEST_TASK
from workers import _execute, _recovery
from workers._context import get_context

# Infrastructure faults (Postgres or Redis away): try again soon. Backoff capped at 10 s, so work
# resumes within seconds of the database's return; 60 tries cover a ~10 min outage, and the
# recovery sweep re-sends anything whose message ran out of tries.
_INFRA_FAULTS = (OperationalError, RedisConnectionError)
INFRA_RETRY_MAX = 60
INFRA_RETRY_BACKOFF_MAX_S = 10


@shared_task(
    name=RUN_REQUEST_TASK,
    bind=True,
    autoretry_for=_INFRA_FAULTS,
    retry_backoff=True,
    retry_backoff_max=INFRA_RETRY_BACKOFF_MAX_S,
    max_retries=INFRA_RETRY_MAX,
)
def run_request(self: Task, job_id: str, idx: int) -> str:
    return _execute.run_request(get_context(self.app), job_id, idx)


@shared_task(
    name=FINALIZE_JOB_TASK,
    bind=True,
    autoretry_for=_INFRA_FAULTS,
    retry_backoff=True,
    retry_backoff_max=INFRA_RETRY_BACKOFF_MAX_S,
    max_retries=INFRA_RETRY_MAX,
)
def finalize_job(self: Task, job_id: str) -> str | None:
    return _execute.finalize(get_context(self.app), job_id)


@shared_task(name=RECOVER_TASK, bind=True)
def recover(self: Task) -> dict[str, int]:
    return _recovery.sweep(get_context(self.app)).as_dict()
