"""The Celery application factory: broker, queues and the delivery guarantees every task relies on.

On the user side, so submitters (``Client``, the HTTP service) build their app without importing the
execution side; ``workers/celery_app.py`` builds the workers' app from it and adds what only a worker
needs (kombu's transport kept up under a full Redis, its signal hooks).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from batcher._config import Settings
from batcher._publish import FINALIZE_JOB_TASK, RECOVER_TASK
from batcher.evals.settings import EVAL_TICK_TASK

TASK_MODULES = ("workers.tasks", "workers.eval_tasks")
"""Where the tasks live, imported by worker processes only."""

MEMORY_POLLING_INTERVAL_S = 0.01


def make_celery_app(settings: Settings, *, coordination: Any = None) -> Celery:
    """A Celery app for these settings. Submitters use it to publish; workers to consume.

    ``coordination`` replaces the Redis client of race keys, wake-ups and rate limits
    (embedded mode passes its in-process server).
    """
    # Tasks are named, and their code lives on the execution side (``workers``): the app names the
    # modules for a worker to import, and a submitter never imports them (it publishes by name).
    app = Celery("batcher", broker=settings.redis_url, include=list(TASK_MODULES))
    app.conf.update(
        # "Not lost": a message is acknowledged only after its task returned, a worker killed
        # mid-task gives its message back, and a worker holds few unstarted messages.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # No result backend: outcomes live in Postgres. This also keeps senders from
        # subscribing to one result channel per task (celery#3808).
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Longer than any task can hold a message (timeout + the longest retry wait),
            # so Redis never hands a live message to a second worker.
            "visibility_timeout": settings.broker_visibility_timeout_s,
            # Only read by the in-memory transport (embedded mode): its 1 s default makes
            # 1,000 tasks take 30 s.
            "polling_interval": MEMORY_POLLING_INTERVAL_S if settings.redis_url.startswith("memory:") else 1.0,
        },
        task_default_queue=settings.queue,
        task_routes={
            FINALIZE_JOB_TASK: {"queue": settings.queue},
            RECOVER_TASK: {"queue": settings.queue},
            EVAL_TICK_TASK: {"queue": settings.queue},
        },
        # Task events feed Flower, but publishing three per task costs the consumer thread ~20 % of
        # a worker's throughput (docs/benchmarks.md). Off unless BATCHER_TASK_EVENTS=1: a running
        # Flower turns them on by remote control (its --enable_events, default on).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        # No beat schedule: the recovery sweep and the evaluation tick run inside the workers, on the
        # one elected leader (workers/_liveness.py). `batcher beat` is an optional extra contender.
    )
    app.conf.batcher_settings = settings
    app.conf.batcher_coordination = coordination
    return app


def worker_argv(*, concurrency: int, queues: list[str], loglevel: str, hostname: str | None = None) -> list[str]:
    """``celery worker`` arguments of a batcher worker: ``batcher worker`` runs these, and the tests
    and the benchmark start theirs with them.

    Threads pool (the work is waiting on providers). Gossip and mingle only matter to workers that
    talk to each other; heartbeats stay, since they keep the event dispatcher through which a
    running Flower switches task events on.
    """
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    return [*argv, f"--hostname={hostname}"] if hostname else argv
