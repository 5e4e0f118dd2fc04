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

One round trip per delivered message (issue #16). kombu makes three on the consumer thread: the
``BRPOP``, then the delivery record (ZADD ``unacked_index`` + HSET ``unacked``), then the ack (ZREM +
HDEL). Here a delivery record and the acknowledgements wait, on the worker's event loop, for the next
``BRPOP`` and leave in the same write, in front of it on its connection (records before acks); their
replies are read before the ``BRPOP``'s. A message acknowledged before its record left leaves nothing
(both dropped). What finds no ``BRPOP`` to ride on within ``PENDING_WRITES_WAIT_MAX_S`` (every slot
busy: no ``BRPOP`` is sent; or one is in flight on an empty queue) leaves in a pipeline of its own.
A message popped but not yet recorded when its worker dies is recovered from Postgres, as an
unrecordable one is under a full Redis.

Several messages per round trip when several slots are free (issue #16). kombu pops one message per
``BRPOP``, so a process whose threads free up together (a wave of answers, a race's three requests)
refills them one round trip, and one pass of its event loop, at a time. On Redis 7 and later the fetch is
``BLMPOP ... RIGHT COUNT n`` instead: the same queues in the same order (priorities first), the same end of
the list, up to n messages, n being the consumer's free prefetch slots (never more than QoS allows, at most
``FETCH_MAX_MESSAGES``). One free slot, no prefetch limit, or an older server: ``BRPOP``, as kombu does.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from queue import Empty
from time import monotonic
from typing import Any

import redis
from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps, loads
from redis.exceptions import (  # type: ignore[attr-defined]  # types-redis lags redis-py (OutOfMemoryError)
    OutOfMemoryError,
    ResponseError,
)

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

DELIVERY_ONE_TRIP = True
"""Delivery records and acknowledgements ride in front of the next ``BRPOP`` on its connection (one
round trip per delivered message); the benchmark's what-if ``delivery-two-trips`` turns it off (kombu's
record in a round trip of its own after each ``BRPOP``, acks grouped on the next pass of the loop)."""
PENDING_WRITES_WAIT_MAX_S = 0.005
"""How long a delivery record or an acknowledgement waits for a ``BRPOP`` to ride on before it leaves in
a pipeline of its own (the window in which a killed worker leaves a popped message unrecorded)."""

MULTI_FETCH = True
"""Fetch as many messages as there are free slots in one ``BLMPOP`` (Redis 7+); the benchmark's what-if
``fetch-one-by-one`` turns it off (a ``BRPOP`` per message, kombu's way)."""
FETCH_MAX_MESSAGES = 64
"""At most this many messages in one fetch, whatever the free slots (a bounded reply, a bounded pass of the
event loop delivering it)."""
BLMPOP_MIN_REDIS_VERSION = (7, 0)
"""``BLMPOP`` came with Redis 7.0; an older server (or one that does not say) is fetched from by ``BRPOP``."""


def redis_version(info: dict[str, Any]) -> tuple[int, ...]:
    """``INFO server``'s ``redis_version`` as numbers (``()`` when missing or unreadable)."""
    parts: list[int] = []
    for part in str(info.get("redis_version", "")).split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


@dataclass(slots=True)
class _PendingWrites:
    """Delivery records and acknowledgements not yet sent (guarded by ``_acks_lock``)."""

    records: dict[Any, tuple[float, str]]
    """delivery tag -> (delivery time, ``[message, exchange, routing_key]`` as kombu stores it)"""
    acks: list[Any]
    batch: int = 0
    """Counts the batches taken: a wait-limit timer flushes only the batch it was set for."""


class OomTolerantQoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's QoS, minus the ways a full Redis kills a worker or stops it from freeing memory."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._pending_acks: list[Any] = []  # GROUP_ACKS without DELIVERY_ONE_TRIP (guarded by _acks_lock)
        self._pending_writes = _PendingWrites(records={}, acks=[])

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
        loop = get_event_loop() if DELIVERY_ONE_TRIP else None
        if loop is not None and not self._detached():
            delivery = message.delivery_info
            record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])  # type: ignore[no-untyped-call]
            self._hold(loop, lambda pending: pending.records.__setitem__(delivery_tag, (time.time(), record)))
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return
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
        self._flush_pending()  # restoring reads the records: the pending ones first
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
        if DELIVERY_ONE_TRIP and self._drop_pending_record(delivery_tag):
            # Acknowledged before its delivery record left: neither goes (a record sent after its ack
            # would stay in the set until recovery or the visibility timeout moved it back).
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        if loop is None or not GROUP_ACKS:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
            return
        if DELIVERY_ONE_TRIP:
            self._hold(loop, lambda pending: pending.acks.append(delivery_tag))
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]  # the slot is free now
            return
        with _acks_lock:
            self._pending_acks.append(delivery_tag)
            first = len(self._pending_acks) == 1
        if first:
            loop.call_soon(self._flush_acks)  # type: ignore[no-untyped-call]

    def _flush_acks(self) -> None:
        with _acks_lock:
            tags, self._pending_acks = self._pending_acks, []
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
        self._flush_pending()  # a requeue reads the record back: it must be there
        super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]

    # --- records and acks riding on the next BRPOP (DELIVERY_ONE_TRIP) -----------------------------

    def _hold(self, loop: Any, add: Callable[[_PendingWrites], None]) -> None:
        """Keep a record or an ack (``add`` puts it in) for the next ``BRPOP``; the first of a batch sets
        the timer that sends the batch alone if no ``BRPOP`` has taken it within the wait limit."""
        with _acks_lock:
            pending = self._pending_writes
            first = not pending.records and not pending.acks
            add(pending)
            batch = pending.batch
        if first:
            loop.call_later(PENDING_WRITES_WAIT_MAX_S, self._flush_pending, batch)

    def has_pending_writes(self) -> bool:
        pending = self._pending_writes
        return bool(pending.records or pending.acks)

    def _drop_pending_record(self, delivery_tag: Any) -> bool:
        with _acks_lock:
            return self._pending_writes.records.pop(delivery_tag, None) is not None

    def take_pending_writes(self) -> tuple[list[tuple[Any, ...]], list[tuple[str, int]]]:
        """The pending records and acks as commands (records first), and what each reply is for:
        (``record``/``ack``, how many messages)."""
        with _acks_lock:
            pending = self._pending_writes
            records, acks = pending.records, pending.acks
            pending.records, pending.acks = {}, []
            pending.batch += 1
        commands: list[tuple[Any, ...]] = []
        meaning: list[tuple[str, int]] = []
        if records:
            index: list[Any] = []
            fields: list[Any] = []
            for tag, (delivered_at, record) in records.items():
                index += [delivered_at, tag]
                fields += [tag, record]
            commands += [("ZADD", self.unacked_index_key, *index), ("HSET", self.unacked_key, *fields)]
            meaning += [("record", len(records))] * 2
        if acks:
            commands += [("ZREM", self.unacked_index_key, *acks), ("HDEL", self.unacked_key, *acks)]
            meaning += [("ack", len(acks))] * 2
        return commands, meaning

    def _flush_pending(self, batch: int | None = None) -> None:
        """Send what found no ``BRPOP`` to ride on (``batch``: only if that batch is still waiting)."""
        with _acks_lock:
            if batch is not None and self._pending_writes.batch != batch:
                return
        if self._detached():
            with _acks_lock:
                self._pending_writes = _PendingWrites(records={}, acks=[], batch=self._pending_writes.batch + 1)
            return
        commands, meaning = self.take_pending_writes()
        if not commands:
            return
        with self.pipe_or_acquire() as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies = pipe.execute(raise_on_error=False)
        for reply, what in zip(replies, meaning, strict=True):
            pending_reply_error(reply, what)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().restore_visible(*args, **kwargs)  # type: ignore[no-untyped-call]
        except OutOfMemoryError:
            log.warning("Redis is at its memory limit: skipping kombu's restore of old unacked messages")


def pending_reply_error(reply: Any, what: tuple[str, int]) -> None:
    """Log a refused record or ack (a Redis at its memory limit refuses the records)."""
    if not isinstance(reply, ResponseError):
        return
    kind, count = what
    if kind == "record" and isinstance(reply, OutOfMemoryError):
        log.warning(
            "Redis is at its memory limit: %d messages run without a broker-side copy "
            "(recovery re-sends them if this worker dies)",
            count,
        )
    else:
        log.warning("Redis refused the %s of %d messages: %s", kind, count, reply)


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's channel, whose fetch carries the pending delivery records and acks in front of it, and
    takes as many messages as there are free slots (``BLMPOP``, Redis 7+)."""

    QoS = OomTolerantQoS
    _riders: tuple[Any, list[tuple[str, int]]] | None = None
    """(connection, what each reply is for) of the commands sent in front of the fetch in flight."""
    _multi_fetch: bool = False
    """The fetch in flight is a ``BLMPOP`` (its reply: the queue's key and a list of messages)."""
    _blmpop: bool | None = None
    """Whether the server has ``BLMPOP`` (asked once per channel)."""

    def fetch_count(self) -> int:
        """How many messages the next fetch may take: the free prefetch slots, at most
        ``FETCH_MAX_MESSAGES``; 1 without a prefetch limit (kombu's way) or without ``BLMPOP``."""
        if not MULTI_FETCH:
            return 1
        free: int | None = self.qos.can_consume_max_estimate()  # None: no prefetch limit
        if free is None or free < 2:
            return 1
        if self._blmpop is None:
            self._blmpop = self._server_has_blmpop()
        return min(free, FETCH_MAX_MESSAGES) if self._blmpop else 1

    def _server_has_blmpop(self) -> bool:
        try:
            with self.conn_or_acquire() as client:
                version = redis_version(client.info("server"))
        except self.connection_errors:
            return False  # asked again on the next connection's channel; BRPOP meanwhile
        except ResponseError:  # a server that does not answer INFO (a restricted proxy): BRPOP
            version = ()
        has = version >= BLMPOP_MIN_REDIS_VERSION
        if not has:
            log.info("the broker (Redis %s) has no BLMPOP: one message per fetch", ".".join(map(str, version)) or "?")
        return has

    def _brpop_start(self, timeout: Any = None) -> None:
        qos = self.qos
        riding = DELIVERY_ONE_TRIP and qos.has_pending_writes() and not qos._detached()
        count = self.fetch_count()
        self._multi_fetch = False
        if not riding and count == 1:
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]  # type: ignore[no-untyped-call]
        commands, meaning = qos.take_pending_writes() if riding else ([], [])
        if self.global_keyprefix:
            commands = [tuple(self.client._prefix_args(command)) for command in commands]
            keys = [self.global_keyprefix + key for key in keys]
        if count > 1:  # the same keys in the same order, the same end of each list, up to count messages
            commands.append(("BLMPOP", timeout or 0, len(keys), *keys, "RIGHT", "COUNT", count))
            self._multi_fetch = True
        else:
            commands.append(("BRPOP", *keys, timeout or 0))
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self._riders = (connection, meaning) if meaning else None
        connection.send_packed_command(connection.pack_commands(commands))

    def _read_riders(self) -> bool:
        """Read the replies of the commands sent in front of the ``BRPOP``; whether its reply is here too."""
        riders, self._riders = self._riders, None
        if riders is None:
            return True
        connection, meaning = riders
        if connection is not self.client.connection:
            return True
        try:
            for what in meaning:
                try:
                    reply = connection.read_response()
                except ResponseError as refused:
                    reply = refused
                pending_reply_error(reply, what)
            return bool(connection.can_read(timeout=0))
        except self.connection_errors:
            self._in_poll = None  # type: ignore[assignment]
            connection.disconnect()
            raise

    def _brpop_read(self, **options: Any) -> Any:
        if not self._read_riders():
            raise Empty()  # the fetch still waits (an empty queue): the loop polls its socket again
        if not self._multi_fetch:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        self._multi_fetch = False
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BLMPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next pass reconnects, as kombu's BRPOP does
                raise
            if not reply:
                raise Empty()
            key, items = reply
            queue = key.decode() if isinstance(key, bytes) else str(key)
            if self.global_keyprefix and queue.startswith(self.global_keyprefix):
                queue = queue[len(self.global_keyprefix) :]
            queue = queue.rsplit(self.sep, 1)[0]  # a priority step's list is the queue's
            self._queue_cycle.rotate(queue)
            for item in items:
                self.connection._deliver(loads(item), queue)  # type: ignore[no-untyped-call]
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            reauth = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.6: the connection is idle now
            if reauth is not None:
                reauth()

    def _poll_error(self, type: Any, **options: Any) -> Any:
        if type == "BRPOP":
            self._read_riders()
        return super()._poll_error(type, **options)  # type: ignore[no-untyped-call]

    def _on_connection_disconnect(self, connection: Any) -> None:
        if self._riders is not None and self._riders[0] is connection:
            self._riders = None
        super()._on_connection_disconnect(connection)  # type: ignore[no-untyped-call]


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
