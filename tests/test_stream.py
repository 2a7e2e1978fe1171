"""The stream under a real gunicorn gevent worker, read byte by byte off the socket."""

from __future__ import annotations

import threading
import time
from typing import Dict, List

import pytest

from support.client import HEARTBEAT, RawStream, request
from support.server import Server, StartServer
from support.waiting import wait_until


def assert_only_heartbeats(chunks: List[bytes]) -> None:
    """Nothing but heartbeats arrived (no duplicate of an event already sent)."""
    assert chunks and set(chunks) == {HEARTBEAT}, chunks


def open_stream(server: Server, query: str, **headers: str) -> RawStream:
    stream = RawStream(server.port, "/stream?" + query, headers=headers)
    assert stream.status == 200, stream.body()
    # The opening chunk proves the stream is attached before the test publishes.
    stream.opening()
    return stream


def test_headers_and_retry_arrive_before_any_event(server: Server, channel: str) -> None:
    started = time.monotonic()
    stream = RawStream(server.port, f"/stream?channel={channel}")
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert stream.chunk(timeout=1) == b"retry: 3000\n"
    assert time.monotonic() - started < 1
    stream.close()


def test_idle_stream_sends_heartbeats(server: Server, channel: str) -> None:
    stream = open_stream(server, f"channel={channel}")
    started = time.monotonic()
    beats = stream.chunks(3, timeout=3, heartbeats=True)
    assert beats == [HEARTBEAT] * 3
    # The server's interval is 0.5 s: three beats take about 1.5 s, not less.
    assert 1.2 < time.monotonic() - started < 3
    stream.close()


FRAMING = [
    ("plain", "hello", b"data: hello\n"),
    ("leading space", " lead", b"data:  lead\n"),
    ("trailing newline", "end\n", b"data: end\ndata: \n"),
    ("empty", "", b"data: \n"),
    ("empty lines", "a\n\nb", b"data: a\ndata: \ndata: b\n"),
    ("crlf", "a\r\nb", b"data: a\ndata: b\n"),
    ("lone cr", "a\rb", b"data: a\ndata: b\n"),
    ("non-ascii", "héllo ✓ 🎉", "data: héllo ✓ 🎉\n".encode()),
    ("json", {"n": 1, "s": "é"}, 'data: {"n":1,"s":"é"}\n'.encode()),
]


@pytest.mark.parametrize("data,body", [f[1:] for f in FRAMING], ids=[f[0] for f in FRAMING])
def test_exact_framing_on_the_wire(server: Server, channel: str, data: object, body: bytes) -> None:
    stream = open_stream(server, f"channel={channel}")
    event_id = server.publish(data=data, event="note", channel=channel)
    [chunk] = stream.chunks(1)
    assert chunk == b"event: note\n" + body + b"id: " + event_id.encode() + b"\n\n"
    stream.close()


def test_retry_and_publisher_id_on_the_wire(server: Server, channel: str) -> None:
    stream = open_stream(server, f"channel={channel}")
    assert server.publish(data="x", id="order-17", retry=1500, channel=channel) == "order-17"
    assert stream.chunks(1) == [b"retry: 1500\ndata: x\nid: order-17\n\n"]
    stream.close()


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\0b"], ids=["cr", "lf", "nul"])
def test_cr_lf_nul_in_event_or_id_refused(server: Server, channel: str, field: str, bad: str) -> None:
    stream = open_stream(server, f"channel={channel}")
    status, body = request(server.port, "POST", "/publish", {"data": "x", field: bad, "channel": channel})
    assert status == 400
    assert f"'{field}'" in body["error"] and "CR, LF or NUL" in body["error"]
    # Nothing reached the stream: the next event is the next good one.
    good = server.publish(data="ok", channel=channel)
    assert stream.chunks(1) == [b"data: ok\nid: " + good.encode() + b"\n\n"]
    stream.close()


def _datas(stream: RawStream, count: int) -> List[str]:
    return [e.data for e in stream.events(count)]


@pytest.mark.parametrize("how", ["header", "query"])
def test_replay_after_generated_id_then_live(server: Server, channel: str, how: str) -> None:
    ids = [server.publish(data=f"e{i}", channel=channel) for i in range(5)]
    query = f"channel={channel}"
    headers: Dict[str, str] = {}
    if how == "header":
        headers["Last-Event-ID"] = ids[1]
    else:
        query += f"&last_event_id={ids[1]}"
    stream = open_stream(server, query, **headers)
    events = stream.events(3)
    assert [(e.data, e.last_event_id) for e in events] == [(f"e{i}", ids[i]) for i in (2, 3, 4)]
    server.publish(data="e5", channel=channel)
    assert _datas(stream, 1) == ["e5"]
    assert_only_heartbeats(stream.idle(1.0))
    stream.close()


def test_replay_after_publisher_id(server: Server, channel: str) -> None:
    for name in ("a", "b", "c", "d"):
        server.publish(data=name, id=f"user-{name}", channel=channel)
    stream = open_stream(server, f"channel={channel}", **{"Last-Event-ID": "user-b"})
    assert [(e.data, e.last_event_id) for e in stream.events(2)] == [("c", "user-c"), ("d", "user-d")]
    server.publish(data="e", id="user-e", channel=channel)
    assert _datas(stream, 1) == ["e"]
    stream.close()


def test_multi_channel_resume_with_compound_cursor(server: Server, channel: str) -> None:
    a, b = channel + ".a", channel + ".b"
    stream = open_stream(server, f"channel={a}&channel={b}")
    for i in range(3):
        server.publish(data=f"a{i}", channel=a)
        server.publish(data=f"b{i}", channel=b)
    seen = stream.events(4)
    assert [e.data for e in seen] == ["a0", "b0", "a1", "b1"]
    cursor = seen[-1].last_event_id
    assert cursor.startswith("~") and len(cursor) < 40
    stream.close()
    server.publish(data="b3", channel=b)
    # Reconnect with the channels in another order: the cursor still applies.
    again = open_stream(server, f"channel={b}&channel={a}", **{"Last-Event-ID": cursor})
    assert _datas(again, 3) == ["a2", "b2", "b3"]
    server.publish(data="a3", channel=a)
    assert _datas(again, 1) == ["a3"]
    assert_only_heartbeats(again.idle(1.0))
    again.close()


def test_reconnects_under_continuous_publishing_lose_and_repeat_nothing(server: Server, channel: str) -> None:
    """Subscribe-first, replay, then de-duplicated live: no gap and no duplicate."""
    stop = threading.Event()
    published: List[str] = []

    def publisher() -> None:
        while not stop.is_set() and len(published) < 400:
            server.publish(data=str(len(published)), channel=channel)
            published.append(str(len(published)))

    received: List[str] = []
    cursor = None
    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        for _ in range(6):
            headers: Dict[str, str] = {"Last-Event-ID": cursor} if cursor else {}
            stream = open_stream(server, f"channel={channel}", **headers)
            for event in stream.events(10, timeout=10):
                received.append(event.data)
                cursor = event.last_event_id
            stream.close(abrupt=True)
    finally:
        stop.set()
        thread.join()
    first = int(received[0])
    assert received == [str(i) for i in range(first, first + len(received))]


def test_unknown_last_event_id_sends_missed_then_live(server: Server, channel: str) -> None:
    server.publish(data="old", channel=channel)
    stream = open_stream(server, f"channel={channel}", **{"Last-Event-ID": "never-issued"})
    [missed] = stream.events(1)
    assert missed.type == "sse.missed"
    assert missed.data == '{"channels":["%s"]}' % channel
    new_id = server.publish(data="new", channel=channel)
    [live] = stream.events(1)
    assert (live.data, live.last_event_id) == ("new", new_id)
    stream.close()


MALFORMED = ["~", "~zz", "~!!.??", "1-2-3", "99999999999999999999-1", "x" * 5000, "\x01\x02", "é", ""]


@pytest.mark.parametrize("value", MALFORMED)
@pytest.mark.parametrize("channels", [1, 2])
def test_malformed_last_event_id_never_5xx(server: Server, channel: str, value: str, channels: int) -> None:
    query = "&".join(f"channel={channel}.{i}" for i in range(channels))
    stream = RawStream(server.port, "/stream?" + query, headers={"Last-Event-ID": value})
    if stream.status != 200:
        # gunicorn itself refuses some header bytes: a client error, never a server error.
        assert 400 <= stream.status < 500
        return
    server.publish(data="live", channel=f"{channel}.0")
    events = stream.events(2 if value else 1)
    assert events[-1].data == "live"
    if value:
        assert events[0].type == "sse.missed"
    stream.close()


@pytest.mark.parametrize(
    "query",
    [
        "channel=",
        "channel=a%20b",
        "channel=" + "x" * 201,
        "channel=%C3%A9",
        "channel=a%0Ab",
        "channel=ok&channel=bad!",
    ],
)
def test_bad_channel_name_is_400(server: Server, query: str) -> None:
    stream = RawStream(server.port, "/stream?" + query)
    assert stream.status == 400
    assert b"channel" in stream.body()


def test_too_many_channels_is_400(server: Server) -> None:
    stream = RawStream(server.port, "/stream?" + "&".join(f"channel=c{i}" for i in range(21)))
    assert stream.status == 400
    assert b"At most 20 channels" in stream.body()


def _wait_stats(server: Server, key: str, value: int, timeout: float) -> float:
    """Wait until ``server.stats()[key] == value``; the seconds that took."""
    started = time.monotonic()
    wait_until(
        lambda: server.stats()[key] == value,
        timeout=timeout,
        message=lambda: f"{key} stayed at {server.stats()[key]}, expected {value}",
        interval=0.05,
    )
    return time.monotonic() - started


@pytest.mark.parametrize("abrupt", [True, False], ids=["rst", "fin"])
def test_vanished_clients_release_everything_within_a_heartbeat(
    start_server: StartServer, abrupt: bool
) -> None:
    server: Server = start_server(config={"SSE_HEARTBEAT_INTERVAL": 5})
    before = server.stats()
    streams = [open_stream(server, f"channel=crowd&channel=own-{i}") for i in range(300)]
    assert server.stats()["streams"] == 300
    assert server.stats()["subscriptions"] == 301
    for stream in streams:
        stream.close(abrupt=abrupt)
    # Well within one heartbeat (5 s): the worker notices the close, not the next failed write.
    assert _wait_stats(server, "streams", 0, timeout=4.5) < 4.5
    after = server.stats()
    assert after["subscriptions"] == 0 and after["channels"] == 0
    assert after["fds"] <= before["fds"] + 2
    # The worker still serves.
    stream = open_stream(server, "channel=crowd")
    server.publish(data="still here", channel="crowd")
    assert _datas(stream, 1) == ["still here"]
    stream.close()
    assert "Traceback" not in server.log()


def test_max_connection_age_ends_stream_cleanly(start_server: StartServer, channel: str) -> None:
    server: Server = start_server(config={"SSE_MAX_CONNECTION_AGE": 1})
    stream = open_stream(server, f"channel={channel}")
    started = time.monotonic()
    assert stream.idle(3) == []
    assert stream.ended
    assert 0.8 < time.monotonic() - started < 2


TOTAL = 150


def test_client_that_cannot_keep_up_is_cut_and_replays(start_server: StartServer, channel: str) -> None:
    server: Server = start_server(config={"SSE_CLIENT_QUEUE_SIZE": 4})
    stream = RawStream(server.port, f"/stream?channel={channel}", rcvbuf=4096)
    stream.opening()
    big = "x" * 60000
    ids = [server.publish(data="0:small", channel=channel)]
    received = stream.events(1)  # then it stops reading
    assert [e.data for e in received] == ["0:small"]
    ids += [server.publish(data=f"{i}:{big}", channel=channel) for i in range(1, TOTAL)]
    # The worker cuts the stream instead of queueing without bound.
    _wait_stats(server, "streams", 0, timeout=5)
    try:
        while True:
            received.extend(stream.parser.feed(stream.chunk(timeout=5) or b""))
            if stream.ended:
                break
    except (EOFError, ConnectionError):
        pass
    assert len(received) < TOTAL
    assert [e.data.split(":")[0] for e in received] == [str(i) for i in range(len(received))]
    # The cut is a reset: the kernel drops what was queued for the client (more than its
    # 4 KB buffer), so it reads little or nothing more before its connection breaks.
    assert received[0].data == "0:small"
    cursor = received[-1].last_event_id
    start = ids.index(cursor) + 1
    again = open_stream(server, f"channel={channel}", **{"Last-Event-ID": cursor})
    replayed = again.events(TOTAL - start, timeout=10)
    assert [e.data.split(":")[0] for e in replayed] == [str(i) for i in range(start, TOTAL)]
    again.close()


def test_sync_worker_is_warned_about(start_server: StartServer) -> None:
    server: Server = start_server(args=["-k", "sync"])
    stream = RawStream(server.port, "/stream?channel=x&channel=y")
    stream.opening()
    stream.close()
    warning = "this gunicorn worker is synchronous, so one open stream blocks the whole worker"
    wait_until(lambda: warning in server.log(), message=server.log)


def test_memory_broker_with_several_workers_is_warned_about(start_server: StartServer) -> None:
    server: Server = start_server(workers=2)
    server.worker_pids(2)  # the warning is about workers that exist
    for _ in range(4):  # whichever worker answers warns
        stream = open_stream(server, "channel=x")
        stream.close()
    wait_until(
        lambda: "several gunicorn workers share no in-process broker" in server.log(), message=server.log
    )


def test_one_worker_with_memory_broker_is_not_warned_about(server: Server) -> None:
    open_stream(server, "channel=x").close()
    assert "several gunicorn workers" not in server.log()
    assert "synchronous" not in server.log()


def test_non_ascii_publisher_id_resumes(server: Server, channel: str) -> None:
    """Regression: browsers send Last-Event-ID as UTF-8, which WSGI decodes as Latin-1."""
    server.publish(data="a", id="é✓-1", channel=channel)
    server.publish(data="b", id="é✓-2", channel=channel)
    utf8_bytes = "é✓-1".encode().decode("latin-1")  # RawStream sends header text as Latin-1
    raw = RawStream(server.port, f"/stream?channel={channel}", headers={"Last-Event-ID": utf8_bytes})
    raw.opening()
    assert [(e.data, e.last_event_id) for e in raw.events(1)] == [("b", "é✓-2")]
