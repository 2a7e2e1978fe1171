"""Compressed streams (SSE_COMPRESSION): gzip, each event compressed once for every client.

The encoder is checked against zlib's own decoder; the served streams against real clients
(curl --compressed, httpx-sse, the npm eventsource package, Chromium's EventSource), directly
and through the documented nginx site: each event must reach every client before the next one
is published, and the time from publish to arrival is compared with a plain (uncompressed)
client's in the same run: each gzip client's median may exceed the plain one's by less than
``ADDED_DELAY``. A gzip stream on Redis is read to its end: its replay from history and its
heartbeats in order, and the body one valid gzip member.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from flask_sse_ext import SSE, Event
from flask_sse_ext.brokers.base import Message
from flask_sse_ext.compression import GzipEncoder, accepts_gzip, deflate_piece, stored_piece
from support.app import create_app
from support.client import HEARTBEAT, RawStream, request
from support.matrix import NODE_DIR, install_node_clients
from support.nginx import DOCS_SITE, StartNginx
from support.parser import ParsedEvent, SSEParser
from support.paths import TESTS
from support.redis import RedisServer
from support.server import Server, StartServer, start_gunicorn
from support.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page

#: How much later a gzip client's events may arrive than a plain client's, median against
#: median in the same run (the issue's "no added delay": each event within 50 ms of publish).
#: Comparing with a plain client of the same run leaves out what load adds to both.
ADDED_DELAY = 0.05
CONFIG = {
    "SSE_COMPRESSION": True,
    "SSE_COMPRESSION_MIN_BYTES": 64,
    # Long next to ADDED_DELAY: a stream whose compressor were flushed only by the heartbeat
    # would deliver each event seconds late, and fail the bound by far.
    "SSE_HEARTBEAT_INTERVAL": 5,
    "SSE_POLL_TIMEOUT": 1,
}
APP = "support.app:served(record_requests=True)"


def message(position: int, body: bytes, key: Optional[str] = None) -> Message:
    return Message("c", (1, position), None, body, key)


def gunzip(data: bytes) -> bytes:
    return zlib.decompress(data, 16 + zlib.MAX_WBITS)


# -- the encoder ------------------------------------------------------------------------------


def test_pieces_concatenate_into_one_valid_gzip_stream() -> None:
    events = [
        message(i, b"data: " + json.dumps({"n": i, "pad": "x" * 500}).encode() + b"\n") for i in range(5)
    ]
    encoder = GzipEncoder(min_bytes=64)
    wire = [encoder.raw(b"retry: 3000\n")]
    wire += [encoder.frame(event) for event in events[:3]]
    wire.append(encoder.raw(b":\n"))  # a heartbeat: stored, not compressed
    wire += [encoder.body(event, "cursor-%d" % i) for i, event in enumerate(events[3:])]
    wire.append(encoder.end())
    expected = b"retry: 3000\n" + b"".join(e.frame for e in events[:3]) + b":\n"
    expected += events[3].body + b"id: cursor-0\n\n" + events[4].body + b"id: cursor-1\n\n"
    assert gunzip(b"".join(wire)) == expected
    assert len(b"".join(wire)) < len(expected) / 3  # compressed, not stored


def test_every_chunk_decodes_as_soon_as_it_arrives() -> None:
    """Nothing waits in a compressor: a decoder fed one chunk yields all of its bytes."""
    encoder = GzipEncoder(min_bytes=0)
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for i in range(4):
        event = message(i, b"data: %d %s\n" % (i, b"y" * 300))
        assert decoder.decompress(encoder.frame(event)) == event.frame


def test_each_event_is_compressed_once_for_every_stream() -> None:
    event = message(1, b"data: " + b"z" * 1000 + b"\n")
    first, second = GzipEncoder(64), GzipEncoder(64)
    a = first.frame(event)
    piece = event.gzip
    assert piece is not None
    b = second.frame(event)
    assert event.gzip is piece  # made by the first stream, reused by the second
    assert a.endswith(piece) and b.endswith(piece)
    for encoder, chunk in ((first, a), (second, b)):
        assert gunzip(chunk + encoder.end()) == event.frame


def test_small_frames_are_stored_not_compressed() -> None:
    data = b"data: hi\nid: 1\n\n"
    assert (
        stored_piece(data)
        == b"\x00" + len(data).to_bytes(2, "little") + (len(data) ^ 0xFFFF).to_bytes(2, "little") + data
    )
    encoder = GzipEncoder(min_bytes=256)
    event = message(1, b"data: hi\n")
    assert encoder.frame(event).endswith(stored_piece(event.frame))
    big = bytes(range(256)) * 300  # over one stored block's 65535 bytes
    assert zlib.decompress(stored_piece(big) + b"\x03\x00", -15) == big
    assert zlib.decompress(deflate_piece(big, 6) + b"\x03\x00", -15) == big


@pytest.mark.parametrize(
    "header, accepted",
    [
        ("gzip", True),
        ("gzip, deflate, br, zstd", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("gzip;q=0", False),
        ("*", True),
        ("identity", False),
        ("deflate, br", False),
        ("gzip;q=nonsense", False),
        # Regression (review): q was only read as the first parameter, and * decided before a
        # later explicit gzip item.
        ("gzip; foo=1; q=0", False),
        ("*;q=0, gzip", True),
        ("gzip;q=0, *", False),
        ("x-gzip", True),
        ("", False),
        (None, False),
    ],
)
def test_accept_encoding(header: Optional[str], accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


def test_config_is_validated() -> None:
    for key, bad in [("SSE_COMPRESSION", "yes"), ("SSE_COMPRESSION_MIN_BYTES", -1)]:
        with pytest.raises(ValueError, match=key):
            create_app({key: bad}, sse=SSE())


def test_headers_say_gzip_and_vary_only_when_accepted() -> None:
    app = create_app(CONFIG, sse=SSE())
    client = app.test_client()
    with client.get("/stream", headers={"Accept-Encoding": "gzip"}, buffered=False) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in response.headers["Vary"]
        assert "Content-Length" not in response.headers
        assert response.headers["X-Accel-Buffering"] == "no"
        opening = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(next(iter(response.iter_encoded())))
        assert opening == b"retry: 3000\n"
    with client.get("/stream", buffered=False) as response:
        assert "Content-Encoding" not in response.headers
        assert "Accept-Encoding" in response.headers["Vary"]
        assert next(iter(response.iter_encoded())) == b"retry: 3000\n"
    off = create_app({}, sse=SSE()).test_client()
    with off.get("/stream", headers={"Accept-Encoding": "gzip"}, buffered=False) as response:
        assert "Content-Encoding" not in response.headers


# -- real clients ----------------------------------------------------------------------


class _Reader:
    """A client in a subprocess: the data of each event it reports, and when it came (epoch
    seconds, taken as its line is read)."""

    def __init__(self, cmd: Sequence[str], json_lines: bool, cwd: str = str(TESTS)) -> None:
        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.json_lines = json_lines
        self.got: List[Tuple[str, float]] = []
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            at = time.time()
            if self.json_lines:
                fields = json.loads(raw)
                if fields.get("type") == "message":
                    self.got.append((fields["data"], at))
            elif raw.startswith(b"data: "):
                self.got.append((raw[6:].rstrip(b"\n").decode(), at))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.thread.join()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


_OPEN_IN_PAGE = """(url) => {
  window.got = [];
  const source = new EventSource(url);
  source.onmessage = (e) => window.got.push([e.data, Date.now() / 1000]);
}"""


@pytest.fixture(scope="module")
def gzip_server() -> Iterator[Server]:
    srv = start_gunicorn(app=APP, config=CONFIG)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()


@pytest.mark.parametrize("via", ["direct", "nginx"])
def test_clients_read_a_gzip_stream_event_by_event(
    via: str, gzip_server: Server, start_nginx: StartNginx, page: Page, tmp_path: Any
) -> None:
    install_node_clients()
    port = gzip_server.port if via == "direct" else start_nginx(gzip_server.port, site=DOCS_SITE).port
    channel = f"gzip-{via}"
    url = f"http://127.0.0.1:{port}/stream?channel={channel}"
    headers, plain_headers = tmp_path / "curl-headers", tmp_path / "plain-headers"
    before = gzip_server.stats()["streams"]
    readers = {
        "curl": _Reader(["curl", "-sN", "--compressed", "-D", str(headers), url], json_lines=False),
        "httpx-sse": _Reader(["python", "-m", "support.readers.httpx_sse_reader", url], json_lines=True),
        "eventsource": _Reader(
            ["node", "read_eventsource.mjs", url, "[]"], json_lines=True, cwd=str(NODE_DIR)
        ),
        # The baseline: the same stream, uncompressed (curl sends no Accept-Encoding).
        "plain": _Reader(["curl", "-sN", "-D", str(plain_headers), url], json_lines=False),
    }
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("window.ready === true")
        page.evaluate(_OPEN_IN_PAGE, url)
        wait_until(
            lambda: gzip_server.stats()["streams"] >= before + 5, timeout=15, message="five streams open"
        )

        def arrivals() -> Dict[str, List[Tuple[str, float]]]:
            got = {name: list(reader.got) for name, reader in readers.items()}
            got["chromium"] = [(data, at) for data, at in page.evaluate("window.got")]
            return got

        # Each event must reach every client before the next one is published: a compressor or
        # proxy that buffered the stream would hold it back until more bytes (or the end) came.
        published: List[Tuple[str, float]] = []
        for n in range(8):
            data = json.dumps(
                {"n": n, "rows": [{"id": i, "name": f"row {i}", "ok": True} for i in range(60)]}
            )
            published.append((data, time.time()))
            gzip_server.publish(data=data, channel=channel)
            wait_until(
                lambda: all(len(v) >= len(published) for v in arrivals().values()),
                timeout=10,
                message=lambda: (
                    f"event {len(published) - 1} reaches every client: "
                    f"{ ({k: len(v) for k, v in arrivals().items()}) }"
                ),
            )
        got = arrivals()
    finally:
        for reader in readers.values():
            reader.stop()
    for name, events in got.items():
        assert [data for data, _ in events] == [data for data, _ in published], name
    # ...and with no added delay: a gzip client's median time from publish to arrival is within
    # ADDED_DELAY of the plain client's, so a late flush fails while load on both does not.
    delays = {
        name: [arrived - sent for (_, arrived), (_, sent) in zip(events, published)]
        for name, events in got.items()
    }
    plain = statistics.median(delays["plain"])
    added = {name: statistics.median(d) - plain for name, d in delays.items() if name != "plain"}
    report = f"{via}: delays from publish (ms): " + ", ".join(
        f"{name} {[round(d * 1000, 1) for d in values]} (median {statistics.median(values) * 1000:.1f})"
        for name, values in delays.items()
    )
    print(report)
    assert max(added.values()) < ADDED_DELAY, report
    assert "content-encoding: gzip" in headers.read_text().lower()
    assert "content-encoding" not in plain_headers.read_text().lower()
    status, recorded = request(gzip_server.port, "GET", "/requests?path=/stream")
    mine = [r for r in recorded if f"channel={channel}" in r["query"]]
    assert sorted(accepts_gzip(r["accept_encoding"]) for r in mine) == [False] + [True] * 4, mine


def test_a_redis_gzip_stream_replays_and_beats_to_its_end(
    start_server: StartServer, redis_server: RedisServer, prefix: str, channel: str
) -> None:
    """A gzip stream on Redis opened with a Last-Event-ID: its replay (events read back from
    Redis, compressed by the stream itself), its heartbeats (stored blocks) and a live event
    come out in order, and the body, read to the end SSE_MAX_CONNECTION_AGE gives it, is one
    valid gzip member."""
    config = {
        **CONFIG,
        "SSE_REDIS_URL": redis_server.url,
        "SSE_REDIS_PREFIX": prefix,
        "SSE_HEARTBEAT_INTERVAL": 0.2,
        "SSE_MAX_CONNECTION_AGE": 3,
    }
    server = start_server(config=config)
    datas = [json.dumps({"n": n, "pad": "x" * 300}) for n in range(3)] + ["small"]
    ids = [server.publish(data=data, channel=channel) for data in datas]
    stream = RawStream(
        server.port,
        f"/stream?channel={channel}",
        headers={"Accept-Encoding": "gzip", "Last-Event-ID": ids[0]},
    )
    assert stream.headers["content-encoding"] == "gzip"
    replayed = b"".join(Event(data, id=id).encode() for data, id in zip(datas[1:], ids[1:]))
    opening = b"retry: 3000\n" + replayed
    wire: List[bytes] = []
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    seen = b""
    while not seen.startswith(opening + HEARTBEAT):  # the replay, then a heartbeat
        chunk = stream.chunk(timeout=5)
        assert chunk is not None and len(seen) < len(opening) + 100, (seen, chunk)
        wire.append(chunk)
        seen += inflate.decompress(chunk)
    assert len(wire[0]) * 2 < len(opening), wire[0]  # the replayed events are compressed
    live = json.dumps({"live": True, "pad": "y" * 300})
    live_id = server.publish(data=live, channel=channel)
    wire += iter(lambda: stream.chunk(timeout=10), None)  # to the end of the body
    assert stream.ended
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    text = inflate.decompress(b"".join(wire)) + inflate.flush()
    assert inflate.eof and not inflate.unused_data  # the trailer's CRC-32 and length match
    expected = re.escape(opening) + b"(?::\n)+" + re.escape(Event(live, id=live_id).encode()) + b"(?::\n)*"
    assert re.fullmatch(expected, text), text


def test_a_multi_channel_poll_is_one_valid_gzip_body_with_its_trailer(gzip_server: Server) -> None:
    """The trailer's CRC-32 and length cover every piece: shared bodies, per-stream ids."""
    query = "/stream?channel=gz-a&channel=gz-b&poll=1"
    gzip_server.publish(data="before", channel="gz-a")
    empty = RawStream(gzip_server.port, query, headers={"Accept-Encoding": "gzip"})  # waits, then the cursor
    assert empty.headers["content-encoding"] == "gzip"
    cursor = gunzip(empty.body()).rsplit(b":cursor ", 1)[1].split(b"\n")[0].decode()
    gzip_server.publish(data="a" * 300, channel="gz-a")
    b = gzip_server.publish(data="b" * 300, channel="gz-b", conflate="k")

    def poll_after(cursor: str) -> List[ParsedEvent]:
        answer = RawStream(
            gzip_server.port, query, headers={"Accept-Encoding": "gzip", "Last-Event-ID": cursor}
        )
        return SSEParser().feed(gunzip(answer.body()))  # gunzip checks the CRC and the length

    events = poll_after(cursor)
    assert [e.data for e in events] == ["a" * 300, "b" * 300]
    assert events[1].last_event_id != b  # a compound cursor of both channels, made per stream
    assert [e.data for e in poll_after(events[0].last_event_id)] == ["b" * 300]
