"""Publishing request tasks to the broker, many at a time.

Tasks are sent by name (the submitter needs no task code), with ``ignore_result`` and a
deterministic id ``<job>:<index>``, so the submitting process never subscribes to result
channels and a re-publish of the same request is recognisably the same task. Messages carry
only ``(job_id, index)``: the prompt stays in Postgres, so Redis holds ~0.9 KB per request.

With a Redis broker, large jobs skip kombu's per-message machinery (~250 µs a message, most
of it entity copies and ``saferepr``): the Celery protocol-2 message is built once per job
from Celery's own ``as_task_v2`` and only its id, arguments and delivery tag change per
request; messages are ``LPUSH``ed ``PUBLISH_BATCH_SIZE`` at a time. The envelope is
kombu's Redis format (what ``Channel._put`` writes). Other brokers use kombu's batching.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Iterable

import redis
from celery import Celery, group

RUN_REQUEST_TASK = "batcher.run_request"
FINALIZE_JOB_TASK = "batcher.finalize_job"
RECOVER_TASK = "batcher.recover"

PUBLISH_BATCH_SIZE = 1_000
"""Messages per ``LPUSH`` to Redis."""

FANOUT_GROUP_MAX = 64
"""Fan-outs up to this size (models of one prompt) are sent as one Celery ``group``."""

_EMBED_JSON = json.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def task_id(job_id: uuid.UUID | str, idx: int) -> str:
    return f"{job_id}:{idx}"


def publish_requests(app: Celery, job_id: uuid.UUID, indices: Iterable[int], *, queue: str) -> None:
    """Enqueue one ``run_request`` task per index."""
    if _redis_broker(app) is not None:
        _publish_raw_redis(app, str(job_id), indices, queue)
        return
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


_clients: dict[str, redis.Redis[bytes]] = {}
_clients_lock = threading.Lock()


def _redis_broker(app: Celery) -> redis.Redis[bytes] | None:
    url = str(app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://")) or app.conf.broker_transport_options.get("sentinels"):
        return None
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis.Redis.from_url(url)
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


def _publish_raw_redis(app: Celery, job: str, indices: Iterable[int], queue: str) -> None:
    client = _redis_broker(app)
    assert client is not None
    pieces = _template(app, queue)
    batch: list[str] = []
    for idx in indices:
        values = {
            "B": base64.b64encode(f'[["{job}",{idx}],{{}},{_EMBED_JSON}]'.encode()).decode(),
            "I": f"{job}:{idx}",
            "A": f"('{job}', {idx})",
            "T": str(uuid.uuid4()),
        }
        # pieces alternate: literal, slot name, literal, slot name, ..., literal
        batch.append("".join(values[part] if i % 2 else part for i, part in enumerate(pieces)))
        if len(batch) >= PUBLISH_BATCH_SIZE:
            _push(client, queue, batch)
            batch = []
    if batch:
        _push(client, queue, batch)


def _push(client: redis.Redis[bytes], queue: str, batch: list[str]) -> None:
    # One LPUSH of many values keeps FIFO order for kombu's BRPOP: the first pushed is popped first.
    client.lpush(queue, *batch)


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
