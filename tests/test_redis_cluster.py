"""The Redis broker on a real three-master Redis Cluster: hash-tagged keys, sharded pub/sub."""

from __future__ import annotations

from typing import List

import redis

from flask_sse_ext import Publisher
from flask_sse_ext.brokers.base import Message
from flask_sse_ext.brokers.redis import RedisBroker
from support.client import RawStream
from support.redis import RedisCluster
from support.server import StartServer
from support.waiting import wait_until

CHANNELS = [f"room-{i}" for i in range(12)]
# redis-py leaves RedisCluster's node lookups (keyslot, get_node_from_key, get_primaries)
# unannotated; mypy strict refuses such calls, hence the ignores below.


def test_history_and_pubsub_of_a_channel_share_a_shard(redis_cluster: RedisCluster, prefix: str) -> None:
    broker = RedisBroker.from_url(redis_cluster.url, cluster=True, prefix=prefix)
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        nodes = set()
        for channel in CHANNELS:
            history, live = broker.history_key(channel), broker.pubsub_channel(channel)
            assert client.keyslot(history) == client.keyslot(live)  # type: ignore[no-untyped-call]
            nodes.add(client.get_node_from_key(history).name)  # type: ignore[no-untyped-call]
        assert len(nodes) == 3  # the channels really spread over every master
        sent = [broker.publish(c, b"data: %d\n" % i) for i, c in enumerate(CHANNELS)]
        for message in sent:
            replay = broker.replay(message.channel, None)
            assert replay.head == message.position
            # Exactly one entry kept: the cursor before it replays it.
            assert broker.replay(message.channel, "0-0").messages == [message]
    finally:
        broker.close()
        client.close()


def test_live_delivery_uses_sharded_pubsub(redis_cluster: RedisCluster, prefix: str) -> None:
    broker = RedisBroker.from_url(redis_cluster.url, cluster=True, prefix=prefix)
    client = redis.RedisCluster.from_url(redis_cluster.url)
    got: List[Message] = []
    try:
        broker.start(got.append, lambda channel: None)
        for channel in CHANNELS:
            broker.subscribe(channel)
        broker.ready(CHANNELS, timeout=10)
        for channel in CHANNELS:
            live = broker.pubsub_channel(channel)
            node = client.get_node_from_key(live)  # type: ignore[no-untyped-call]
            reply = node.redis_connection.execute_command("PUBSUB", "SHARDNUMSUB", live)
            counts = dict(reply.items()) if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))
            # Subscribed once, on the shard that owns the channel.
            assert counts[live.encode()] == 1, counts
        # No classic (broadcast) subscription was made on any node.
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        assert all(n.redis_connection.pubsub_numpat() == 0 for n in primaries)
        assert all(n.redis_connection.pubsub_channels() == [] for n in primaries)
        sent = [broker.publish(c, b"data: live\n") for c in CHANNELS]
        wait_until(lambda: len(got) >= len(sent), timeout=10)
        assert sorted((m.channel, m.position) for m in got) == sorted((m.channel, m.position) for m in sent)
    finally:
        broker.close()
        client.close()


def test_stream_over_cluster(start_server: StartServer, redis_cluster: RedisCluster, prefix: str) -> None:
    config = {"SSE_REDIS_URL": redis_cluster.url, "SSE_REDIS_CLUSTER": True, "SSE_REDIS_PREFIX": prefix}
    server = start_server(config=config)
    stream = RawStream(server.port, "/stream?channel=room-1&channel=room-2")
    assert stream.status == 200
    stream.opening()
    publisher = Publisher(redis_cluster.url, cluster=True, prefix=prefix)
    try:
        publisher.publish("one", channel="room-1")
        publisher.publish("two", channel="room-2")
        assert sorted(e.data for e in stream.events(2)) == ["one", "two"]
        cursor = publisher.publish("x", channel="room-1")
        cursor_stream = RawStream(server.port, "/stream?channel=room-1", headers={"Last-Event-ID": cursor})
        cursor_stream.opening()
        publisher.publish("after", channel="room-1")
        assert [e.data for e in cursor_stream.events(1)] == ["after"]
    finally:
        publisher.close()
