"""Events written to a waiting stream's socket by the greenlet that delivers them
(``SSE_DIRECT_WRITES``), read off the wire: exact HTTP/1.1 chunks (or plain bytes under
HTTP/1.0), order kept when the socket fills and the stream's own greenlet takes over, the same
events whether the path is on or off, and no direct write where a middleware wraps the body.
"""

from __future__ import annotations

import json
import socket
import time
import zlib
from typing import Any, Dict, List

import pytest

from support.client import HEARTBEAT, RawStream
from support.nginx import DOCS_SITE, StartNginx
from support.parser import SSEParser
from support.server import Server, StartServer
from support.waiting import wait_until


def _read_until(sock: socket.socket, ending: bytes, have: bytes = b"") -> bytes:
    """What ``sock`` sends until what was read (after ``have``) ends with ``ending``."""
    data = b""
    deadline = time.monotonic() + 5
    while not (have + data).endswith(ending):
        assert time.monotonic() < deadline, f"{ending!r} did not come: {have + data!r}"
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {have + data!r}"
        data += chunk
    return data


def _publish(server: Server, channel: str, datas: List[str]) -> List[str]:
    return [server.publish(data=data, channel=channel) for data in datas]


@pytest.mark.parametrize("direct", [True, False], ids=["direct-writes", "greenlet-writes"])
def test_each_event_is_one_exact_chunk_and_the_same_either_way(
    start_server: StartServer, channel: str, direct: bool
) -> None:
    server = start_server(config={"SSE_DIRECT_WRITES": direct, "SSE_HEARTBEAT_INTERVAL": 0.5})
    stream = RawStream(server.port, f"/stream?channel={channel}")
    assert stream.headers["transfer-encoding"] == "chunked"
    stream.opening()
    datas = ["plain", "two\nlines", "", " leading space", "trailing newline\n", "héllo ✓"]
    for data in datas:
        event_id = server.publish(data=data, channel=channel)
        # One chunk per event, byte for byte the frame: nothing was buffered, split or merged.
        lines = b"".join(b"data: %s\n" % line.encode() for line in data.split("\n"))
        assert stream.chunks(1) == [b"%sid: %s\n\n" % (lines, event_id.encode())]
    # Heartbeats, written by the hub's ticker on a waiting stream, are chunks of their own.
    assert stream.chunks(2, timeout=3, heartbeats=True) == [HEARTBEAT, HEARTBEAT]
    stats = server.stats()
    assert stats["delivered"] == len(datas)
    assert stats["pushed"] == (len(datas) if direct else 0), stats


def test_a_reader_that_falls_behind_gets_every_event_in_order(
    start_server: StartServer, channel: str
) -> None:
    """A socket that cannot take a whole event (4 KiB buffers, 8 KiB events): the direct write
    sends what fits, the stream's greenlet sends the rest, and events that came meanwhile
    queue behind it. The chunk framing stays exact (the client de-chunks every byte)."""
    server = start_server(config={"SSE_SEND_BUFFER_BYTES": 4096})
    stream = RawStream(server.port, f"/stream?channel={channel}", rcvbuf=4096)
    stream.opening()
    datas = [f"{n:03d}" + chr(ord("a") + n % 26) * 8192 for n in range(40)]
    ids = _publish(server, channel, datas)  # the client reads nothing meanwhile
    events = stream.events(len(datas), timeout=20)
    assert [e.data for e in events] == datas
    assert [e.last_event_id for e in events] == ids
    stats = server.stats()
    assert stats["delivered"] == len(datas)
    # The first events went straight out; once the socket was full, the greenlet took over.
    assert 0 < stats["pushed"] < len(datas), stats
    assert stats["lagged"] == stats["timed_out"] == 0


def test_http_1_0_gets_plain_frames(start_server: StartServer, channel: str) -> None:
    """No chunked framing where gunicorn writes none (an HTTP/1.0 client: nginx's default
    upstream protocol): a direct write is the frame itself."""
    server = start_server()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        sock.sendall(f"GET /stream?channel={channel} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        received = _read_until(sock, b"retry: 3000\n")
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head.lower()
        ids = _publish(server, channel, ["one", "two"])
        frames = b"".join(b"data: %s\nid: %s\n\n" % (d, i.encode()) for i, d in zip(ids, [b"one", b"two"]))
        body += _read_until(sock, frames, have=body)
        assert body == b"retry: 3000\n" + frames
    finally:
        sock.close()
    assert server.stats()["pushed"] == 2


def test_multi_channel_and_gzip_streams_are_written_directly(start_server: StartServer, channel: str) -> None:
    """A multi-channel stream's compound ids and a gzip stream's per-connection CRC and length
    come out right when their events are written by the delivering greenlet: the gzip body,
    read to the end of the response, is one valid gzip member."""
    server = start_server(
        config={"SSE_COMPRESSION": True, "SSE_COMPRESSION_MIN_BYTES": 16, "SSE_MAX_CONNECTION_AGE": 4}
    )
    a, b = f"{channel}-a", f"{channel}-b"
    multi = RawStream(server.port, f"/stream?channel={a}&channel={b}")
    multi.opening()
    gzipped = RawStream(server.port, f"/stream?channel={a}", headers={"Accept-Encoding": "gzip"})
    assert gzipped.headers["content-encoding"] == "gzip"
    body = gzipped.chunk() or b""  # the gzip header and the retry line: the stream is open
    datas = [("a", json.dumps({"n": n, "pad": "x" * 50})) for n in range(5)] + [("b", "on b")]
    for name, data in datas:
        server.publish(data=data, channel=a if name == "a" else b)
    got = multi.events(len(datas))
    assert [e.data for e in got] == [data for _, data in datas]
    assert len({e.last_event_id for e in got}) == len(datas)  # each a cursor over both channels
    # The stream ends at its age limit with the gzip trailer, then the last chunk.
    body += b"".join(iter(lambda: gzipped.chunk(timeout=10), None))
    inflate = zlib.decompressobj(wbits=31)
    events = SSEParser().feed(inflate.decompress(body))
    assert inflate.eof and not inflate.unused_data  # CRC-32 and length checked by zlib
    assert [e.data for e in events] == [data for name, data in datas if name == "a"]
    stats = server.stats()
    assert stats["pushed"] == stats["delivered"] == len(datas) + 5, stats


@pytest.mark.parametrize("query", ["max_rate=50", "poll=1"])
def test_streams_that_write_on_their_own_schedule_are_never_written_directly(
    start_server: StartServer, channel: str, query: str
) -> None:
    server = start_server()
    stream = RawStream(server.port, f"/stream?channel={channel}&{query}")
    stream.opening()
    server.publish(data="one", channel=channel)
    assert [e.data for e in stream.events(1)] == ["one"]
    stats = server.stats()
    assert (stats["delivered"], stats["pushed"]) == (1, 0), stats


def test_through_nginx(start_server: StartServer, start_nginx: StartNginx, channel: str) -> None:
    server = start_server()
    nginx = start_nginx(server.port, site=DOCS_SITE)
    stream = RawStream(nginx.port, f"/stream?channel={channel}")
    stream.opening()
    datas = [f"event {n}" for n in range(20)]
    ids = _publish(server, channel, datas)
    events = stream.events(len(datas))
    assert [(e.data, e.last_event_id) for e in events] == list(zip(datas, ids))
    assert server.stats()["pushed"] == len(datas)
    assert "[error]" not in nginx.log(), nginx.log()


def test_a_middleware_that_wraps_the_body_keeps_every_write_in_the_greenlet(
    start_server: StartServer, channel: str
) -> None:
    """A direct write would go around a middleware between the app and gunicorn (it might
    change the body): such a stream's events all go through it."""
    server = start_server(app="support.app:served_behind_middleware()")
    stream = RawStream(server.port, f"/stream?channel={channel}")
    stream.opening()
    datas = [f"event {n}" for n in range(10)]
    _publish(server, channel, datas)
    assert [e.data for e in stream.events(len(datas))] == datas
    stats: Dict[str, Any] = wait_until(
        lambda: (lambda s: s if s["delivered"] == len(datas) else None)(server.stats()),
        message="delivered counted",
    )
    assert stats["pushed"] == 0, stats
