"""What batcher needs from the Redis broker beyond kombu: survive a full Redis, and see and move
the messages that workers hold.

kombu's Redis transport keeps every delivered, unacknowledged message in a hash (``unacked``:
delivery tag -> ``[message, exchange, routing_key]``) with its delivery time in a sorted set
(``unacked_index``), and hands a message back only after the broker's visibility timeout (two
hours here, longer than any call). batcher gives each worker process its own pair of keys
(``unacked:<worker id>``, kombu's ``unacked_key`` transport option, set when the worker starts),
so the holder of every message is known: when recovery finds a worker dead (its heartbeat lapsed,
or it stopped) it moves that worker's messages back to their queue at once, with the same
compare-and-move kombu's ``restore_by_tag`` does: at most one live message per request, and a
live worker's messages (delayed retries included) are never touched.

kombu also crashes a worker whose Redis restarted: closing the lost connection tries to restore its
unacknowledged messages through it (``OomTolerantQoS.restore_unacked``).

A Redis at its memory limit refuses every write that needs memory, and every command queued in a
MULTI transaction. kombu treats that refusal as unrecoverable in three places: taking its restore
mutex when a consumer connects, recording a delivery in ``unacked``, and acknowledging (a MULTI
of ZREM + HDEL, refused although it frees memory: the cluster then never gets below its limit).
``Transport`` below keeps the worker up and draining: the periodic restore is skipped (it is only
an optimisation), a delivery that cannot be recorded is still processed (its request is in
Postgres; recovery re-sends it if its worker dies), and acknowledgements go without MULTI.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import OutOfMemoryError  # type: ignore[attr-defined]  # types-redis lags redis-py

from batcher._publish import parse_task_id

log = logging.getLogger("batcher.broker")

UNACKED_KEY = kombu_redis.Channel.unacked_key
UNACKED_INDEX_KEY = kombu_redis.Channel.unacked_index_key
UNACKED_MUTEX_KEY = kombu_redis.Channel.unacked_mutex_key
SCAN_COUNT = 500


def worker_transport_options(worker_id: str) -> dict[str, str]:
    """kombu transport options that give one worker process unacknowledged sets of its own."""
    return {
        "unacked_key": f"{UNACKED_KEY}:{worker_id}",
        "unacked_index_key": f"{UNACKED_INDEX_KEY}:{worker_id}",
        "unacked_mutex_key": f"{UNACKED_MUTEX_KEY}:{worker_id}",
    }


# KEYS: unacked hash, unacked index, queue.  ARGV: delivery tag, the payload read, the payload to push.
# Moves the message only if it is still the one that was read (nobody acked or restored it meanwhile).
_MOVE_BACK = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
    return 0
end
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


# KEYS: unacked hash, unacked index.  ARGV: delivery tag, the payload read. Forgets the message if unchanged.
_FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
    return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


GROUP_ACKS = True
"""Acknowledgements ready on the event loop together go to Redis together (``OomTolerantQoS.ack``); the
benchmark's what-if ``ack-one-by-one`` turns it off."""
_acks_lock = threading.Lock()


class OomTolerantQoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's QoS, minus the ways a full Redis kills a worker or stops it from freeing memory."""

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        # Without MULTI: a Redis over its limit refuses every command queued in a transaction, even
        # the ZREM/HDEL of an acknowledgement, the very commands that give memory back.
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as acquired:
                yield acquired.pipeline(transaction=False)

    def append(self, message: Any, delivery_tag: Any) -> None:
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except OutOfMemoryError:
            log.warning(
                "Redis is at its memory limit: message %s runs without a broker-side copy "
                "(recovery re-sends it if this worker dies)",
                delivery_tag,
            )
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    # When Celery drops a connection it lost (Redis restarted, a network blip), kombu detaches the
    # channel from its transport (``collect``) and then still closes the channel — which restores
    # unacked messages through it — and acknowledges tasks that finish meanwhile on it: each an
    # ``AttributeError`` on the missing connection, which Celery does not ignore, and the worker exits
    # ("Unrecoverable error"). Nothing can go through a dead connection anyway: the broker-side copies
    # stay in this worker's own unacknowledged set (and are gone with a restarted Redis).

    def _detached(self) -> bool:
        transport = getattr(self.channel, "connection", None)
        return getattr(transport, "client", None) is None

    def restore_unacked(self, client: Any = None) -> None:
        if client is None and self._detached():
            log.warning("broker connection lost: its unacknowledged messages stay in the broker for recovery")
            self._delivered.clear()
            return
        super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: Any) -> None:
        """Acknowledgements are grouped: Celery runs them on the worker's event loop (``call_soon``), a pass
        of the loop runs every one that is ready, and the first of them schedules ``_flush_acks`` for the
        next pass, which removes them all from this worker's unacknowledged set in one pipeline (a round
        trip per pass instead of one per message). A worker killed in between leaves those messages in
        its set: recovery moves them back, and their claims, the requests being final, do nothing."""
        if self._detached():
            log.info("message %s finished after its broker connection was lost: not acknowledged", delivery_tag)
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        loop = get_event_loop()
        if loop is None or not GROUP_ACKS:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
            return
        with _acks_lock:
            pending = self.__dict__.setdefault("_pending_acks", [])
            pending.append(delivery_tag)
            first = len(pending) == 1
        if first:
            loop.call_soon(self._flush_acks)  # type: ignore[no-untyped-call]

    def _flush_acks(self) -> None:
        with _acks_lock:
            tags: list[Any] = self.__dict__.get("_pending_acks", [])
            self._pending_acks: list[Any] = []
        if not tags:
            return
        if self._detached():
            log.info("%d messages finished after their broker connection was lost: not acknowledged", len(tags))
        else:
            with self.pipe_or_acquire() as pipe:
                for tag in tags:
                    self._remove_from_indices(tag, pipe)  # type: ignore[no-untyped-call]
                pipe.execute()
        for tag in tags:
            virtual.QoS.ack(self, tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._detached():
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().restore_visible(*args, **kwargs)  # type: ignore[no-untyped-call]
        except OutOfMemoryError:
            log.warning("Redis is at its memory limit: skipping kombu's restore of old unacked messages")


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = OomTolerantQoS


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with ``OomTolerantQoS`` (``broker_transport`` of batcher's Celery app)."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"


@dataclass(frozen=True, slots=True)
class HeldMessage:
    """A message some worker received and has not acknowledged."""

    tag: str
    job_id: uuid.UUID
    idx: int
    delivered_at: float
    raw: bytes
    """The hash value as read (the move is compared against it)."""
    payload: dict[str, Any]
    routing_key: str
    holder: str | None
    """The worker id whose set holds it (``None``: kombu's shared default set, holder unknown)."""


class BrokerMessages:
    """Reading and moving kombu's unacknowledged messages on one Redis (``prefix``: kombu's
    ``global_keyprefix``, if any)."""

    def __init__(self, client: redis.Redis[bytes], *, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self._move = client.register_script(_MOVE_BACK)
        self._forget = client.register_script(_FORGET)

    def queue_length(self, queue: str) -> int:
        return int(self.client.llen(self.prefix + queue))

    def holders(self) -> list[str | None]:
        """Whose unacknowledged sets exist now (``None``: kombu's shared default set)."""
        found: list[str | None] = []
        base = self.prefix + UNACKED_KEY
        for key in self.client.scan_iter(match=f"{base}*", count=SCAN_COUNT, _type="hash"):
            name = key.decode() if isinstance(key, bytes) else str(key)
            if name == base:
                found.append(None)
            elif name.startswith(base + ":"):
                found.append(name[len(base) + 1 :])
        return found

    def _keys(self, holder: str | None) -> tuple[str, str]:
        suffix = f":{holder}" if holder is not None else ""
        return self.prefix + UNACKED_KEY + suffix, self.prefix + UNACKED_INDEX_KEY + suffix

    def held(self, holders: Iterable[str | None] | None = None) -> Iterator[HeldMessage]:
        """Every unacknowledged ``run_request`` message (others are skipped), of every holder or of these."""
        for holder in self.holders() if holders is None else holders:
            yield from self._held_by(holder)

    def _held_by(self, holder: str | None) -> Iterator[HeldMessage]:
        hash_key, index_key = self._keys(holder)
        delivered = dict(self.client.zrange(index_key, 0, -1, withscores=True))
        for tag, raw in self.client.hscan_iter(hash_key, count=SCAN_COUNT):
            try:
                payload, _exchange, routing_key = json.loads(raw)
                parsed = parse_task_id(str(payload["headers"]["id"]))
                if parsed is None:
                    continue
                job, idx = parsed
                yield HeldMessage(
                    tag=tag.decode() if isinstance(tag, bytes) else str(tag),
                    job_id=uuid.UUID(job),
                    idx=idx,
                    delivered_at=float(delivered.get(tag, time.time())),
                    raw=raw,
                    payload=payload,
                    routing_key=str(routing_key),
                    holder=holder,
                )
            except (ValueError, KeyError, TypeError):
                continue

    def move_back(self, messages: Iterable[HeldMessage]) -> int:
        """Put held messages back at the head of their queue, each only if still held as read."""
        moved = 0
        for message in messages:
            payload = dict(message.payload)
            headers = dict(payload.get("headers") or {})
            headers["redelivered"] = True
            payload["headers"] = headers
            keys = [*self._keys(message.holder), self.prefix + message.routing_key]
            moved += int(self._move(keys=keys, args=[message.tag, message.raw, json.dumps(payload)]))
        return moved

    def forget(self, messages: Iterable[HeldMessage]) -> int:
        """Drop held messages of a dead holder whose request gets a new message instead."""
        return sum(int(self._forget(keys=list(self._keys(m.holder)), args=[m.tag, m.raw])) for m in messages)
