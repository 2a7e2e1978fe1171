"""Readers of logs on Redis share one blocking read per worker: Redis clients scale with
workers, not with readers (``brokers/redis/log_waits.py``)."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Dict, List

import pytest

from flask_sse_ext import BrokerError
from flask_sse_ext.brokers.base import LogEntry
from flask_sse_ext.brokers.redis import RedisBroker, log_waits
from support.client import RawStream, request
from support.parser import ParsedEvent
from support.redis import RedisCluster, RedisServer
from support.server import StartServer
from support.waiting import wait_until


def test_many_resumable_readers_on_one_worker_hold_few_redis_connections(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    """Regression: each waiting reader held a Redis connection of its own (``XREAD BLOCK``), so
    10,000 readers meant 10,000 Redis clients."""
    server = start_server(config={"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix})
    worker = server.worker_pids(1)[0]
    status, token = request(server.port, "GET", "/token?identity=alice")
    assert status == 200
    headers = {"Authorization": f"Bearer {token.decode() if isinstance(token, bytes) else token}"}
    readers, count = 40, 20

    def connections() -> int:
        return sum(1 for c in redis_server.client_list() if c["name"] == f"{prefix}:{worker}")

    peak: List[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak.append(connections())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    streams = [
        RawStream(server.port, f"/answer/w{i}?count={count}&pace=0.1", headers=headers, method="POST")
        for i in range(readers)
    ]
    try:
        for stream in streams:
            assert stream.status == 200
            events: List[ParsedEvent] = []
            while not events or events[-1].type not in ("sse.end", "sse.error"):
                chunk = stream.chunk(timeout=15)
                assert chunk is not None, events[-1:]
                events += stream.parser.feed(chunk)
            tokens = [json.loads(e.data)["n"] for e in events if e.type == "token"]
            assert tokens == list(range(1, count + 1)) and events[-1].type == "sse.end"
    finally:
        done.set()
        sampler.join(5)
    # The command pool (2), the pub/sub listener, the shared store, the one blocking read of
    # the log readers and a connection for interrupting it: whatever the number of readers.
    print(f"peak Redis connections of the worker with {readers} readers: {max(peak)}")
    assert len(peak) > 10 and max(peak) <= 8


def test_a_node_that_fails_loses_its_blocking_connections(own_redis: RedisServer, prefix: str) -> None:
    """A waiting reader learns at once that its node failed (a ``BrokerError``, so its client
    reconnects), the node's pool is closed, and once Redis is back readers wait again."""
    broker = RedisBroker.from_url(own_redis.url, prefix=prefix)
    try:
        broker.log_create("j.fail", {"kind": "job"}, ttl=60)
        failed: List[BaseException] = []

        def read() -> None:
            try:
                broker.log_read("j.fail", (0, 0), timeout=30)
            except BrokerError as exc:
                failed.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_until(lambda: _blocked_in_xread(own_redis, prefix), timeout=5, message="the reader never waited")
        assert broker.log_waits.nodes == {f"127.0.0.1:{own_redis.port}"}
        own_redis.stop()
        reader.join(5)
        assert not reader.is_alive() and failed  # not after its 30 s
        assert broker.log_waits.nodes == frozenset()

        own_redis.start()
        got: List[LogEntry] = []
        again = threading.Thread(
            target=lambda: got.extend(wait_until(lambda: broker.log_read("j.fail", (0, 0), timeout=5)) or []),
            daemon=True,
        )
        again.start()
        wait_until(lambda: _blocked_in_xread(own_redis, prefix), timeout=10, message="no reader waits again")
        broker.log_append("j.fail", b"data: back\n", ttl=60)
        again.join(5)
        assert [e.body for e in got] == [b"data: back\n"]
    finally:
        broker.close()


def _blocked_in_xread(redis_server: RedisServer, prefix: str) -> bool:
    clients = redis_server.client_list()
    return any(
        c["name"].startswith(prefix + ":") and c["cmd"] == "xread" and "b" in c["flags"] for c in clients
    )


def test_cluster_readers_beyond_the_slot_connections_still_get_every_entry(
    redis_cluster: RedisCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a cluster each log is its own hash slot, and a node gets at most SLOT_CONNECTIONS
    blocking reads per worker: readers of further slots find their entries by their own read
    when their wait times out, and nothing is lost."""
    monkeypatch.setattr(log_waits, "SLOT_CONNECTIONS", 1)
    broker = RedisBroker.from_url(redis_cluster.url, cluster=True, prefix=prefix)
    logs, entries = [f"j.slots{i}" for i in range(8)], 5
    got: Dict[str, List[bytes]] = {log: [] for log in logs}
    blocked: List[int] = []

    def read(log: str) -> None:
        after = (0, 0)
        while len(got[log]) < entries:
            for entry in broker.log_read(log, after, timeout=1.0) or []:
                got[log].append(entry.body)
                after = entry.position

    try:
        for log in logs:
            broker.log_create(log, {"kind": "job"}, ttl=60)
        readers = [threading.Thread(target=read, args=(log,), daemon=True) for log in logs]
        for reader in readers:
            reader.start()
        for n in range(entries):
            time.sleep(0.1)
            for log in logs:
                broker.log_append(log, b"data: %d\n" % n, ttl=60)
            blocked.append(max(_blocked_per_node(redis_cluster, prefix)))
        for reader in readers:
            reader.join(5)
        assert got == {log: [b"data: %d\n" % n for n in range(entries)] for log in logs}
        assert max(blocked) == 1  # one blocking read per node, though 8 slots have readers
    finally:
        broker.close()


def _blocked_per_node(cluster: RedisCluster, prefix: str) -> List[int]:
    name = f"{prefix}:{os.getpid()}"
    return [
        sum(1 for c in node.client_list() if c["name"] == name and c["cmd"] == "xread" and "b" in c["flags"])
        for node in cluster.nodes
    ]
