"""Publishing request tasks to the broker: many at a time, only what the dispatcher released.

Tasks are sent by name (the submitter needs no task code), with ``ignore_result`` and a
deterministic id ``<job>:<index>``, so the submitting process never subscribes to result
channels and a re-publish of the same request is recognisably the same task. Messages carry
only ``(job_id, index)``: the prompt stays in Postgres, so Redis holds ~0.9 KB per request.

**What is published.** Only requests released by the dispatcher (``batcher._dispatch``: Postgres
holds the backlog, the broker a bounded window), a race's requests released by its submitter, and
re-runs the recovery sweep sends. A release stamps ``dispatched_at`` in a transaction that commits
only after ``publish_requests`` returned: a refused publish leaves the requests in the backlog.

With a Redis broker, messages skip kombu's per-message machinery (~250 µs a message, most of
it entity copies and ``saferepr``): the Celery protocol-2 message is built once per queue from
Celery's own ``as_task_v2`` and only its id, arguments and delivery tag change per request.
The envelope is kombu's Redis format (what ``Channel._put`` writes). Other brokers (embedded
mode's in-memory transport) use kombu's batching.

**Withdrawing.** A cancelled job's messages still waiting in the queue are removed at once
(``withdraw_job``): the queue is short (the window), so scanning it costs little, and no worker
spends a slot on a message whose claim would do nothing.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Iterable

import redis
from celery import Celery

RUN_REQUEST_TASK = "batcher.run_request"
FINALIZE_JOB_TASK = "batcher.finalize_job"
RECOVER_TASK = "batcher.recover"

PUBLISH_BATCH_SIZE = 1_000
"""Messages per ``LPUSH`` (or kombu batch)."""
WITHDRAW_SCAN_CHUNK = 500
"""Messages read per ``LRANGE`` while a cancelled job's messages are withdrawn from a queue."""

_EMBED_JSON = json.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def task_id(job_id: uuid.UUID | str, idx: int) -> str:
    return f"{job_id}:{idx}"


def parse_task_id(value: str) -> tuple[str, int] | None:
    """``<job>:<index>`` back into its parts (``None`` for ids of other tasks)."""
    job, sep, idx = value.rpartition(":")
    if not sep or not idx.isdigit():
        return None
    return job, int(idx)


class Publisher:
    """Publishes requests of jobs for one Celery app (see the module docstring).

    ``coordination`` is the Redis of wake-ups when the broker is not Redis (embedded mode passes its
    in-process server); with a Redis broker the broker's own Redis serves.
    """

    def __init__(self, app: Celery, *, coordination: redis.Redis[bytes] | None = None) -> None:
        self.app = app
        self._broker = _redis_broker(app)
        self._coordination = coordination
        self._templates: dict[str, list[str]] = {}

    @property
    def redis(self) -> redis.Redis[bytes] | None:
        """The Redis of coordination (wake-ups): the broker's own, else embedded mode's in-process one."""
        return self._broker if self._broker is not None else self._coordination

    # --- messages ------------------------------------------------------------------------------

    def publish_requests(
        self, job_id: uuid.UUID | str, indices: Iterable[int], queue: str, *, front: bool = False
    ) -> None:
        """One ``run_request`` message per index (released requests, re-runs). Raises ``redis.RedisError`` /
        kombu's errors when the broker refuses: the caller's release then rolls back.

        ``front`` (Redis broker): the messages are pushed at the end workers take from (kombu pushes with
        ``LPUSH`` and consumes with ``BRPOP``), in order, so they run before those already waiting. Other
        brokers have no such end: the messages queue as usual."""
        job = str(job_id)
        batch = list(indices)
        for start in range(0, len(batch), PUBLISH_BATCH_SIZE):
            chunk = batch[start : start + PUBLISH_BATCH_SIZE]
            if self._broker is None:
                self._publish_kombu(job, chunk, queue)
            elif front:
                self._broker.rpush(self._queue_key(queue), *reversed(self._messages(job, chunk, queue)))
            else:
                self._broker.lpush(self._queue_key(queue), *self._messages(job, chunk, queue))

    # --- message building ----------------------------------------------------------------------

    def _queue_key(self, queue: str) -> str:
        prefix = self.app.conf.broker_transport_options.get("global_keyprefix", "")
        return f"{prefix}{queue}"

    def _messages(self, job: str, indices: Iterable[int], queue: str) -> list[str]:
        pieces = self._templates.get(queue)
        if pieces is None:
            pieces = self._templates[queue] = _template(self.app, queue)
        out = []
        for idx in indices:
            values = {
                "B": base64.b64encode(f'[["{job}",{idx}],{{}},{_EMBED_JSON}]'.encode()).decode(),
                "I": f"{job}:{idx}",
                "A": f"('{job}', {idx})",
                "T": str(uuid.uuid4()),
            }
            # pieces alternate: literal, slot name, literal, slot name, ..., literal
            out.append("".join(values[part] if i % 2 else part for i, part in enumerate(pieces)))
        return out

    def withdraw_job(self, job_id: uuid.UUID | str, queues: Iterable[str]) -> int:
        """Remove the job's messages still waiting in ``queues`` (a cancel); returns how many.

        Each is removed by its exact text (``LREM``), so a message a worker took meanwhile is simply not
        found. Only a Redis broker has a queue to scan (embedded mode's in-memory one dies with its process
        and its few no-op messages cost nothing).
        """
        if self._broker is None:
            return 0
        needle = f'"id": "{job_id}:'.encode()
        removed = 0
        for queue in dict.fromkeys(queues):
            key = self._queue_key(queue)
            start = 0
            while True:
                chunk = self._broker.lrange(key, start, start + WITHDRAW_SCAN_CHUNK - 1)
                if not chunk:
                    break
                mine = [raw for raw in chunk if needle in raw]
                for raw in mine:
                    removed += int(self._broker.lrem(key, 1, raw))
                start += len(chunk) - len(mine)  # what was removed shifted the rest down
        return removed

    def _publish_kombu(self, job: str, indices: Iterable[int], queue: str) -> None:
        with self.app.producer_or_acquire() as producer, producer.batch(PUBLISH_BATCH_SIZE):
            for idx in indices:
                self.app.send_task(
                    RUN_REQUEST_TASK,
                    args=(job, idx),
                    task_id=task_id(job, idx),
                    queue=queue,
                    ignore_result=True,
                    producer=producer,
                )


_clients: dict[str, redis.Redis[bytes]] = {}
_clients_lock = threading.Lock()


def _redis_broker(app: Celery) -> redis.Redis[bytes] | None:
    url = str(app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://")) or app.conf.broker_transport_options.get("sentinels"):
        return None
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis.Redis.from_url(url, socket_timeout=30)
        return client


_SLOTS = {"body": "\u0001B\u0001", "id": "\u0001I\u0001", "argsrepr": "\u0001A\u0001", "tag": "\u0001T\u0001"}


def _template(app: Celery, queue: str) -> list[str]:
    """Kombu's envelope around Celery's own headers for one ``run_request`` message, as a format.

    Returned as literal pieces and slot names, so each message is one ``str.join`` instead of a
    ``json.dumps`` of nested dicts (the slots' values are ids, base64 and digits: nothing to escape).
    """
    message = app.amqp.as_task_v2("TEMPLATE", RUN_REQUEST_TASK, args=("JOB", 0), kwargs={}, ignore_result=True)
    headers = dict(message.headers)
    headers["id"] = headers["root_id"] = _SLOTS["id"]
    headers["argsrepr"] = _SLOTS["argsrepr"]
    envelope = {
        "body": _SLOTS["body"],
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": _SLOTS["id"],
            "reply_to": app.thread_oid,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": _SLOTS["tag"],
        },
    }
    text = json.dumps(envelope).replace("\\u0001", "\u0001")
    return re.split("\u0001(B|I|A|T)\u0001", text)


def publish_finalize(app: Celery, job_id: uuid.UUID | str, *, queue: str) -> None:
    app.send_task(FINALIZE_JOB_TASK, args=(str(job_id),), queue=queue, ignore_result=True)
