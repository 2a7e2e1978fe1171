"""The stream behind a real nginx with proxy_buffering on: live only thanks to X-Accel-Buffering.

Each test starts its own gunicorn and nginx: docs/nginx.conf as documented, nginx's defaults, and
a control location that ignores the header (see ``support/nginx.py``).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Optional

import pytest

from support.client import HEARTBEAT, RawStream
from support.nginx import DOCS_SITE, StartNginx
from support.server import StartServer
from support.waiting import wait_until


@pytest.mark.parametrize("site", [DOCS_SITE, None], ids=["docs-nginx.conf", "nginx-defaults"])
def test_event_through_nginx_arrives_within_a_second(
    start_server: StartServer, start_nginx: StartNginx, channel: str, site: Optional[Path]
) -> None:
    server = start_server(config={"SSE_HEARTBEAT_INTERVAL": 0.5})
    nginx = start_nginx(server.port, site=site)

    # The app asks nginx not to buffer; nginx acts on the header and does not forward it.
    direct = RawStream(server.port, f"/stream?channel={channel}")
    assert direct.headers["x-accel-buffering"] == "no"
    direct.close()

    stream = RawStream(nginx.port, f"/stream?channel={channel}", timeout=2)
    assert stream.status == 200, nginx.log()
    assert stream.headers["server"].startswith("nginx")
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-cache"
    assert "x-accel-buffering" not in stream.headers
    assert "content-length" not in stream.headers
    stream.opening()

    started = time.monotonic()
    event_id = server.publish(data="through nginx", event="note", channel=channel)
    [event] = stream.events(1, timeout=1)
    elapsed = time.monotonic() - started
    assert (event.type, event.data, event.last_event_id) == ("note", "through nginx", event_id)
    assert elapsed < 1, f"the event took {elapsed:.3f}s through nginx"

    # Heartbeats come through one by one, each within the 0.5 s interval (not held back).
    started = time.monotonic()
    assert stream.chunks(3, timeout=2.5, heartbeats=True) == [HEARTBEAT] * 3
    assert 1.2 < time.monotonic() - started < 2.5
    stream.close()
    assert "[error]" not in nginx.log(), nginx.log()


def _read_until(sock: socket.socket, marker: bytes, deadline: float) -> bytes:
    data = b""
    while marker not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        part = sock.recv(65536)
        if not part:
            break
        data += part
    return data


def test_control_without_the_header_nginx_buffers_and_the_event_is_late(
    start_server: StartServer, start_nginx: StartNginx, channel: str
) -> None:
    """The same measurement fails when nginx ignores X-Accel-Buffering: it buffers the stream
    (headers included) until the upstream response ends, here after SSE_MAX_CONNECTION_AGE."""
    server = start_server(config={"SSE_HEARTBEAT_INTERVAL": 0.5, "SSE_MAX_CONNECTION_AGE": 2.5})
    nginx = start_nginx(server.port)
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=5) as sock:
        sock.sendall(
            f"GET /buffered/stream?channel={channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        # The worker holds the stream (attached and subscribed).
        wait_until(lambda: server.stats()["streams"] == 1, message=server.stats)
        started = time.monotonic()
        event_id = server.publish(data="held back", channel=channel)
        sock.settimeout(1)
        with pytest.raises(socket.timeout):
            sock.recv(65536)
        # Buffered, not lost: everything arrives at once when gunicorn ends the response.
        data = _read_until(sock, b"\r\n0\r\n\r\n", time.monotonic() + 4)
        elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert b"data: held back\nid: " + event_id.encode() + b"\n\n" in data
    assert data.count(HEARTBEAT) >= 3
    assert 1 < elapsed < 4, f"the event took {elapsed:.3f}s"
