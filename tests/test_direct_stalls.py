"""Direct streams and resumable answers under a client that stops reading: the same protections
as a channel stream (issue 14). The connection's send buffer is capped, and a client whose sent
data does not drain within ``SSE_SEND_TIMEOUT`` is reset; a direct stream's generator is
stopped, a resumable answer's owner goes on.

Real gunicorn gevent workers and the real kernel: a stalled client is a socket with a 4 KB
receive buffer that is never read.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import time
from typing import List, Optional

import pytest

from support.client import RawStream, request
from support.parser import ParsedEvent
from support.server import Server, StartServer
from support.waiting import wait_until

pytestmark = pytest.mark.fault

SEND_TIMEOUT = 2.0
#: The smallest cap config accepts: the kernel's default send buffer (16 KB) is well above it.
SEND_BUFFER = 4096
CONFIG = {"SSE_SEND_TIMEOUT": SEND_TIMEOUT, "SSE_SEND_BUFFER_BYTES": SEND_BUFFER}
_TCP_CLOSE = 7


def _tcp_closed(sock: socket.socket) -> bool:
    """Whether the kernel has closed this connection (a reset does that at once; a FIN would
    leave it in CLOSE_WAIT), read from TCP_INFO without reading the socket."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    state: int = struct.unpack_from("B", info)[0]
    return state == _TCP_CLOSE


def _server_send_buffer(server: Server, client: socket.socket) -> int:
    """The kernel's send buffer (``skmem`` ``tb``) of the server's end of ``client``'s connection."""
    client_port = client.getsockname()[1]
    query = f"( sport = :{server.port} and dport = :{client_port} )"
    out = subprocess.run(["ss", "-tmnH", "state", "established", query], capture_output=True, text=True)
    found = re.search(r"\btb(\d+)", out.stdout)
    assert found is not None, out
    return int(found.group(1))


def _reset_in_time(server: Server, stalled: RawStream, since: float) -> float:
    """Seconds from ``since`` until the stalled connection was reset, at most SEND_TIMEOUT + 1."""
    wait_until(
        lambda: _tcp_closed(stalled.sock),
        timeout=SEND_TIMEOUT + 1 - (time.monotonic() - since),
        message=lambda: f"the stalled client was not reset: {server.stats()}",
        interval=0.01,
    )
    elapsed = time.monotonic() - since
    stalled.sock.settimeout(2)
    with pytest.raises(ConnectionResetError):  # a reset, not a polite close
        while stalled.sock.recv(65536):
            pass
    return elapsed


def test_stalled_direct_client_is_reset_and_its_generator_stopped(start_server: StartServer) -> None:
    """Regression: a direct stream (``sse.response``) whose client stopped reading blocked in
    the server's write for good, holding its greenlet and the app's generator (and whatever
    upstream call it had open)."""
    server = start_server(config=CONFIG)
    stalled = RawStream(server.port, "/flood/stalled", rcvbuf=4096)
    since = time.monotonic()  # the stall starts with the server's first writes, after the head
    assert stalled.status == 200
    assert _server_send_buffer(server, stalled.sock) <= 2 * SEND_BUFFER  # Linux counts it twice
    elapsed = _reset_in_time(server, stalled, since)
    print(f"stalled direct client reset after {elapsed:.2f}s")

    def finally_ran_at() -> Optional[float]:
        at: Optional[float] = request(server.port, "GET", "/finally/stalled")[1]["at"]
        return at

    wait_until(finally_ran_at, timeout=2, message="the generator's finally never ran", interval=0.05)
    assert server.stats()["timed_out"] == 1

    # A client that reads is never cut, however fast the generator.
    reader = RawStream(server.port, "/flood/reader?size=100")
    reader.opening()
    started = time.monotonic()
    taken = 0
    while time.monotonic() - started < SEND_TIMEOUT + 1:
        chunk = reader.chunk()
        assert chunk is not None
        taken += len(chunk)
    assert taken > 100 * 1024 and server.stats()["timed_out"] == 1


def test_stalled_reader_of_a_resumable_answer_is_reset_and_the_owner_goes_on(
    start_server: StartServer,
) -> None:
    """Regression: a resumable answer's reader whose client stopped reading blocked in the
    server's write for good. Now it is reset; the answer keeps running apart from it (per its
    idle rule), so a resume gets every event."""
    server = start_server(config=CONFIG)
    status, token = request(server.port, "GET", "/token?identity=alice")
    assert status == 200
    headers = {"Authorization": f"Bearer {token.decode() if isinstance(token, bytes) else token}"}
    count = 300
    stalled = RawStream(
        server.port,
        f"/answer/stalled?count={count}&pace=0.01&pad={16 * 1024}",
        headers=headers,
        method="POST",
        rcvbuf=4096,
    )
    since = time.monotonic()
    assert stalled.status == 200
    stream_id = stalled.headers["x-sse-stream"]
    assert _server_send_buffer(server, stalled.sock) <= 2 * SEND_BUFFER
    elapsed = _reset_in_time(server, stalled, since)
    print(f"stalled reader of a resumable answer reset after {elapsed:.2f}s")
    assert server.stats()["timed_out"] == 1

    resumed = RawStream(
        server.port, f"/stream/resume/{stream_id}", headers={**headers, "Last-Event-ID": f"{stream_id}.0-0"}
    )
    assert resumed.status == 200
    events: List[ParsedEvent] = []
    while not events or events[-1].type not in ("sse.end", "sse.error"):
        chunk = resumed.chunk(timeout=10)
        assert chunk is not None, events[-1:]
        events += resumed.parser.feed(chunk)
    assert [json.loads(e.data)["n"] for e in events[:-1]] == list(range(1, count + 1))
    assert events[-1].type == "sse.end"  # the owner ran to the end
