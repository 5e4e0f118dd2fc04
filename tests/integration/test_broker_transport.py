"""kombu's Redis transport as batcher configures it (``workers/_broker.py``), against a real Redis.

Two ways kombu turns a broker hiccup into a dead worker ("Unrecoverable error"): a connection Celery
dropped after losing it still acknowledges and restores through its detached channel, and a Redis at
its memory limit refuses the restore mutex. Both must leave the worker running.
"""

from __future__ import annotations

from pathlib import Path

from kombu import Connection

from batcher.testing.servers import RedisServer
from workers._broker import OomTolerantQoS, Transport


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


def test_acknowledgements_ready_together_leave_redis_together(redis_url: str) -> None:
    """On the worker's event loop, the acks of one pass are removed from the unacknowledged set by one
    flush on the next pass; until then Redis still holds them (a worker killed meanwhile: recovery's)."""
    import redis as redis_py
    from kombu.asynchronous import Hub, set_event_loop

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
        assert client.hlen(qos.unacked_key) == 3  # not yet: the flush waits for the loop's next pass
        ready = hub._pop_ready()
        assert len(ready) == 1  # one flush for both
        for callback in ready:
            callback()
        assert client.hkeys(qos.unacked_key) == [b"tag-c"]
        assert client.zrange(qos.unacked_index_key, 0, -1) == [b"tag-c"]
        assert set(tags[:2]) <= qos._dirty
        client.delete(qos.unacked_key, qos.unacked_index_key)
        client.close()
    finally:
        set_event_loop(None)
        conn.release()
