"""The Redis broker end to end: gunicorn gevent workers, a real redis-server, separate publishers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple, cast

import pytest

from flask_sse_ext import SSE, BrokerError, Publisher
from flask_sse_ext.state import get_state
from support.app import create_app
from support.client import RawStream, request
from support.paths import ROOT, TESTS
from support.redis import RedisServer
from support.server import Server, StartServer
from support.waiting import wait_until


def redis_config(redis: RedisServer, prefix: str, **extra: Any) -> Dict[str, Any]:
    return {"SSE_REDIS_URL": redis.url, "SSE_REDIS_PREFIX": prefix, **extra}


def connect(server: Server, query: str, **headers: str) -> RawStream:
    stream = RawStream(server.port, "/stream?" + query, headers=headers)
    assert stream.status == 200
    stream.opening()
    return stream


def worker_connections(redis: RedisServer, prefix: str) -> Counter[str]:
    """Redis connections per process, by the client name the broker sets (prefix:pid)."""
    return Counter(c["name"] for c in redis.client_list() if c["name"].startswith(prefix + ":"))


def test_300_clients_on_3_workers_get_every_event_once_in_order(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    server = start_server(config=redis_config(redis_server, prefix), workers=3)
    streams = [connect(server, "channel=fan") for _ in range(300)]
    publisher = [sys.executable, "-m", "support.publish_proc", redis_server.url, prefix, "fan", "20"]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    result = subprocess.run(
        publisher, capture_output=True, text=True, check=True, cwd=ROOT, env=env, timeout=60
    )
    ids = json.loads(result.stdout)
    for stream in streams:
        events = stream.events(20, timeout=10)
        assert [(e.type, json.loads(e.data)["n"], e.last_event_id) for e in events] == [
            ("tick", i, ids[i]) for i in range(20)
        ]
    per_worker = worker_connections(redis_server, prefix)
    assert len(per_worker) >= 2, per_worker  # the streams were spread over several workers
    assert max(per_worker.values()) <= 3, per_worker


def test_reconnect_to_another_server_resumes_exactly(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    config = redis_config(redis_server, prefix)
    first, second = start_server(config=config), start_server(config=config)
    publisher = Publisher(redis_server.url, prefix=prefix)
    try:
        stream = connect(first, "channel=news")
        sent = [publisher.publish(f"m{i}", channel="news") for i in range(3)]
        seen = stream.events(3)
        assert [e.last_event_id for e in seen] == sent
        stream.close()
        missed = [publisher.publish(f"m{i}", channel="news") for i in range(3, 6)]
        again = connect(second, "channel=news", **{"Last-Event-ID": seen[-1].last_event_id})
        assert [(e.data, e.last_event_id) for e in again.events(3)] == [
            (f"m{i}", missed[i - 3]) for i in range(3, 6)
        ]
        live = publisher.publish("m6", id="custom-6", channel="news")
        assert [(e.data, e.last_event_id) for e in again.events(1)] == [("m6", live)]
        assert again.idle(0.5) == []
    finally:
        publisher.close()


def test_multi_channel_cursor_works_across_servers(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    config = redis_config(redis_server, prefix)
    first, second = start_server(config=config), start_server(config=config)
    publisher = Publisher(redis_server.url, prefix=prefix)
    try:
        stream = connect(first, "channel=a&channel=b")
        publisher.publish("a0", channel="a")
        publisher.publish("b0", channel="b")
        cursor = stream.events(2)[-1].last_event_id
        stream.close()
        publisher.publish("b1", channel="b")
        publisher.publish("a1", channel="a")
        publisher.publish("b2", channel="b")
        again = connect(second, "channel=a&channel=b", **{"Last-Event-ID": cursor})
        got = [e.data for e in again.events(3)]
        # Order holds within a channel; across channels, events of the same millisecond may swap.
        assert sorted(got) == ["a1", "b1", "b2"] and got.index("b1") < got.index("b2")
    finally:
        publisher.close()


@pytest.mark.fault
def test_redis_restart_while_publishing_loses_nothing(
    start_server: StartServer, own_redis: RedisServer, prefix: str
) -> None:
    server = start_server(config=redis_config(own_redis, prefix, SSE_HEARTBEAT_INTERVAL=0.5), workers=2)
    streams = [connect(server, "channel=live") for _ in range(10)]
    publisher = Publisher(own_redis.url, prefix=prefix)
    sent: List[str] = []
    failures: List[BrokerError] = []
    stop = threading.Event()

    def publish() -> None:
        n = 0
        while not stop.is_set():
            try:
                sent.append(publisher.publish(str(n), id=f"e{n}", channel="live"))
            except BrokerError as exc:
                failures.append(exc)
            n += 1
            time.sleep(0.02)

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        wait_until(lambda: len(sent) >= 30, message="publishing did not start")
        own_redis.stop()
        # Down long enough that publishing fails again and again.
        wait_until(lambda: len(failures) >= 20, message="publishing went on while Redis was down")
        own_redis.start()
        wait_until(lambda: "Reconnected to Redis" in server.log(), timeout=15, message=server.log)
        resumed = len(sent)
        wait_until(lambda: len(sent) >= resumed + 25, message="publishing did not resume")
    finally:
        stop.set()
        thread.join()
        publisher.close()
    assert failures, "publishing while Redis was down must raise"
    assert len(sent) > 50
    # Redis may store an event and go down before it answers: the publisher hears an error,
    # and the event is delivered all the same. What Redis holds is what every stream gets.
    client = own_redis.client()
    history = client.xrange(f"{prefix}:h:{{live}}")
    entries = cast(List[Tuple[bytes, Dict[bytes, bytes]]], history)
    stored = [fields[b"i"].decode() for _, fields in entries]
    client.close()
    assert set(sent) <= set(stored) and len(stored) - len(sent) <= 2, (sent, stored)
    for stream in streams:
        got = [e.last_event_id for e in stream.events(len(stored), timeout=20)]
        assert got == stored
        assert not stream.ended
    assert "Reconnected to Redis" in server.log()
    print(
        f"Redis restart: {len(sent)} published, {len(failures)} refused with BrokerError; "
        f"each of 10 open streams got all {len(sent)} once, in order, without reconnecting"
    )


@pytest.mark.fault
def test_redis_back_without_its_data_makes_streams_resync(start_server: StartServer, prefix: str) -> None:
    """A Redis that comes back empty (no persistence) lost the history the streams' cursors
    point into: they end, and a reconnect with Last-Event-ID hears of the gap."""
    volatile = RedisServer()  # no persistence: a restart empties it
    try:
        server = start_server(config=redis_config(volatile, prefix))
        stream = connect(server, "channel=v")
        publisher = Publisher(volatile.url, prefix=prefix)
        try:
            for n in range(3):
                publisher.publish(str(n), id=f"v{n}", channel="v")
        finally:
            publisher.close()
        assert [e.last_event_id for e in stream.events(3)] == ["v0", "v1", "v2"]
        volatile.stop()
        volatile.start()
        stream.body(timeout=15)  # reads until the response ends, or times out
        assert stream.ended
        again = connect(server, "channel=v", **{"Last-Event-ID": "v2"})
        [missed] = again.events(1)
        assert missed.type == "sse.missed" and json.loads(missed.data) == {"channels": ["v"]}
        again.close()
    finally:
        volatile.cleanup()


def test_app_starts_and_streams_recover_while_redis_is_down(
    start_server: StartServer, own_redis: RedisServer, prefix: str
) -> None:
    own_redis.stop()
    server = start_server(config=redis_config(own_redis, prefix))
    stream = RawStream(server.port, "/stream?channel=x")
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    # A complete, short body: EventSource reconnects after the retry delay.
    assert stream.body() == b"retry: 3000\n:broker unavailable, retry later\n"
    status, body = request(server.port, "POST", "/publish", {"data": "x", "channel": "x"})
    assert status == 503 and "Redis did not take the event" in body["error"]
    own_redis.start()

    def streaming() -> Optional[RawStream]:
        stream = RawStream(server.port, "/stream?channel=x")
        if stream.chunked:
            return stream
        stream.close()
        return None

    stream = wait_until(streaming, timeout=15, message="the stream did not recover", interval=0.2)
    assert stream.chunk() == b"retry: 3000\n"
    event_id = server.publish(data="back", channel="x")
    [event] = stream.events(1)
    assert (event.data, event.last_event_id) == ("back", event_id)


def test_publisher_matches_sse_publish(redis_server: RedisServer, prefix: str) -> None:
    sse = SSE()
    app = create_app({"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix}, sse=sse)
    publisher = Publisher(redis_server.url, prefix=prefix)
    try:
        with app.app_context():
            a = sse.publish({"x": "é"}, type="t", id="one", retry=5, channel="same")
        b = publisher.publish({"x": "é"}, type="t", id="two", retry=5, channel="same")
        with app.app_context():
            replay = get_state(app).broker.replay("same", "0-0")
        assert [m.id for m in replay.messages] == [a, b]
        assert replay.messages[0].body == replay.messages[1].body
        with pytest.raises(ValueError, match="channel"):
            publisher.publish("x", channel="no spaces")
    finally:
        publisher.close()
        get_state(app).broker.close()
