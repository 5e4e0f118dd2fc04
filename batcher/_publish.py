"""Publishing request tasks to the broker: many at a time, resumable, never twice.

Tasks are sent by name (the submitter needs no task code), with ``ignore_result`` and a
deterministic id ``<job>:<index>``, so the submitting process never subscribes to result
channels and a re-publish of the same request is recognisably the same task. Messages carry
only ``(job_id, index)``: the prompt stays in Postgres, so Redis holds ~0.9 KB per request.

**Resumable and idempotent.** A job's requests are published in index order, a chunk at a time,
and each chunk moves the job's *published watermark* (``batcher._keys.published_key``: the next
index to publish) in the same atomic step as its messages. On a Redis broker that step is one
Lua script: it pushes the chunk only if the watermark is still what the publisher read, then
advances it. So:

- a submitter that dies (or is refused by a full Redis) mid-way leaves an exact watermark; the
  recovery sweep continues from it, and two publishers racing on one job never push the same
  chunk twice (the loser re-reads the watermark and goes on from there);
- Redis losing its data loses the watermark with the messages: a missing watermark means
  "publish every request still queued", which is exactly what is needed.

With a Redis broker, large jobs skip kombu's per-message machinery (~250 µs a message, most of
it entity copies and ``saferepr``): the Celery protocol-2 message is built once per job from
Celery's own ``as_task_v2`` and only its id, arguments and delivery tag change per request.
The envelope is kombu's Redis format (what ``Channel._put`` writes). Other brokers (embedded
mode's in-memory transport) use kombu's batching and a watermark in the coordination store.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from celery import Celery

from batcher import _keys

RUN_REQUEST_TASK = "batcher.run_request"
FINALIZE_JOB_TASK = "batcher.finalize_job"
RECOVER_TASK = "batcher.recover"

PUBLISH_BATCH_SIZE = 1_000
"""Messages per chunk (one Lua call, one watermark step)."""

_EMBED_JSON = json.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})

PendingIndices = Callable[[int, int], Sequence[int]]
"""``pending(start, limit)``: up to ``limit`` indices >= ``start``, ascending, that still need a message."""

# KEYS: queue, watermark.  ARGV: expected watermark ('' = none), new watermark, ttl_s, messages...
# The first write (LPUSH) is refused by a Redis over its memory limit before anything changes;
# once it succeeded, the SET that follows is allowed (Redis lets a script finish what it began),
# so the messages and the watermark move together or not at all.
_PUSH_CHUNK = """
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[1] then
    return {0, current}
end
redis.call('LPUSH', KEYS[1], unpack(ARGV, 4))
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
return {1, ARGV[2]}
"""


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

    ``coordination`` is the Redis that holds watermarks when the broker is not Redis (embedded
    mode passes its in-process server); with a Redis broker the broker's own Redis holds them.
    """

    def __init__(self, app: Celery, *, coordination: redis.Redis[bytes] | None = None) -> None:
        self.app = app
        self._broker = _redis_broker(app)
        self._coordination = coordination
        self._templates: dict[str, list[str]] = {}
        self._script: Any = None

    # --- whole jobs (resumable) ------------------------------------------------------------------

    def publish_job(self, job_id: uuid.UUID, total: int, pending: PendingIndices, *, queue: str) -> bool:
        """Publish every request of the job not yet published, from its watermark on.

        Returns True when the job is completely published (by this call or an earlier one).
        Raises ``redis.RedisError`` / kombu errors when the broker refuses (down, full): what was
        pushed is counted by the watermark, and the next call goes on from there.
        """
        job = str(job_id)
        key = _keys.published_key(job)
        store = self._broker if self._broker is not None else self._coordination
        while True:
            raw = store.get(key) if store is not None else None
            expected = raw.decode() if isinstance(raw, bytes) else (raw or "")
            start = int(expected) if expected.isdigit() else 0
            if start >= total:
                return True
            chunk = list(pending(start, PUBLISH_BATCH_SIZE))
            end = chunk[-1] + 1 if len(chunk) == PUBLISH_BATCH_SIZE else total
            if not self._push_chunk(job, chunk, queue=queue, expected=expected, new=end):
                continue  # another publisher moved the watermark: go on from where it is now

    def _push_chunk(self, job: str, indices: Sequence[int], *, queue: str, expected: str, new: int) -> bool:
        key = _keys.published_key(job)
        if self._broker is None:
            if indices:
                self._publish_kombu(job, indices, queue)
            if self._coordination is not None:
                self._coordination.set(key, str(new), ex=_keys.PUBLISHED_TTL_S)
            return True
        if not indices:  # nothing left to publish: just record that the job is complete
            return self._compare_and_set(key, expected, str(new))
        script_args: list[Any] = [expected, str(new), _keys.PUBLISHED_TTL_S, *self._messages(job, indices, queue)]
        if self._script is None:
            self._script = self._broker.register_script(_PUSH_CHUNK)
        done, _current = self._script(keys=[self._queue_key(queue), key], args=script_args)
        return bool(done)

    def _compare_and_set(self, key: str, expected: str, new: str) -> bool:
        assert self._broker is not None
        with self._broker.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                current = raw.decode() if isinstance(raw, bytes) else (raw or "")
                if current != expected:
                    return False
                pipe.multi()
                pipe.set(key, new, ex=_keys.PUBLISHED_TTL_S)
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    # --- single messages (recovery: re-runs of requests whose message is gone) ----------------

    def publish_requests(self, job_id: uuid.UUID | str, indices: Iterable[int], *, queue: str) -> None:
        """One ``run_request`` message per index, outside any watermark (the job is published already)."""
        job = str(job_id)
        batch = list(indices)
        for start in range(0, len(batch), PUBLISH_BATCH_SIZE):
            chunk = batch[start : start + PUBLISH_BATCH_SIZE]
            if self._broker is None:
                self._publish_kombu(job, chunk, queue)
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
