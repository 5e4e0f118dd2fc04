"""kombu's Redis transport as batcher configures it (``workers/_broker.py``), against a real Redis.

Two ways kombu turns a broker hiccup into a dead worker ("Unrecoverable error"): a connection Celery
dropped after losing it still acknowledges and restores through its detached channel, and a Redis at
its memory limit refuses the restore mutex. Both must leave the worker running.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from kombu import Connection, Message, Queue
from kombu.asynchronous import Hub, set_event_loop

from batcher.testing.servers import RedisServer
from workers._broker import UNACKED_INDEX_KEY, UNACKED_KEY, OomTolerantQoS, Transport


def test_a_lost_connection_is_closed_and_acknowledged_on_without_crashing(redis_url: str) -> None:
    conn = Connection(redis_url, transport=Transport)
    channel = conn.channel()
    qos = channel.qos
    assert isinstance(qos, OomTolerantQoS)
    qos._delivered["a-tag-held"] = object()  # a message delivered on this connection, not yet acknowledged
    conn.collect()  # what Celery does with a connection it lost: detach it from its transport
    qos.ack("a-tag-of-the-lost-connection")  # a task that finished meanwhile (stock kombu: AttributeError)
    qos.reject("another-tag")
    channel.close()  # would restore unacked messages through the lost connection: nothing goes, nothing raises


def test_a_full_redis_does_not_stop_a_consumer_from_connecting(tmp_path: Path) -> None:
    with RedisServer(tmp_path, maxmemory="1mb") as server:
        client = server.client()
        # Past the limit at once: the first write of a script runs if Redis was not full before it.
        client.eval("for i = 1, 3000 do redis.call('RPUSH', 'ballast', string.rep('x', 1000)) end", 0)
        client.close()
        conn = Connection(server.url, transport=Transport)
        try:
            channel = conn.channel()
            channel.qos.restore_visible(num=10, interval=1)  # kombu's SET NX mutex: refused when full
        finally:
            conn.release()


def test_acknowledgements_wait_for_the_loop_and_leave_redis_together(redis_url: str) -> None:
    """On the worker's event loop, acks are not sent one by one: they wait (for a BRPOP to ride on, at
    most ``PENDING_WRITES_WAIT_MAX_S``) and leave together; until then Redis still holds them (a worker
    killed meanwhile: recovery's)."""
    conn = Connection(redis_url, transport=Transport)
    hub = Hub()
    set_event_loop(hub)
    try:
        channel = conn.channel()
        qos = channel.qos
        client = redis_py.Redis.from_url(redis_url)
        tags = ["tag-a", "tag-b", "tag-c"]
        for tag in tags:
            client.hset(qos.unacked_key, tag, "payload")
            client.zadd(qos.unacked_index_key, {tag: 1.0})
            qos._delivered[tag] = object()
        for tag in tags[:2]:
            qos.ack(tag)
        assert client.hlen(qos.unacked_key) == 3  # not yet: no BRPOP went, the wait limit is not over
        assert not qos.can_consume() or set(tags[:2]) <= qos._dirty  # their slots are free already
        waiting = _fire_timers(hub)
        assert waiting == 1  # one flush for both
        assert client.hkeys(qos.unacked_key) == [b"tag-c"]
        assert client.zrange(qos.unacked_index_key, 0, -1) == [b"tag-c"]
        client.delete(qos.unacked_key, qos.unacked_index_key)
        qos._delivered.clear()
        client.close()
    finally:
        set_event_loop(None)
        conn.release()


@dataclass
class _Consumer:
    """A consumer on batcher's transport, as a worker's event loop runs it, with messages waiting."""

    conn: Connection
    channel: Any
    hub: Hub
    client: redis_py.Redis
    queue: Queue
    received: list[Message]


@contextmanager
def _consuming(redis_url: str, *, slots: int, messages: int, prefix: str = "") -> Iterator[_Consumer]:
    """``messages`` published ({"n": 0}, {"n": 1}, ...) to a fresh queue, consumed with ``slots`` prefetch
    slots (as Celery sets for that many threads); everything it wrote is removed afterwards."""
    options = {"global_keyprefix": prefix} if prefix else {}
    conn = Connection(redis_url, transport=Transport, transport_options=options)
    hub = Hub()
    set_event_loop(hub)
    client = redis_py.Redis.from_url(redis_url)
    queue = Queue(f"mf-{uuid.uuid4().hex[:8]}")
    try:
        channel = conn.channel()
        channel.basic_qos(0, slots, False)
        producer = conn.Producer(channel)
        for i in range(messages):
            producer.publish({"n": i}, routing_key=queue.name, declare=[queue])
        received: list[Message] = []
        channel.basic_consume(queue.name, no_ack=False, consumer_tag="mf", callback=received.append)
        yield _Consumer(conn, channel, hub, client, queue, received)
    finally:
        client.delete(prefix + queue.name, prefix + UNACKED_KEY, prefix + UNACKED_INDEX_KEY)
        client.close()
        set_event_loop(None)
        conn.release()


def _fire_timers(hub: Hub) -> int:
    """Run the hub's timers now (what its loop does once their time is up); how many there were."""
    entries = list(hub.timer.queue)
    for entry in entries:
        entry.entry()
    return len(entries)


@pytest.mark.parametrize("prefix", ["", "h2-prefix:"])
def test_a_delivery_is_recorded_by_the_next_brpop_and_an_ack_before_its_record_leaves_nothing(
    redis_url: str, prefix: str
) -> None:
    """One round trip per delivered message: a message's delivery record (kombu's ZADD + HSET) goes in
    front of the next BRPOP on its connection, with the acks ready; a message acked before its record
    left leaves neither behind."""
    # No prefetch limit (0): one message per fetch, as kombu takes it.
    with _consuming(redis_url, slots=0, messages=4, prefix=prefix) as c:
        conn, channel, hub, client, received = c.conn, c.channel, c.hub, c.client, c.received
        qos = channel.qos
        unacked, index = prefix + qos.unacked_key, prefix + qos.unacked_index_key
        cycle = conn.transport.cycle
        cycle._register_BRPOP(channel)  # the first BRPOP: nothing to carry
        channel._brpop_read()
        first = received[0].delivery_tag
        assert client.hkeys(unacked) == []  # its record waits for the next BRPOP

        channel._brpop_start()
        channel._brpop_read()  # the record's replies first, then the second message
        assert client.hkeys(unacked) == [first.encode()]
        assert client.zscore(index, first) is not None
        assert json.loads(client.hget(unacked, first) or b"")[0]["body"] == received[0]._raw["body"]

        second = received[1].delivery_tag
        received[1].ack()  # before its record left: neither goes
        received[0].ack()
        channel._brpop_start()  # carries the first's ack
        channel._brpop_read()
        third = received[2].delivery_tag
        assert client.hkeys(unacked) == [] and client.zrange(index, 0, -1) == []

        channel._brpop_start()  # carries the third's record
        channel._brpop_read()
        assert client.hkeys(unacked) == [third.encode()]
        assert second not in qos._delivered
        # Every slot busy: no BRPOP goes, and the fourth's record leaves at the wait limit on its own.
        qos.prefetch_count = 2
        assert not qos.can_consume()
        _fire_timers(hub)  # those of batches a BRPOP took do nothing
        fourth = received[3].delivery_tag
        assert sorted(client.hkeys(unacked)) == sorted([third.encode(), fourth.encode()])
        assert [m.payload["n"] for m in received] == [0, 1, 2, 3]


def test_a_full_redis_refuses_the_records_riding_on_a_brpop_and_the_consumer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At the memory limit Redis refuses the ZADD + HSET in front of a BRPOP but still pops: the
    messages are delivered (processed without a broker-side copy) and the connection stays usable."""
    with RedisServer(tmp_path, maxmemory="4mb") as server:
        client = server.client()
        conn = Connection(server.url, transport=Transport)
        hub = Hub()
        set_event_loop(hub)
        try:
            channel = conn.channel()
            queue = Queue("h2-full")
            producer = conn.Producer(channel)
            for i in range(3):
                producer.publish({"n": i}, routing_key=queue.name, declare=[queue])
            client.eval("for i = 1, 8000 do redis.call('RPUSH', 'ballast', string.rep('x', 1000)) end", 0)
            received: list[Message] = []
            channel.basic_consume(queue.name, no_ack=False, consumer_tag="h2", callback=received.append)
            conn.transport.cycle._register_BRPOP(channel)
            channel._brpop_read()
            for _ in range(2):
                channel._brpop_start()  # the previous record rides in front and is refused
                channel._brpop_read()
            assert [m.payload["n"] for m in received] == [0, 1, 2]
            assert client.hlen(channel.qos.unacked_key) == 0
            assert "memory limit: 1 messages run without a broker-side copy" in caplog.text
            for message in received:
                message.ack()  # ZREM + HDEL free memory: never refused
            _fire_timers(hub)
            assert channel.qos._delivered == {} or set(channel.qos._delivered) <= channel.qos._dirty
        finally:
            set_event_loop(None)
            conn.release()
            client.close()


@pytest.mark.parametrize("prefix", ["", "mf-prefix:"])
def test_free_slots_are_filled_by_one_fetch_in_queue_order(redis_url: str, prefix: str) -> None:
    """A consumer with several free prefetch slots takes that many messages in one round trip (``BLMPOP``),
    oldest first, never more than its slots; with one slot free it takes one (``BRPOP``)."""
    with _consuming(redis_url, slots=3, messages=5, prefix=prefix) as c:
        assert c.channel.fetch_count() == 3
        before = c.client.info("commandstats")
        c.conn.transport.cycle._register_BRPOP(c.channel)
        c.channel._brpop_read()
        assert [m.payload["n"] for m in c.received] == [0, 1, 2]  # one fetch, in publish order
        assert c.client.llen(prefix + c.queue.name) == 2
        assert not c.channel.qos.can_consume()  # the slots are full: nothing more was taken
        stats = c.client.info("commandstats")
        assert stats["cmdstat_blmpop"]["calls"] - before.get("cmdstat_blmpop", {"calls": 0})["calls"] == 1

        c.received[0].ack()  # one slot free: one message, kombu's BRPOP
        assert c.channel.fetch_count() == 1
        c.channel._brpop_start()
        c.channel._brpop_read()
        assert [m.payload["n"] for m in c.received] == [0, 1, 2, 3]
        for message in c.received[1:]:
            message.ack()
        _fire_timers(c.hub)
        assert c.client.hlen(prefix + c.channel.qos.unacked_key) == 0  # every record and ack reached Redis


def test_a_server_without_blmpop_is_fetched_from_one_message_at_a_time(redis_url: str) -> None:
    with _consuming(redis_url, slots=3, messages=3) as c:
        c.channel._blmpop = False  # what the version check finds on Redis 6
        assert c.channel.fetch_count() == 1
        c.conn.transport.cycle._register_BRPOP(c.channel)
        c.channel._brpop_read()
        assert [m.payload["n"] for m in c.received] == [0]
        for message in c.received:
            message.ack()
        _fire_timers(c.hub)
