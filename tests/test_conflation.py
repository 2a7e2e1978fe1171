"""Conflation: ``publish(..., conflate=key)``. A client that falls behind gets the newest event
of each key and is not cut for lag; one that keeps up gets every event; a replay sends every
event without a key and the newest of each key, in order; ``?max_rate=`` applies the same rule.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from flask_sse_ext import SSE, Publisher
from flask_sse_ext.brokers.base import Broker, Message
from flask_sse_ext.brokers.memory import MemoryBroker
from flask_sse_ext.brokers.redis import RedisBroker
from flask_sse_ext.client import LAGGED, Client
from flask_sse_ext.conflation import conflate
from flask_sse_ext.state import get_state
from support.app import create_app
from support.client import RawStream, request
from support.parser import ParsedEvent
from support.redis import RedisServer
from support.server import Server, StartServer
from support.waiting import wait_until

KEYS = ("cpu", "mem", "disk", "net")


def message(n: int, key: Optional[str], channel: str = "c") -> Message:
    return Message(channel, (1, n), None, b"data: %d\n" % n, key)


# -- the rules --------------------------------------------------------------------------------


def test_replay_keeps_unkeyed_events_and_the_newest_of_each_key_in_order() -> None:
    events = [
        message(1, "a"),
        message(2, None),
        message(3, "a"),
        message(4, "b"),
        message(5, "a", channel="d"),  # same key, other channel: its own
        message(6, None),
        message(7, "a"),
    ]
    assert [m.position[1] for m in conflate(events)] == [2, 4, 5, 6, 7]
    assert conflate([]) == []


def test_a_queue_holds_one_event_per_key_and_is_not_cut() -> None:
    client = Client(("c",), maxsize=3, maxbytes=None)
    for n in range(100):
        client.put(message(n, KEYS[n % 2]))
    assert client.closed is None
    assert [m.position[1] for m in client.queue] == [98, 99]
    assert client.queued_bytes == sum(len(m.frame) for m in client.queue)
    for n in range(100, 103):
        client.put(message(n, None))  # unkeyed events still count against the bound
    assert client.closed == LAGGED


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest, prefix: str) -> Iterator[Broker]:
    if request.param == "memory":
        made: Broker = MemoryBroker(10)
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        made = RedisBroker.from_url(redis.url, prefix=prefix, history_size=10)
    yield made
    made.close()


def test_the_key_travels_live_and_through_history(broker: Broker) -> None:
    got: List[Message] = []
    broker.start(got.append, lambda channel: None)
    broker.subscribe("c")
    broker.ready(["c"])
    first = broker.publish("c", b"data: 1\n")
    keyed = broker.publish("c", b"data: 2\n", "order-7", key="cpu")
    wait_until(lambda: len(got) >= 2)
    assert [(m.key, m.id, m.frame) for m in got] == [
        (None, first.id, first.frame),
        ("cpu", "order-7", keyed.frame),
    ]
    replay = broker.replay("c", first.id)
    assert [(m.key, m.id) for m in replay.messages] == [("cpu", "order-7")]


def test_publisher_and_publish_check_the_key(redis_server: RedisServer, prefix: str) -> None:
    publisher = Publisher(redis_server.url, prefix=prefix)
    try:
        for bad in ["", "has space", "x" * 201, 7]:
            with pytest.raises(ValueError, match="conflation key"):
                publisher.publish("v", channel="c", conflate=bad)  # type: ignore[arg-type]
        event_id = publisher.publish("v", channel="c", conflate="cpu:0")
        assert publisher.broker.replay("c", "0-0").messages[-1].id == event_id
        assert publisher.broker.replay("c", "0-0").messages[-1].key == "cpu:0"
    finally:
        publisher.close()


# -- served streams ---------------------------------------------------------------------------

#: Small bounds, so that a reader that stops falls behind within a second.
CONFIG = {"SSE_CLIENT_QUEUE_SIZE": 20, "SSE_SEND_BUFFER_BYTES": 4096, "SSE_HEARTBEAT_INTERVAL": 1}


def read_events(stream: RawStream, until: Any, timeout: float) -> List[ParsedEvent]:
    """Events of ``stream`` until ``until(events)`` holds; raises ``EOFError`` at its end."""
    out: List[ParsedEvent] = []
    deadline = time.monotonic() + timeout
    while not until(out):
        data = stream.chunk(max(0.01, deadline - time.monotonic()))
        if data is None:
            raise EOFError(f"the stream ended after {len(out)} events")
        out.extend(stream.parser.feed(data))
    return out


def seq(event: ParsedEvent) -> Tuple[str, int]:
    fields = json.loads(event.data)
    return fields["key"], fields["seq"]


def publish_steadily(server: Server, channel: str, count: int, rate: float, keyed: bool) -> Dict[str, int]:
    """``count`` events of about 2 KB at ``rate`` a second, keys in turn; the last seq per key."""
    last: Dict[str, int] = {}
    start = time.monotonic()
    for n in range(count):
        key = KEYS[n % len(KEYS)]
        fields: Dict[str, Any] = {"data": {"key": key, "seq": n, "pad": "x" * 2000}, "channel": channel}
        if keyed:
            fields["conflate"] = key
        server.publish(**fields)
        last[key] = n
        time.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))  # the publisher's pace
    return last


def test_a_client_that_stops_reading_resumes_with_the_newest_value_per_key(start_server: StartServer) -> None:
    server = start_server(config=CONFIG)
    count = 250  # 5 s at 50 events a second
    slow = RawStream(server.port, "/stream?channel=metrics", rcvbuf=4096)
    plain = RawStream(server.port, "/stream?channel=plain", rcvbuf=4096)
    steady = RawStream(server.port, "/stream?channel=metrics")
    for stream in (slow, plain, steady):
        stream.opening()
    kept: List[ParsedEvent] = []
    reader = threading.Thread(target=lambda: kept.extend(read_events(steady, lambda e: len(e) >= count, 30)))
    reader.start()
    both = threading.Thread(target=publish_steadily, args=(server, "plain", count, 50, False))
    both.start()
    last = publish_steadily(server, "metrics", count, 50, keyed=True)
    both.join()
    reader.join()
    # The reader that kept up got every event, in order.
    assert [seq(e)[1] for e in kept] == list(range(count))
    # The one that stopped for 5 s gets, still on the same connection, the newest of each key.
    seen: Dict[str, int] = {}

    def caught_up(events: List[ParsedEvent]) -> bool:
        for event in events[len(seen_events) :]:
            key, n = seq(event)
            seen[key] = n
            seen_events.append(event)
        return seen == last

    seen_events: List[ParsedEvent] = []
    got = read_events(slow, caught_up, 10)
    numbers = [seq(e)[1] for e in got]
    assert numbers == sorted(numbers) and len(numbers) < count / 2, numbers
    assert server.stats()["lagged"] == 1  # only the channel without keys was cut
    with pytest.raises((EOFError, ConnectionError)):
        read_events(plain, lambda e: False, 10)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_replay_sends_the_newest_value_per_key(
    backend: str, start_server: StartServer, request: pytest.FixtureRequest, prefix: str
) -> None:
    config: Dict[str, Any] = {"SSE_HEARTBEAT_INTERVAL": 1}
    if backend == "redis":
        config.update(SSE_REDIS_URL=request.getfixturevalue("redis_server").url, SSE_REDIS_PREFIX=prefix)
    server = start_server(config=config)
    cursor = server.publish(data="before", channel="r")
    plan = [("a1", "a"), ("u1", None), ("a2", "a"), ("b1", "b"), ("u2", None), ("a3", "a")]
    ids = {}
    for data, key in plan:
        ids[data] = server.publish(data=data, channel="r", **({"conflate": key} if key else {}))
    stream = RawStream(server.port, "/stream?channel=r", headers={"Last-Event-ID": cursor})
    stream.opening()
    replayed = stream.events(4)
    assert [(e.data, e.last_event_id) for e in replayed] == [(d, ids[d]) for d in ("u1", "b1", "u2", "a3")]


def test_max_rate_conflates_a_client_that_reads(start_server: StartServer) -> None:
    server = start_server(config={**CONFIG, "SSE_MAX_RATE_FLOOR": 0.5})
    stream = RawStream(server.port, "/stream?channel=rated&max_rate=2")
    stream.opening()
    chunks: List[bytes] = []
    events: List[ParsedEvent] = []

    def read() -> None:
        def until(got: List[ParsedEvent]) -> bool:
            return bool(got) and seq(got[-1])[1] == 99

        while not until(events):
            data = stream.chunk(10)
            assert data is not None
            if data != b":\n":
                chunks.append(data)
                events.extend(stream.parser.feed(data))

    reader = threading.Thread(target=read)
    reader.start()
    started = time.monotonic()
    last = publish_steadily(server, "rated", 100, 50, keyed=True)
    reader.join()
    elapsed = time.monotonic() - started
    assert len(chunks) <= 2 * elapsed + 2, len(chunks)  # at most two writes a second
    newest = {seq(e)[0]: seq(e)[1] for e in events}
    assert newest == last and len(events) < 100


def test_max_rate_sends_a_busy_channel_whole(start_server: StartServer) -> None:
    """Regression: a rated stream waited out an interval after every 64 KB chunk, so it sent
    at most 64 KB per interval; unkeyed events at 100 KB/s outgrew the queue and the client
    was cut for lag. Events without a key are all sent, in batches."""
    config = {"SSE_CLIENT_QUEUE_SIZE": 1000, "SSE_CLIENT_QUEUE_BYTES": 160 * 1024, "SSE_MAX_RATE_FLOOR": 1}
    server = start_server(config=config)
    stream = RawStream(server.port, "/stream?channel=busy&max_rate=1")
    stream.opening()
    count = 200  # 4 s of 2 KB events at 50 a second
    events: List[ParsedEvent] = []
    reader = threading.Thread(
        target=lambda: events.extend(read_events(stream, lambda e: len(e) >= count, 30))
    )
    reader.start()
    publish_steadily(server, "busy", count, 50, keyed=False)
    reader.join()
    assert [seq(e)[1] for e in events] == list(range(count))
    assert server.stats()["lagged"] == 0


@pytest.mark.parametrize(
    "query, says",
    [
        ("max_rate=0.5", "at least 1"),
        ("max_rate=abc", "max_rate"),
        ("max_rate=inf", "max_rate"),
        ("max_rate=nan", "max_rate"),
        ("poll=yes", "poll must be 1"),
    ],
)
def test_bad_delivery_parameters_are_refused(server: Server, query: str, says: str) -> None:
    status, body = request(server.port, "GET", f"/stream?channel=c&{query}")
    assert status == 400 and says in str(body), body


def test_the_cli_publishes_with_a_key() -> None:
    app = create_app(sse=SSE())
    runner = app.test_cli_runner()
    with app.app_context():
        state = get_state(app)
        marker = state.publish("marker", None, None, None, "c")
        result = runner.invoke(args=["sse", "publish", "c", "v", "--conflate", "cpu"])
        assert result.exit_code == 0, result.output
        (message,) = state.process().broker.replay("c", marker).messages
    assert (message.id, message.key) == (result.output.splitlines()[0], "cpu")
    bad = runner.invoke(args=["sse", "publish", "c", "v", "--conflate", "no spaces"])
    assert bad.exit_code != 0 and "conflation key" in bad.output
