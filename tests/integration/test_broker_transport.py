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
