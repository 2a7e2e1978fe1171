"""The Redis listener keeps delivery honest while its links stay up: a message pub/sub dropped
is replayed from history, and a channel whose slot moves to another shard follows it."""

from __future__ import annotations

import threading
import time
from typing import Iterator, List, Optional

import pytest

from flask_sse_ext import BrokerError, Publisher
from flask_sse_ext.brokers.base import Message
from flask_sse_ext.brokers.redis import RedisBroker
from support.client import HEARTBEAT, RawStream, request
from support.redis import RedisServer
from support.redis_ha import ClusterHA, RedisNode
from support.server import StartServer
from support.waiting import wait_until


class Collected:
    """A broker started with a deliver callback that keeps what it gets."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.messages: List[Message] = []
        self.lost: List[str] = []
        self.lock = threading.Lock()
        broker.start(self._deliver, self.lost.append)

    def _deliver(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def ids(self) -> List[str]:
        with self.lock:
            return [m.id for m in self.messages]


@pytest.fixture
def collected(redis_server: RedisServer, prefix: str) -> Iterator[Collected]:
    broker = RedisBroker.from_url(redis_server.url, prefix=prefix)
    yield Collected(broker)
    broker.close()


def test_an_event_that_pubsub_dropped_is_replayed_from_history(
    collected: Collected, redis_server: RedisServer, prefix: str
) -> None:
    """Pub/sub is at-most-once: an event in history that never came live (here written to
    history without a PUBLISH) is found by the periodic head check and delivered, in order.
    (Losses come at the tail, as a link that dies drops what was in flight: a later live event
    catches up from history first, on the reconnect.)"""
    broker = collected.broker
    broker.subscribe("news")
    broker.ready(["news"])
    publisher = Publisher(redis_server.url, prefix=prefix)
    try:
        first = publisher.publish("one", id="n1", channel="news")
        wait_until(lambda: collected.ids() == [first])
        client = redis_server.client()
        client.xadd(broker.history_key("news"), {"i": "n2", "b": b"data: two\n"})
        client.close()
        # Found by the head check (every 5 s) and replayed, before any later event.
        wait_until(lambda: collected.ids() == [first, "n2"], timeout=10, message=collected.ids)
        third = publisher.publish("three", id="n3", channel="news")
        wait_until(lambda: collected.ids() == [first, "n2", third])
    finally:
        publisher.close()
    assert broker.listener.positions.gaps == 1
    assert collected.lost == []


def test_a_channel_follows_its_slot_to_another_shard(redis_cluster_ha: ClusterHA) -> None:
    """Redis drops a sharded subscription when its slot moves (``sunsubscribe``): the listener
    learns the new slot map, subscribes on the new shard and catches up, losing nothing."""
    cluster = redis_cluster_ha
    broker = RedisBroker.from_url(cluster.url, cluster=True, prefix="sse")
    collected = Collected(broker)
    publisher = Publisher(cluster.url, cluster=True, prefix="sse")
    try:
        channel = "moving"
        key = broker.history_key(channel)
        broker.subscribe(channel)
        broker.ready([channel], timeout=10)
        sent = [publisher.publish(f"before-{n}", channel=channel) for n in range(3)]
        wait_until(lambda: collected.ids() == sent)

        source = cluster.master_for_key(key)
        target = next(m for m in cluster.masters() if m.port != source.port)
        slot = cluster.keyslot(key)
        source_id = source.execute("CLUSTER", "MYID")
        target_id = target.execute("CLUSTER", "MYID")
        target.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        keys = source.execute("CLUSTER", "GETKEYSINSLOT", slot, 100)
        source.execute("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in cluster.masters():
            node.execute("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_until(lambda: cluster.master_for_key(key).port == target.port, timeout=10)

        sent += [publisher.publish(f"after-{n}", channel=channel) for n in range(3)]
        wait_until(lambda: collected.ids() == sent, timeout=15, message=collected.ids)
        assert collected.lost == []
    finally:
        publisher.close()
        broker.close()


def test_a_hung_redis_blocks_no_stream_and_loses_nothing(start_server: StartServer) -> None:
    """A Redis that hangs (SIGSTOP: connections accepted, nothing answered) stalls no worker:
    open streams keep their heartbeats and the worker answers; the link that stopped answering
    pings is cut, and once Redis is back every event arrives, once."""
    node = RedisNode(name="hung")
    try:
        server = start_server(config={"SSE_REDIS_URL": node.url, "SSE_HEARTBEAT_INTERVAL": 0.5})
        stream = RawStream(server.port, "/stream?channel=hang")
        stream.opening()
        publisher = Publisher(node.url)
        try:
            first = publisher.publish("before", channel="hang")
            assert [e.last_event_id for e in stream.events(1)] == [first]
            node.pause()
            # Heartbeats go on, and the worker answers at once, while Redis hangs.
            beats = [stream.chunk(timeout=2) for _ in range(3)]
            assert beats == [HEARTBEAT] * 3
            started = time.monotonic()
            assert request(server.port, "GET", "/stats")[0] == 200
            assert time.monotonic() - started < 1
            wait_until(lambda: "did not answer a ping" in server.log(), timeout=10, message=server.log)
            node.resume()
            later = wait_until(lambda: _published(publisher, "after"), timeout=15)
            assert [e.last_event_id for e in stream.events(1, timeout=15)] == [later]
            assert not stream.ended
        finally:
            publisher.close()
    finally:
        node.cleanup()


def _published(publisher: Publisher, data: str) -> Optional[str]:
    try:
        return publisher.publish(data, channel="hang")
    except BrokerError:
        return None
