"""The browser client (flask_sse_ext/static/sse-client.js) in a real headless Chromium.

The page comes from the test app (``support.app``, recording requests) under gunicorn and
imports the client from the extension's static route. The app records every request it gets,
so a test counts reconnections on the server side; the page wraps ``fetch`` to time every
attempt the client makes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Union

import pytest

from support.client import request
from support.paths import ROOT
from support.ports import free_port
from support.server import Server, StartServer
from support.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page

APP = "support.app:served(record_requests=True)"
#: post_worker_init ends the streams of a stopping worker at once (see test_gunicorn).
CONF = ["-c", str(ROOT / "gunicorn.conf.py")]
#: A short server retry hint, so a client that wrongly reconnects does so within the test.
FAST = {"SSE_RETRY": 100, "SSE_HEARTBEAT_INTERVAL": 1}

#: Installed in the page once it has imported the client: ``window.open_(name, url, options)``
#: connects and logs what the callbacks see in ``window.runs[name]``.
PRELUDE = """
() => {
    const realFetch = window.fetch;
    window.fetches = [];
    window.fetch = (input, init) => {
        window.fetches.push({url: String(input), at: performance.now()});
        return realFetch(input, init);
    };
    window.runs = {};
    window.open_ = (name, url, options = {}) => {
        const run = {events: [], errors: [], opens: 0, closed: false};
        const controller = new AbortController();
        run.controller = controller;
        run.conn = connect(url, {
            signal: controller.signal,
            ...options,
            onEvent: (e) => run.events.push(e),
            onOpen: () => { run.opens += 1; },
            onError: (e) => run.errors.push({
                message: e.message, status: e.status ?? null, retryIn: e.retryIn ?? null,
                at: performance.now(), state: run.conn.readyState,
            }),
        });
        run.conn.closed.then(() => { run.closed = true; });
        window.runs[name] = run;
    };
}
"""

STATE = """
(name) => {
    const run = window.runs[name];
    return {
        events: run.events, errors: run.errors, opens: run.opens, closed: run.closed,
        readyState: run.conn.readyState, lastEventId: run.conn.lastEventId,
    };
}
"""

CONNECTING, OPEN, CLOSED = 0, 1, 2


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    """Each test, servers included, finishes within 15 s."""
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"the test took {elapsed:.1f} s"


def open_page(page: Page, server: Server) -> None:
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_function("window.ready === true", timeout=5000)
    page.evaluate(PRELUDE)


def state(page: Page, name: str = "main") -> Dict[str, Any]:
    got: Dict[str, Any] = page.evaluate(STATE, name)
    return got


def requests_to(server: Server, path: str) -> List[Dict[str, Optional[str]]]:
    status, body = request(server.port, "GET", f"/requests?path={path}")
    assert status == 200, body
    recorded: List[Dict[str, Optional[str]]] = body
    return recorded


def seen_ids(server: Server) -> List[Optional[str]]:
    status, body = request(server.port, "GET", "/seen-ids")
    assert status == 200, body
    ids: List[Optional[str]] = body
    return ids


# -- the parser ---------------------------------------------------------------------------

Chunk = Union[str, List[int]]  # text, or bytes as a list of ints (fed as a Uint8Array)

PARSE = """
([chunks, lastEventId]) => {
    const events = [], retries = [];
    const parser = createParser({
        onEvent: (e) => events.push(e), onRetry: (ms) => retries.push(ms), lastEventId,
    });
    for (const chunk of chunks) parser.feed(typeof chunk === "string" ? chunk : new Uint8Array(chunk));
    return {events, retries, lastEventId: parser.lastEventId};
}
"""


def msg(data: str, last_id: str = "", type: str = "message") -> Dict[str, str]:
    return {"type": type, "data": data, "lastEventId": last_id}


UTF8 = list("data: é✓\n\n".encode("utf-8"))
#: (name, chunks, initial last event id, events, retries, last event id at the end)
# fmt: off
PARSER_CASES: List[Any] = [
    ("LF", ["data: a\n\n"], "", [msg("a")], [], ""),
    ("CR", ["data: a\rdata: b\r\r"], "", [msg("a\nb")], [], ""),
    ("CRLF", ["data: a\r\ndata: b\r\n\r\n"], "", [msg("a\nb")], [], ""),
    # The LF of a CRLF that arrives in the next chunk is not a second (blank) line.
    ("CRLF split", ["data: a\r", "\ndata: b\r", "\n\r", "\n"], "", [msg("a\nb")], [], ""),
    ("CR then empty chunk", ["data: a\r", "", "\ndata: b\n\n"], "", [msg("a\nb")], [], ""),
    ("CR at chunk end then CR", ["data: a\r", "\r"], "", [msg("a")], [], ""),
    ("one char at a time", list("id: 1\r\nevent: e\r\ndata: x\r\n\r\n"), "", [msg("x", "1", "e")], [], "1"),
    ("BOM", ["\ufeffdata: a\n\n"], "", [msg("a")], [], ""),
    ("BOM as bytes, split", [[0xEF], [0xBB, 0xBF] + list(b"data: a\n\n")], "", [msg("a")], [], ""),
    ("only one BOM is dropped", ["\ufeff\ufeffdata: a\n\ndata: b\n\n"], "", [msg("b")], [], ""),
    ("BOM after the start is data", ["data: a\n\n", "\ufeffdata: b\n\n"], "", [msg("a")], [], ""),
    ("UTF-8 split inside a character", [UTF8[:7], UTF8[7:9], UTF8[9:]], "", [msg("é✓")], [], ""),
    ("comments", [": hello\n:\ndata: a\n: between\n\n"], "", [msg("a")], [], ""),
    ("comment alone dispatches nothing", [":\n\n"], "", [], [], ""),
    ("id", ["id: 5\ndata: a\n\ndata: b\n\n"], "", [msg("a", "5"), msg("b", "5")], [], "5"),
    ("id with NUL is ignored", ["id: 5\ndata: a\n\nid: 6\x00x\ndata: b\n\n"], "", [msg("a", "5"), msg("b", "5")], [], "5"),
    ("empty id resets", ["id: 5\ndata: a\n\nid\ndata: b\n\n"], "", [msg("a", "5"), msg("b")], [], ""),
    ("id without data sets the id only", ["id: 9\n\n"], "", [], [], "9"),
    ("a :cursor comment sets the id", [":cursor ~k1.k2\ndata: a\n\n"], "", [msg("a", "~k1.k2")], [], "~k1.k2"),
    ("other comments set no id", [": cursor x\n:cursorx\n"], "3", [], [], "3"),
    ("id of an unfinished event is not kept", ["id: 9\ndata: x\n"], "3", [], [], "3"),
    ("initial id", ["data: a\n\n"], "3", [msg("a", "3")], [], "3"),
    ("retry", ["retry: 250\n"], "", [], [250], ""),
    (
        "retry with non-digits is ignored",
        ["retry: 1.5\nretry: 12a\nretry: -1\nretry:  10\nretry:\nretry\nretry: 0x10\nretry: 0\n"],
        "", [], [0], "",
    ),
    ("data without colon", ["data\ndata\ndata: x\n\n"], "", [msg("\n\nx")], [], ""),
    ("data alone is an empty event", ["data\n\n"], "", [msg("")], [], ""),
    ("one space removed", ["data:x\n\ndata:  two \n\n"], "", [msg("x"), msg(" two ")], [], ""),
    ("colon in value", ["data: a:b: c\n\n"], "", [msg("a:b: c")], [], ""),
    ("event type then reset", ["event: add\ndata: 1\n\ndata: 2\n\n"], "", [msg("1", type="add"), msg("2")], [], ""),
    ("event without data is dropped", ["event: e\n\ndata: z\n\n"], "", [msg("z")], [], ""),
    ("unknown fields", ["foo: bar\nData: no\nid : no\ndata: ok\n\n"], "", [msg("ok")], [], ""),
    ("unfinished event", ["data: a\n\ndata: never"], "", [msg("a")], [], ""),
    ("trailing LF of data", ["data: a\ndata:\n\n"], "", [msg("a\n")], [], ""),
]
# fmt: on


def test_parser_follows_the_spec(start_server: StartServer, page: Page) -> None:
    server = start_server(app=APP)
    open_page(page, server)
    failures = []
    for name, chunks, initial, events, retries, last_id in PARSER_CASES:
        got = page.evaluate(PARSE, [chunks, initial])
        want = {"events": events, "retries": retries, "lastEventId": last_id}
        if got != want:
            failures.append(f"{name}: got {got}, want {want}")
    assert not failures, "\n".join(failures)


# -- direct streams ------------------------------------------------------------------------


def test_post_stream_delivers_tokens_then_ends_without_reconnecting(
    start_server: StartServer, page: Page
) -> None:
    server = start_server(app=APP, config=FAST)
    open_page(page, server)
    page.evaluate(
        """() => open_("main", "/chat", {
            method: "POST", headers: {"Content-Type": "application/json"},
            body: JSON.stringify({prompt: "hello there"}), retry: 50,
        })"""
    )
    page.wait_for_function("window.runs.main.closed", timeout=5000)
    got = state(page)
    expected = [("token", "You"), ("token", "said:"), ("token", "hello"), ("token", "there"), ("sse.end", "")]
    assert [(e["type"], e["data"]) for e in got["events"]] == expected
    assert got["readyState"] == CLOSED and got["opens"] == 1 and got["errors"] == []
    page.wait_for_timeout(600)  # the server's retry: is 100 ms, the client's 50 ms
    chats = requests_to(server, "/chat")
    assert len(chats) == 1, chats
    assert chats[0]["method"] == "POST"
    assert chats[0]["accept"] == "text/event-stream" and chats[0]["cache_control"] == "no-cache"
    assert chats[0]["last_event_id"] is None
    assert page.evaluate("window.fetches.length") == 1


# -- authentication ------------------------------------------------------------------------

TOKEN_THEN_OPEN = """
async ([name, identity]) => {
    const token = await (await fetch("/token?identity=" + identity)).text();
    open_(name, "/stream?channel=secret", {headers: {Authorization: "Bearer " + token}, retry: 50});
}
"""


def test_bearer_token_opens_a_channel_only_alice_may_read(start_server: StartServer, page: Page) -> None:
    server = start_server(app=APP, config=FAST)
    open_page(page, server)
    page.evaluate(TOKEN_THEN_OPEN, ["main", "alice"])
    page.wait_for_function("window.runs.main.opens === 1", timeout=5000)
    event_id = server.publish(data="for alice", channel="secret")
    page.wait_for_function("window.runs.main.events.length === 1", timeout=5000)
    got = state(page)
    assert got["events"] == [msg("for alice", event_id)]
    assert got["readyState"] == OPEN and got["lastEventId"] == event_id


def test_refused_stream_reports_the_status_and_does_not_reconnect(
    start_server: StartServer, page: Page
) -> None:
    server = start_server(app=APP, config=FAST)
    open_page(page, server)
    page.evaluate("""() => open_("anonymous", "/stream?channel=secret", {retry: 50})""")
    page.evaluate(TOKEN_THEN_OPEN, ["bob", "bob"])
    page.wait_for_function("window.runs.anonymous.closed && window.runs.bob.closed", timeout=5000)
    page.wait_for_timeout(500)  # ten times the client's retry delay
    for name, status in (("anonymous", 401), ("bob", 403)):
        got = state(page, name)
        assert got["readyState"] == CLOSED and got["opens"] == 0 and got["events"] == []
        assert [(e["status"], e["retryIn"], e["state"]) for e in got["errors"]] == [(status, None, CLOSED)]
    assert len(requests_to(server, "/stream")) == 2


# -- stopping ------------------------------------------------------------------------------


@pytest.mark.parametrize("path, status", [("/gone", 204), ("/forbidden", 403)])
def test_no_content_or_client_error_stops_after_one_request(
    start_server: StartServer, page: Page, path: str, status: int
) -> None:
    server = start_server(app=APP, config=FAST)
    open_page(page, server)
    page.evaluate("(path) => open_('main', path, {retry: 20})", path)
    page.wait_for_function("window.runs.main.closed", timeout=5000)
    page.wait_for_timeout(500)
    got = state(page)
    assert got["readyState"] == CLOSED and got["opens"] == 0
    # 204 is the server's way to say "stop": no error; a 4xx is an error the page must see.
    expected = [] if status == 204 else [(status, None)]
    assert [(e["status"], e["retryIn"]) for e in got["errors"]] == expected
    assert len(requests_to(server, path)) == 1
    assert page.evaluate("window.fetches.length") == 1


def test_abort_signal_closes_the_stream_for_good(start_server: StartServer, page: Page) -> None:
    server = start_server(app=APP, config=FAST)
    open_page(page, server)
    page.evaluate("""() => open_("main", "/stream?channel=live", {retry: 20})""")
    page.wait_for_function("window.runs.main.opens === 1", timeout=5000)
    server.publish(data="one", channel="live")
    page.wait_for_function("window.runs.main.events.length === 1", timeout=5000)
    assert page.evaluate("window.runs.main.controller.abort(), window.runs.main.conn.readyState") == CLOSED
    page.wait_for_function("window.runs.main.closed", timeout=2000)
    # The server sees the connection go.
    wait_until(lambda: server.stats()["streams"] == 0, timeout=3, message=server.stats, interval=0.05)
    server.publish(data="two", channel="live")
    page.wait_for_timeout(500)
    got = state(page)
    assert [e["data"] for e in got["events"]] == ["one"] and got["errors"] == []
    assert len(requests_to(server, "/stream")) == 1
    assert page.evaluate("window.fetches.length") == 1


# -- reconnection --------------------------------------------------------------------------


def test_resumes_with_last_event_id_after_the_server_restarts(start_server: StartServer, page: Page) -> None:
    port = free_port()
    first = start_server(app=APP, config=FAST, args=CONF, port=port)
    open_page(page, first)
    page.evaluate("""() => open_("main", "/stream?channel=news", {retry: 50, maxRetry: 400})""")
    page.wait_for_function("window.runs.main.opens === 1", timeout=5000)
    ids = [first.publish(data=f"event {n}", channel="news") for n in (1, 2)]
    page.wait_for_function("window.runs.main.events.length === 2", timeout=5000)
    assert state(page)["lastEventId"] == ids[1]
    assert seen_ids(first) == [None]

    first.stop()
    page.wait_for_function("window.runs.main.errors.length >= 2", timeout=5000)
    assert state(page)["readyState"] == CONNECTING  # it keeps trying while nothing listens
    second = start_server(app=APP, config=FAST, args=CONF, port=port)
    # The client finds the new server by itself. (A reconnect may first land on the stopping
    # worker over a kept-alive connection: the shutdown hook ends only the streams open when
    # the worker starts to stop, so that one lasts until the graceful timeout.)
    wait_until(lambda: seen_ids(second), timeout=8, message="the client did not reconnect", interval=0.05)
    # The in-process broker lost its history with the process: the id is unknown there.
    assert seen_ids(second) == [ids[1]]
    page.wait_for_function("window.runs.main.events.length === 3", timeout=5000)
    assert state(page)["events"][2]["type"] == "sse.missed"
    later = second.publish(data="after the restart", channel="news")
    page.wait_for_function("window.runs.main.events.length === 4", timeout=5000)
    got = state(page)
    assert got["events"][3] == msg("after the restart", later)
    assert got["readyState"] == OPEN and got["lastEventId"] == later
    first_error = got["errors"][0]
    assert first_error["retryIn"] is not None and first_error["state"] == CONNECTING


def backoff_ceilings(base: int, cap: int, count: int) -> List[int]:
    return [min(cap, base * 2**n) for n in range(count)]


def test_backoff_grows_with_jitter_up_to_max_retry(start_server: StartServer, page: Page) -> None:
    server = start_server(app=APP)
    open_page(page, server)
    closed_port = free_port()  # nothing listens there: every attempt fails at once
    page.evaluate(
        "(url) => open_('main', url, {retry: 100, maxRetry: 800})",
        f"http://127.0.0.1:{closed_port}/stream",
    )
    page.wait_for_function("window.fetches.length >= 7", timeout=6000)
    page.evaluate("window.runs.main.conn.close()")
    got = state(page)
    starts = [f["at"] for f in page.evaluate("window.fetches")][:7]
    errors = got["errors"][:6]
    ceilings = backoff_ceilings(100, 800, 6)  # 100 200 400 800 800 800
    delays = [e["retryIn"] for e in errors]
    print("ceilings", ceilings, "delays", delays)
    for delay, ceiling in zip(delays, ceilings):
        assert ceiling / 2 <= delay <= ceiling, (delays, ceilings)
    assert delays[:4] == sorted(delays[:4])  # growing until the cap
    ratios = [d / c for d, c in zip(delays, ceilings)]
    assert max(ratios) - min(ratios) > 0.01, ratios  # jitter: not the same fraction each time
    for n, delay in enumerate(delays):
        gap = starts[n + 1] - starts[n]
        assert delay - 5 <= gap <= delay + 300, (n, gap, delay)
    assert all(e["status"] is None and e["state"] == CONNECTING for e in errors)
    assert got["opens"] == 0 and got["readyState"] == CLOSED


def test_server_retry_sets_the_base_delay_and_open_resets_backoff(
    start_server: StartServer, page: Page
) -> None:
    server = start_server(app=APP)
    open_page(page, server)
    # /flaky: a stream that sends "retry: 300" and ends, then 503 for every later request.
    page.evaluate("() => open_('main', '/flaky/a?retry=300', {retry: 5000, maxRetry: 10000})")
    page.wait_for_function("window.runs.main.errors.length >= 3", timeout=6000)
    page.evaluate("window.runs.main.conn.close()")
    got = state(page)
    assert got["opens"] == 1
    errors = got["errors"][:3]
    expected = [("The stream ended", 200), ("HTTP 503", 503), ("HTTP 503", 503)]
    assert [(e["message"], e["status"]) for e in errors] == expected
    # Base 300 from the server (not the 5000 of the options), doubling from the open on.
    for error, ceiling in zip(errors, backoff_ceilings(300, 10000, 3)):
        assert ceiling / 2 <= error["retryIn"] <= ceiling, (errors, ceiling)
    assert len(requests_to(server, "/flaky/a")) == 3
