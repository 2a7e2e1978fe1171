"""Readers of logs on Redis share one blocking read per worker: Redis clients scale with
workers, not with readers (``brokers/redis/log_waits.py``)."""

from __future__ import annotations

import json
import threading
from typing import List

from support.client import RawStream, request
from support.parser import ParsedEvent
from support.redis import RedisServer
from support.server import StartServer


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
