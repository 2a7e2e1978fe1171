"""Tab sharing (``connect(url, {share: true})``) in a real headless Chromium: tabs are pages
of one browser context, so they share Web Locks and BroadcastChannel as a user's tabs do.

Also the two things the server does for it: a multi-channel stream tells its opening cursor
(a ``:cursor`` comment), and a compound cursor may start an added channel from now (``_``).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Tuple

import httpx
import pytest
from httpx_sse import connect_sse

from support.client import RawStream, request
from support.parser import SSEParser
from support.server import Server, StartServer
from support.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page

#: The server's retry hint: a new leader must take over within it.
RETRY_MS = 1000
CONFIG = {"SSE_RETRY": RETRY_MS, "SSE_HEARTBEAT_INTERVAL": 1}

#: ``window.share(channels)`` opens this tab's shared stream; ``window.run`` logs what it sees,
#: and ``window.streams`` when (epoch ms) the tab itself asked the server for a stream.
OPEN_SHARED = """
(channels) => {
    window.streams = [];
    const realFetch = window.fetch;
    window.fetch = (input, init) => {
        if (String(input).includes("/stream?")) window.streams.push(Date.now());
        return realFetch(input, init);
    };
    window.run = {events: [], errors: [], opens: 0};
    const query = channels.map((c) => "channel=" + c).join("&");
    window.run.conn = connect("/stream?" + query, {
        share: true,
        retry: 100,
        onOpen: () => { window.run.opens += 1; },
        onEvent: (e) => window.run.events.push(e.data),
        onError: (e) => window.run.errors.push(e.message),
    });
}
"""


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    """Each test, servers included, finishes within 30 s."""
    started = time.monotonic()
    yield
    assert time.monotonic() - started < 30


def open_tab(page: Page, server: Server, channels: List[str]) -> Page:
    page.goto(f"{server.url}/")
    page.wait_for_function("window.ready === true", timeout=5000)
    page.evaluate(OPEN_SHARED, channels)
    return page


def publish_all(server: Server, events: List[Tuple[str, str]], pause: float = 0.0) -> None:
    for channel, data in events:
        server.publish(data=data, channel=channel)
        if pause:
            time.sleep(pause)  # a steady feed across a handover, not a wait for a condition


def expected(events: List[Tuple[str, str]], channels: List[str]) -> List[str]:
    return [data for channel, data in events if channel in channels]


def feed(start: int, count: int) -> List[Tuple[str, str]]:
    """Events on "a", "b" and "all" in turn, with data that names them."""
    names = ["a", "b", "all"]
    return [(names[n % 3], f"{names[n % 3]}-{n}") for n in range(start, start + count)]


def test_ten_tabs_share_one_stream_and_survive_the_leader_closing(
    start_server: StartServer, page: Page
) -> None:
    server = start_server(app="support.app:served(record_requests=True)", config=CONFIG)
    channels = [["all", "a"] if i < 5 else ["all", "b"] for i in range(9)] + [["a", "b"]]
    tabs = [open_tab(page if i == 0 else page.context.new_page(), server, channels[i]) for i in range(10)]
    for tab in tabs:
        tab.wait_for_function("window.run.conn.readyState === 1", timeout=5000)
    wait_until(lambda: server.stats()["streams"] == 1, message=server.stats)

    first = feed(0, 30)
    publish_all(server, first)
    for tab, mine in zip(tabs, channels):
        want = expected(first, mine)
        tab.wait_for_function(f"window.run.events.length >= {len(want)}", timeout=5000)
        assert tab.evaluate("window.run.events") == want  # its channels only, each once
    assert server.stats()["streams"] == 1  # ten tabs, one connection
    leaders = [i for i, tab in enumerate(tabs) if tab.evaluate("window.run.conn.leader")]
    assert len(leaders) == 1, leaders
    # Only the leader ever asked the server for a stream.
    assert [bool(tab.evaluate("window.streams")) for tab in tabs] == [i in leaders for i in range(10)]

    # The leader tab closes while events keep coming: another takes over, resuming from the
    # last cursor, and every remaining tab gets every event of its channels exactly once.
    leader = leaders[0]
    second = feed(30, 30)
    publisher = threading.Thread(target=publish_all, args=(server, second, 0.03))
    publisher.start()
    # A few events go out through the old leader first.
    tabs[leader].wait_for_function(
        f"window.run.events.length >= {len(expected(first, channels[leader])) + 3}"
    )
    closed_at = time.time() * 1000
    tabs[leader].close()
    publisher.join()
    rest = [(tab, mine) for i, (tab, mine) in enumerate(zip(tabs, channels)) if i != leader]
    for tab, mine in rest:
        want = expected(first + second, mine)
        tab.wait_for_function(f"window.run.events.length >= {len(want)}", timeout=5000)
        assert tab.evaluate("window.run.events") == want
        assert tab.evaluate("window.run.errors") == []
    new_leaders = [i for i, (tab, _) in enumerate(rest) if tab.evaluate("window.run.conn.leader")]
    assert len(new_leaders) == 1, new_leaders
    asked: List[float] = rest[new_leaders[0]][0].evaluate("window.streams")
    took = asked[0] - closed_at
    print(f"the new leader asked for the stream {took:.0f} ms after the old one closed")
    assert 0 <= took < RETRY_MS
    wait_until(lambda: server.stats()["streams"] == 1, message=server.stats)
    # The new leader resumed the union stream from the cursor the tabs last saw.
    status, recorded = request(server.port, "GET", "/requests?path=/stream")
    assert status == 200
    assert recorded[-1]["last_event_id"] is not None and recorded[-1]["last_event_id"].startswith("~")


def test_a_tab_that_adds_a_channel_widens_the_stream_without_loss(
    start_server: StartServer, page: Page
) -> None:
    """The leader reopens the stream for the larger union with a cursor that resumes the
    channels it had (converted from the single-channel id) and starts the new one from now."""
    server = start_server(config=CONFIG)
    one = open_tab(page, server, ["a"])
    one.wait_for_function("window.run.conn.readyState === 1", timeout=5000)
    early = [("a", f"a-{n}") for n in range(5)]
    publish_all(server, early)
    one.wait_for_function("window.run.events.length === 5", timeout=5000)

    steady = [("a", f"a-{n}") for n in range(5, 40)]
    publisher = threading.Thread(target=publish_all, args=(server, steady, 0.02))
    publisher.start()
    two = open_tab(page.context.new_page(), server, ["b"])
    two.wait_for_function("window.run.conn.readyState === 1", timeout=5000)
    publisher.join()
    publish_all(server, [("b", "b-0"), ("a", "a-40")])
    one.wait_for_function("window.run.events.length === 41", timeout=5000)
    assert one.evaluate("window.run.events") == [f"a-{n}" for n in range(41)]
    two.wait_for_function("window.run.events.length === 1", timeout=5000)
    assert two.evaluate("window.run.events") == ["b-0"]
    wait_until(lambda: server.stats()["streams"] == 1, message=server.stats)
    assert server.stats()["channels"] == 2


def test_a_tab_asking_for_a_forbidden_channel_alone_gets_the_error(
    start_server: StartServer, page: Page
) -> None:
    """Regression: the leader widened the union with no check, the wider stream got a 403, and
    every tab stopped. Now the leader reopens the last union that worked and only the tab that
    asked gets the error; tabs that ask together are added one at a time, so the one with an
    allowed channel still joins. The user is bob (a session cookie): "secret" is alice's."""
    server = start_server(config=CONFIG)
    page.goto(f"{server.url}/")
    page.evaluate("async () => { await fetch('/login?user=bob', {method: 'POST'}); }")
    one = open_tab(page, server, ["a"])
    one.wait_for_function("window.run.conn.readyState === 1", timeout=5000)
    two = open_tab(page.context.new_page(), server, ["b"])
    two.wait_for_function("window.run.conn.readyState === 1", timeout=5000)

    nosy = open_tab(page.context.new_page(), server, ["secret"])
    nosy.wait_for_function("window.run.conn.readyState === 2", timeout=5000)
    assert nosy.evaluate("window.run.errors") == [
        "HTTP 403: the shared stream cannot add this tab's channels"
    ]
    # Two more at once: one forbidden, one allowed.
    late = [page.context.new_page(), page.context.new_page()]
    for tab in late:
        tab.goto(f"{server.url}/")
        tab.wait_for_function("window.ready === true", timeout=5000)
    for tab, channels in zip(late, (["secret", "c"], ["c"])):
        tab.evaluate(OPEN_SHARED, channels)  # within the leader's 50 ms: one widening for both
    late[0].wait_for_function("window.run.conn.readyState === 2", timeout=5000)
    late[1].wait_for_function("window.run.conn.readyState === 1", timeout=5000)
    assert late[0].evaluate("window.run.errors") == [
        "HTTP 403: the shared stream cannot add this tab's channels"
    ]

    events = [("a", "a-1"), ("b", "b-1"), ("c", "c-1"), ("secret", "s-1")]
    publish_all(server, events)
    for tab, mine in ((one, ["a"]), (two, ["b"]), (late[1], ["c"])):
        tab.wait_for_function("window.run.events.length === 1", timeout=5000)
        assert tab.evaluate("window.run.events") == expected(events, mine)
        assert tab.evaluate("[window.run.errors, window.run.conn.readyState]") == [[], 1]
    assert nosy.evaluate("window.run.events") == [] and late[0].evaluate("window.run.events") == []
    wait_until(lambda: server.stats()["streams"] == 1, message=server.stats)
    assert server.stats()["channels"] == 3  # a, b and c: never secret


@pytest.mark.parametrize(
    "script, missing",
    [
        ("Object.defineProperty(Navigator.prototype, 'locks', {get: () => undefined})", "navigator.locks"),
        ("delete window.BroadcastChannel", "window.BroadcastChannel"),
    ],
    ids=["no-web-locks", "no-broadcast-channel"],
)
def test_without_web_locks_or_broadcast_channel_each_tab_has_its_own_stream(
    start_server: StartServer, page: Page, script: str, missing: str
) -> None:
    server = start_server(config=CONFIG)
    tabs = []
    for n in range(2):
        tab = page if n == 0 else page.context.new_page()
        tab.add_init_script(script)
        tabs.append(open_tab(tab, server, ["a"]))
    for tab in tabs:
        assert tab.evaluate(f"{missing} === undefined")
        tab.wait_for_function("window.run.conn.readyState === 1", timeout=5000)
        assert tab.evaluate("window.run.conn.leader") is None  # a plain connection
    wait_until(lambda: server.stats()["streams"] == 2, message=server.stats)
    publish_all(server, [("a", "one")])
    for tab in tabs:
        tab.wait_for_function("window.run.events.length === 1", timeout=5000)
        assert tab.evaluate("window.run.events") == ["one"]


# -- what the server does for it --------------------------------------------------------------


def opening_id(stream: RawStream) -> str:
    """The ``:cursor <id>`` comment of a multi-channel stream's opening chunk."""
    opening = stream.opening()
    assert SSEParser().feed(opening) == []  # a comment: no event, no id for other clients
    [cursor] = [line[len(b":cursor ") :] for line in opening.split(b"\n") if line.startswith(b":cursor ")]
    return cursor.decode()


def test_multi_channel_stream_tells_its_opening_cursor(server: Server, channel: str) -> None:
    """A stream cut before its first event resumes every channel from where it opened."""
    a, b = channel + "-a", channel + "-b"
    first = RawStream(server.port, f"/stream?channel={a}&channel={b}")
    cursor = opening_id(first)
    assert cursor.startswith("~") and cursor.count(".") == 1
    first.close()
    server.publish(data="while away", channel=b)
    again = RawStream(server.port, f"/stream?channel={a}&channel={b}", headers={"Last-Event-ID": cursor})
    again.opening()
    assert [e.data for e in again.events(1)] == ["while away"]


def test_opening_cursor_is_no_event_for_other_clients(server: Server, channel: str) -> None:
    """Regression: the opening cursor was an id-only dispatch (``id: ~...`` and a blank line),
    which httpx-sse (like fetch-event-source) yields as an empty event at every connect."""
    a, b = channel + "-a", channel + "-b"
    url = f"{server.url}/stream?channel={a}&channel={b}"
    with httpx.Client(timeout=10) as client, connect_sse(client, "GET", url) as source:
        events = source.iter_sse()
        server.publish(data="first", channel=b)
        event = next(events)
    assert (event.event, event.data) == ("message", "first")


def test_compound_cursor_starts_an_added_channel_from_now(server: Server, channel: str) -> None:
    a, b = channel + "-a", channel + "-b"
    server.publish(data="old b", channel=b)
    alone = RawStream(server.port, f"/stream?channel={a}")
    alone.opening()
    server.publish(data="a1", channel=a)
    [a1] = alone.events(1)
    alone.close()
    server.publish(data="a2", channel=a)  # while no stream is open
    ms, seq = (int(part) for part in a1.last_event_id.split("-"))
    token = _b36(ms) + (f"-{_b36(seq)}" if seq else "")
    headers: Dict[str, Any] = {"Last-Event-ID": f"~{token}._"}  # a resumes, b starts now
    both = RawStream(server.port, f"/stream?channel={a}&channel={b}", headers=headers)
    both.opening()
    server.publish(data="b1", channel=b)
    assert [e.data for e in both.events(2)] == ["a2", "b1"]


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rem = divmod(number, 36)
        out = digits[rem] + out
        if not number:
            return out


def test_a_leader_that_freezes_hands_over_and_rejoins_as_a_follower(
    start_server: StartServer, page: Page
) -> None:
    """The Page Lifecycle ``freeze`` event (a browser about to freeze a background tab) makes
    the leader give its lock and stream to another tab; on ``resume`` it follows again.

    Headless Chromium does not dispatch ``freeze`` when frozen through the DevTools protocol,
    so the test dispatches the events itself: it checks the handover, not the freezing."""
    server = start_server(config=CONFIG)
    tabs = [open_tab(page if n == 0 else page.context.new_page(), server, ["a"]) for n in range(3)]
    for tab in tabs:
        tab.wait_for_function("window.run.conn.readyState === 1", timeout=5000)
    [leader] = [tab for tab in tabs if tab.evaluate("window.run.conn.leader")]
    leader.evaluate("document.dispatchEvent(new Event('freeze'))")
    assert not leader.evaluate("window.run.conn.leader")
    others = [tab for tab in tabs if tab is not leader]
    wait_until(lambda: any(tab.evaluate("window.run.conn.leader") for tab in others), message="no takeover")
    wait_until(lambda: server.stats()["streams"] == 1, message=server.stats)
    events = [("a", f"a-{n}") for n in range(10)]
    publish_all(server, events)
    for tab in tabs:
        tab.wait_for_function("window.run.events.length === 10", timeout=5000)
        assert tab.evaluate("window.run.events") == expected(events, ["a"])
    leader.evaluate("document.dispatchEvent(new Event('resume'))")
    publish_all(server, [("a", "a-10")])
    for tab in tabs:
        tab.wait_for_function("window.run.events.length === 11", timeout=5000)
        assert tab.evaluate("window.run.events") == [f"a-{n}" for n in range(11)]
    assert [tab.evaluate("window.run.conn.leader") for tab in tabs].count(True) == 1
    assert server.stats()["streams"] == 1
