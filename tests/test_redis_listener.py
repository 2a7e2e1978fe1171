"""The Redis listener keeps delivery honest while its links stay up: a message pub/sub dropped
is replayed from history, and a channel whose slot moves to another shard follows it."""

from __future__ import annotations

import threading
from typing import Iterator, List

import pytest

from flask_sse_ext import Publisher
from flask_sse_ext.brokers.base import Message
from flask_sse_ext.brokers.redis import RedisBroker
from support.redis import RedisServer
from support.redis_ha import ClusterHA
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
