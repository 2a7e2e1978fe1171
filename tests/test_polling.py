"""Long polling (``?poll=1``) on the stream endpoint, and the JS client's fallback to it.

A poll answers at once with the events after its cursor, or waits up to SSE_POLL_TIMEOUT for
the next ones, or ends with the cursor alone; the ids, checks and history are the stream's.
Behind a proxy that buffers whole responses, sse-client.js falls back to polling by itself.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List

import pytest

from support.client import RawStream, request
from support.parser import SSEParser
from support.server import Server, StartServer, start_gunicorn
from support.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from support.nginx import StartNginx

CONFIG = {"SSE_POLL_TIMEOUT": 2, "SSE_HEARTBEAT_INTERVAL": 5, "SSE_CORS_ORIGINS": ["http://app.example"]}
APP = "support.app:served(record_requests=True)"


@pytest.fixture(scope="module")
def poll_server() -> Iterator[Server]:
    srv = start_gunicorn(app=APP, config=CONFIG)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()


def poll(server: Server, query: str, cursor: str = "", timeout: float = 5.0, **headers: str) -> RawStream:
    if cursor:
        headers["Last-Event-ID"] = cursor
    return RawStream(server.port, f"/stream?{query}&poll=1", headers=headers, timeout=timeout)


def events_of(body: bytes) -> List[Any]:
    parser = SSEParser()
    return [(e.type, e.data, e.last_event_id) for e in parser.feed(body)]


def test_a_poll_answers_at_once_with_what_is_after_the_cursor(poll_server: Server) -> None:
    cursor = poll_server.publish(data="zero", channel="p1")
    ids = [poll_server.publish(data=f"e{n}", channel="p1") for n in range(3)]
    started = time.monotonic()
    answer = poll(poll_server, "channel=p1", cursor)
    body = answer.body()
    assert time.monotonic() - started < 1.0  # not the 2 s of SSE_POLL_TIMEOUT
    assert answer.ended and answer.headers["content-type"].startswith("text/event-stream")
    assert events_of(body) == [("message", f"e{n}", ids[n]) for n in range(3)]
    # The same cursor on a stream gives the same events with the same ids.
    stream = RawStream(poll_server.port, "/stream?channel=p1", headers={"Last-Event-ID": cursor})
    stream.opening()
    assert [(e.type, e.data, e.last_event_id) for e in stream.events(3)] == events_of(body)


def test_a_poll_waits_for_the_next_event_then_ends(poll_server: Server) -> None:
    cursor = poll_server.publish(data="zero", channel="p2")
    answer = poll(poll_server, "channel=p2", cursor)
    opening = answer.chunk()
    assert opening is not None and events_of(opening) == []  # nothing after the cursor yet
    event_id = poll_server.publish(data="next", channel="p2")
    assert events_of(answer.body()) == [("message", "next", event_id)]
    assert answer.ended


def test_a_poll_with_nothing_new_ends_with_the_cursor(poll_server: Server) -> None:
    """No cursor and no event within SSE_POLL_TIMEOUT: the answer carries the channel's
    position, so the next poll misses nothing published in between."""
    head = poll_server.publish(data="old", channel="p3")
    started = time.monotonic()
    answer = poll(poll_server, "channel=p3")
    body = answer.body()
    assert 1.5 < time.monotonic() - started < 4.0
    assert b":cursor " + head.encode() + b"\n" in body and events_of(body) == []
    later = poll_server.publish(data="later", channel="p3")
    assert events_of(poll(poll_server, "channel=p3", head).body()) == [("message", "later", later)]


def test_a_poll_of_several_channels_carries_the_compound_cursor(poll_server: Server) -> None:
    first = poll(poll_server, "channel=p4&channel=p5")
    body = first.body()
    cursor = body.rsplit(b":cursor ", 1)[1].split(b"\n")[0].decode()
    a = poll_server.publish(data="a", channel="p4")
    b = poll_server.publish(data="b", channel="p5")
    got = events_of(poll(poll_server, "channel=p4&channel=p5", cursor).body())
    assert [data for _, data, _ in got] == ["a", "b"] and a != b
    # Every id is a cursor for both channels: after "a", only "b".
    assert [
        data for _, data, _ in events_of(poll(poll_server, "channel=p4&channel=p5", got[0][2]).body())
    ] == ["b"]


def test_a_poll_passes_the_same_checks_as_a_stream(poll_server: Server) -> None:
    refused = poll(poll_server, "channel=admin")
    assert refused.status == 401
    assert poll(poll_server, "channel=p6", Origin="http://evil.example").status == 403
    allowed = poll(poll_server, "channel=p6", Origin="http://app.example", timeout=5)
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == "http://app.example"


# -- the JS client behind a proxy that buffers whole responses --------------------------------


def test_the_js_client_falls_back_to_polling_behind_a_buffering_proxy(
    start_server: StartServer, start_nginx: StartNginx, page: Page
) -> None:
    """nginx with ``proxy_buffering on`` and X-Accel-Buffering ignored (``/buffered/``) holds
    the stream; the client polls instead, tries a stream again later, and gets every event
    once, in order."""
    server = start_server(app=APP, config={"SSE_POLL_TIMEOUT": 3, "SSE_HEARTBEAT_INTERVAL": 1})
    proxy = start_nginx(server.port)
    page.goto(f"http://127.0.0.1:{proxy.port}/buffered/")
    page.wait_for_function("window.ready === true")
    page.evaluate(
        """() => {
            window.got = [];
            window.conn = connect("/buffered/stream?channel=held", {
                streamAgainAfter: 6000,
                onEvent: (e) => window.got.push([e.data, e.lastEventId]),
            });
        }"""
    )
    # The client has no cursor: it gets what is published once its stream is open, not before.
    wait_until(lambda: server.stats()["streams"] == 1, message="the stream did not open")
    published: List[Dict[str, str]] = []

    def publish() -> None:
        for n in range(48):  # 12 s: across the first fallback and the stream tried again
            published.append({"data": f"e{n}", "id": server.publish(data=f"e{n}", channel="held")})
            time.sleep(0.25)  # the publisher's pace

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        wait_until(lambda: page.evaluate("window.conn.polling"), timeout=8, message="the client polls")
        publisher.join()
        wait_until(
            lambda: len(page.evaluate("window.got")) >= len(published),
            timeout=15,
            message=lambda: (
                f"got {len(page.evaluate('window.got'))} of {len(published)}: "
                f"{request(server.port, 'GET', '/requests?path=/stream')[1]}"
            ),
        )
    finally:
        publisher.join()
    got = page.evaluate("window.got")
    assert got == [[p["data"], p["id"]] for p in published]  # all, in order, once
    status, recorded = request(server.port, "GET", "/requests?path=/stream")
    kinds = ["poll" if "poll=1" in r["query"] else "stream" for r in recorded]
    assert kinds[0] == "stream" and "poll" in kinds
    assert "stream" in kinds[kinds.index("poll") :], kinds  # a stream tried again later


def test_a_poll_resumes_where_a_held_stream_with_the_same_opening_token_started(poll_server: Server) -> None:
    """A client with no cursor names its first stream (``?opening=``); when a proxy holds that
    stream back, its first poll (same token, still no cursor) gets what was published since
    the stream started."""
    token = "t" * 20
    held = RawStream(poll_server.port, f"/stream?channel=p7&opening={token}")
    held.opening()
    ids = [poll_server.publish(data=f"e{n}", channel="p7") for n in range(3)]
    held.close()
    answer = poll(poll_server, f"channel=p7&opening={token}")
    assert events_of(answer.body()) == [("message", f"e{n}", ids[n]) for n in range(3)]
    # Another token knows nothing: a poll without a cursor starts from now.
    other = poll(poll_server, "channel=p7&opening=" + "u" * 20)
    assert events_of(other.body()) == []
    # The token names that stream's channels only: for others it starts from now too.
    elsewhere = poll(poll_server, f"channel=p7&channel=p7b&opening={token}")
    assert events_of(elsewhere.body()) == []


@pytest.mark.parametrize(
    "token", ["short", "x" * 65, "has%20space%20in%20it%21%21%21", "../../../etc/passwd/xx"]
)
def test_a_bad_opening_token_is_refused(poll_server: Server, token: str) -> None:
    assert poll(poll_server, f"channel=p8&opening={token}").status == 400
