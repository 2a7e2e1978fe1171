"""The client matrix: every real client yields exactly the events published, and nothing else.

One table (``CASES``) of published events and the events a client that follows the WHATWG
rules yields for them. For each broker, one server; every client reads the table's channel at
once (``support.matrix``), then a stream of two channels that the table's events alternate
between (its ids are compound cursors, and it opens with a ``:cursor`` comment, which two
clients once turned into an empty event when it was an id-only line): typed events, multi-line and empty data, a leading space, leading
and trailing newlines, UTF-8 and Unicode line separators, CR and CRLF, field look-alikes, JSON,
the publisher's ids, ``retry``, heartbeats while idle, a cut and a reconnect with
``Last-Event-ID`` that replays what was published meanwhile, then live events again. Each
client's test compares what it yielded with the table, in order: no phantom event at connect,
on a heartbeat or at a close, and the one reconnect it should make.

Where a client parses differently from the spec in a way the server cannot frame around,
``DEVIATIONS`` holds what it yields instead, and why: its test checks that exact value, so a
fixed library shows up as a failure here to update. docs/clients.md describes the same.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import pytest

from flask_sse_ext.brokers.base import format_position, parse_position
from flask_sse_ext.cursor import decode_compound
from flask_sse_ext.event import encode_body
from support.browser import playwright_loop
from support.client import RawStream
from support.matrix import Case, MatrixRun, install_node_clients, run_matrix
from support.parser import parse
from support.redis import RedisServer
from support.server import Server, start_gunicorn
from support.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser

#: The server's ``SSE_RETRY``: short, so a client that ignored the table's ``retry`` event
#: would come back within it.
SERVER_RETRY = 100
#: The ``retry`` the table sends just before the cut: the clients' first reconnect waits it.
RETRY = 1200

CASES = (
    Case("plain", {"data": "hello"}, "hello"),
    Case("typed", {"data": "hi there", "event": "greeting"}, "hi there", type="greeting"),
    Case("dotted type", {"data": "joined", "event": "user.joined"}, "joined", type="user.joined"),
    Case("multi-line", {"data": "first\nsecond\nthird"}, "first\nsecond\nthird"),
    Case("empty", {"data": ""}, ""),
    Case("blank line inside", {"data": "a\n\nb"}, "a\n\nb"),
    Case("leading space", {"data": " indented"}, " indented"),
    Case("trailing newline", {"data": "ends with a newline\n"}, "ends with a newline\n"),
    Case("leading newline", {"data": "\nstarts with a newline"}, "\nstarts with a newline"),
    Case("only a newline", {"data": "\n"}, "\n"),
    Case(
        "utf-8",
        {"data": "h\u00e9llo \u2713 \u65e5\u672c\u8a9e \U0001f389"},
        "h\u00e9llo \u2713 \u65e5\u672c\u8a9e \U0001f389",
    ),
    # Line breaks for str.splitlines() but not for an event stream: they must stay in the data.
    Case("unicode separators", {"data": "a\u2028b\u2029c\x85d\x0be\x0cf"}, "a\u2028b\u2029c\x85d\x0be\x0cf"),
    Case("cr and crlf", {"data": "crlf\r\nlone cr\rend"}, "crlf\nlone cr\nend"),
    Case(
        "field look-alikes",
        {"data": "data: not a field\nevent: nor this\nid: 7\n: nor a comment"},
        "data: not a field\nevent: nor this\nid: 7\n: nor a comment",
    ),
    Case(
        "json",
        {"data": {"msg": "\u00fcn\u00efcode", "n": [1, 2.5, None]}},
        '{"msg":"\u00fcn\u00efcode","n":[1,2.5,null]}',
    ),
    Case("own id", {"data": "with my own id", "id": "commande-17-\u00e9t\u00e9"}, "with my own id"),
    Case("retry", {"data": "slower reconnects", "retry": RETRY, "id": "reprise-\u00e9"}, "slower reconnects"),
    Case(
        "replayed", {"data": "published while you were away"}, "published while you were away", phase="away"
    ),
    Case(
        "replayed typed",
        {"data": "away\nand back", "event": "greeting"},
        "away\nand back",
        type="greeting",
        phase="away",
    ),
    Case(
        "replayed own id",
        {"data": "replayed with my own id", "id": "order-18"},
        "replayed with my own id",
        phase="away",
    ),
    Case("live again", {"data": "live again"}, "live again", phase="after"),
    Case("done", {"data": "bye", "event": "done"}, "bye", type="done", phase="after"),
)

#: (client, case) -> (the data it yields instead, why the server cannot frame around it).
DEVIATIONS: Dict[Tuple[str, str], Tuple[str, str]] = {
    ("aiohttp-sse-client", "leading space"): (
        "indented",
        "it strips every leading space of a field value, where the spec strips one; no framing "
        "keeps a leading space from it",
    ),
    ("aiohttp-sse-client", "trailing newline"): (
        "ends with a newline",
        "it strips every trailing newline of the data, where the spec strips the last one",
    ),
    ("aiohttp-sse-client", "only a newline"): ("", "as above: both newlines are stripped"),
    ("fetch-event-source", "leading newline"): (
        "starts with a newline",
        "it drops data lines while its data is still empty (`data ? data + '\\n' + value : "
        "value`), so empty lines at the start are lost",
    ),
    ("fetch-event-source", "only a newline"): ("", "as above: both empty lines are lost"),
}

#: Clients that report each event's ``retry`` field (the others apply it without saying).
REPORTS_RETRY = ("httpx-sse", "sseclient-py", "fetch-event-source")


def test_the_table_is_what_the_spec_parser_reads() -> None:
    """The table's expected data is what a WHATWG parser (``support.parser``) reads from what
    the server sends for each case, so the matrix compares clients with the spec."""
    for case in CASES:
        body = encode_body(case.publish["data"], case.publish.get("event"), case.publish.get("retry"))
        [event] = parse(body + b"\n")
        assert (event.type, event.data) == (case.type, case.data), case.name


@pytest.fixture(scope="module", params=["memory", "redis"])
def matrix_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """One server per broker for this module."""
    config: Dict[str, Any] = {"SSE_HEARTBEAT_INTERVAL": 0.2, "SSE_RETRY": SERVER_RETRY}
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        config.update(SSE_REDIS_URL=redis.url, SSE_REDIS_PREFIX=f"matrix{os.getpid()}")
    server = start_gunicorn(app="support.app:served(record_requests=True)", config=config)
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(
    scope="module", params=[("matrix",), ("matrix-a", "matrix-b")], ids=["one-channel", "two-channels"]
)
def matrix(request: pytest.FixtureRequest, matrix_server: Server, browser_session: Browser) -> MatrixRun:
    """Every client at once, on the channel ``matrix``, or on one stream of two channels."""
    install_node_clients()
    with playwright_loop():
        return run_matrix(matrix_server, browser_session, request.param, CASES, SERVER_RETRY)


def expected_for(client: str, run: MatrixRun) -> List[Dict[str, Any]]:
    out = []
    for event in run.expected:
        deviation = DEVIATIONS.get((client, event["case"]))
        data = event["data"] if deviation is None else deviation[0]
        out.append({**event, "data": data})
    return out


def check_compound_ids(run: MatrixRun, expected: List[Dict[str, Any]], got: List[Dict[str, Any]]) -> None:
    """On a stream of several channels every id is a compound cursor (one position per channel,
    in the channels' sorted order): with each event, its own channel's position moves to the
    event's (past the last one for a publisher's own id), and the others' stay where they were.
    Then ``expected`` takes the ids as they are, for the comparison of the whole events."""
    order = sorted(run.channels)
    previous: Optional[List[Optional[Tuple[int, int]]]] = None
    for event, published in zip(got, expected):
        positions = decode_compound(event["id"], len(order))
        assert positions is not None, (event, published)
        mine = order.index(published["channel"])
        own = parse_position(published["id"])
        if own is not None:
            assert positions[mine] == own, (event, published)
        if previous is not None:
            assert positions[:mine] + positions[mine + 1 :] == previous[:mine] + previous[mine + 1 :], (
                event,
                published,
            )
            before, now = previous[mine], positions[mine]
            assert before is not None and now is not None and now > before, (event, published)
        previous = positions
        published["id"] = event["id"]


def check(client: str, run: MatrixRun) -> None:
    result = run.clients[client]
    context = f"{client} reported {result.lines!r}\nstderr: {result.stderr}"
    assert run.heartbeats == 3  # the channel idled through heartbeats before the cut
    expected = expected_for(client, run)
    got = [{"type": e["type"], "data": e["data"], "id": e["id"]} for e in result.events]
    if len(run.channels) > 1:
        check_compound_ids(run, expected, got)
    # Exactly the published events, in order: nothing before, between or after them.
    assert got == [{k: e[k] for k in ("type", "data", "id")} for e in expected], context
    assert [line for line in result.lines if "type" not in line and not line.get("open")] == [], context
    if client in REPORTS_RETRY:
        [retried] = [e for e, x in zip(result.events, expected) if x["case"] == "retry"]
        assert retried["retry"] == RETRY, context
    # One stream, cut once, one reconnect: with the last id before the cut, after waiting the
    # retry the table sent (at least half of it: sse-client.js takes a random part of it), and
    # after the events published meanwhile, which came by replay.
    assert result.opens == 2, context
    first, second = result.requests
    assert first["last_event_id"] is None
    last_before = [e for e in expected if e["case"] == "retry"][0]["id"]
    assert second["last_event_id"] == last_before, result.requests
    assert second["at"] - run.cut_at >= RETRY / 2000, (second["at"] - run.cut_at, result.requests)
    assert second["at"] > run.away_published_at


def test_httpx_sse(matrix: MatrixRun) -> None:
    check("httpx-sse", matrix)


def test_sseclient_py(matrix: MatrixRun) -> None:
    check("sseclient-py", matrix)


def test_aiohttp_sse_client(matrix: MatrixRun) -> None:
    check("aiohttp-sse-client", matrix)


def test_eventsource_npm(matrix: MatrixRun) -> None:
    check("eventsource", matrix)


def test_fetch_event_source(matrix: MatrixRun) -> None:
    check("fetch-event-source", matrix)


def test_chromium_eventsource(matrix: MatrixRun) -> None:
    check("chromium", matrix)


def test_shipped_js_client(matrix: MatrixRun) -> None:
    check("sse-client.js", matrix)


def test_a_compound_cursor_past_64_bits_is_missed_on_both_brokers(matrix_server: Server) -> None:
    """Regression: ``~zzzzzzzzzzzzz.0`` on two channels made Redis refuse the stream id, so the
    stream answered "broker unavailable" and the client retried the same cursor for ever; the
    in-process broker said ``sse.missed``. Both now say ``sse.missed`` and go on live."""
    a, b = "past64-a", "past64-b"
    url = f"/stream?channel={a}&channel={b}"
    stream = RawStream(matrix_server.port, url, {"Last-Event-ID": "~zzzzzzzzzzzzz.0"})
    stream.opening(SERVER_RETRY)
    [missed] = stream.events(1)
    assert (missed.type, missed.data) == ("sse.missed", f'{{"channels":["{a}","{b}"]}}')
    matrix_server.publish(data="live", channel=a)
    [live] = stream.events(1)
    assert live.data == "live"


@pytest.mark.parametrize("cursor", ["1-0", "0-1", "between", "99999999999999-0", "never-issued"])
def test_an_id_no_broker_handed_out_is_missed_on_both_brokers(matrix_server: Server, cursor: str) -> None:
    """Regression: the brokers disagreed on well-formed ids that no broker handed out
    (``Last-Event-ID: 1-0`` replayed everything on Redis; a position between two events
    replayed on the in-process broker). On both, such an id gets ``sse.missed`` and the stream
    goes on live."""
    channel = f"unknown-{cursor}"
    ids = [matrix_server.publish(data="kept", channel=channel)]

    def position(event_id: str) -> Tuple[int, int]:
        parsed = parse_position(event_id)
        assert parsed is not None, event_id
        return parsed

    def next_millisecond() -> bool:  # two events in different milliseconds: a gap between
        ids.append(matrix_server.publish(data="kept", channel=channel))
        return position(ids[-1])[0] > position(ids[-2])[0]

    wait_until(next_millisecond)
    if cursor == "between":
        ms, seq = position(ids[-2])
        cursor = format_position((ms, seq + 10**6))
    stream = RawStream(matrix_server.port, f"/stream?channel={channel}", {"Last-Event-ID": cursor})
    stream.opening(SERVER_RETRY)
    [missed] = stream.events(1)
    assert (missed.type, missed.data) == ("sse.missed", f'{{"channels":["{channel}"]}}')
    event_id = matrix_server.publish(data="live", channel=channel)
    [live] = stream.events(1)
    assert (live.data, live.last_event_id) == ("live", event_id)
