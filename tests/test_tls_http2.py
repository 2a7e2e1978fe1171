"""TLS and HTTP/2 done right: gunicorn serving TLS itself sees a client's close_notify as a
disconnect; nginx terminating HTTP/2 (docs/nginx-http2.conf) serves a browser's ten streams
over one connection, and a stream the browser closes is freed on the server at once.

The certificate is made here, with the ``openssl`` command.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

import pytest

from support.nginx import H2_SITE, NginxServer
from support.server import StartServer
from support.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser

Certificate = Tuple[Path, Path]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1: (certificate, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate
    return context


def _streams(port: int) -> int:
    """Open streams of the TLS server's worker (``/stats`` over HTTPS)."""
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/stats", context=_client_context()) as answer:
        streams: int = json.load(answer)["streams"]
    return streams


def _finally_at(port: int, name: str) -> Optional[float]:
    """When the test app's direct stream ``/probe/<name>`` ran its generator's ``finally``."""
    with urllib.request.urlopen(
        f"https://127.0.0.1:{port}/finally/{name}", context=_client_context()
    ) as answer:
        at: Optional[float] = json.load(answer)["at"]
    return at


def _tls_stream(port: int, path: str) -> ssl.SSLSocket:
    """An event stream over TLS, read up to its opening chunk."""
    sock = _client_context().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"retry:" not in data:
        part = sock.recv(4096)
        assert part, data
        data += part
    return sock


@pytest.mark.parametrize("kind", ["channel", "direct"])
@pytest.mark.parametrize("how", ["close_notify", "fin"])
def test_tls_client_that_leaves_is_seen_gone_at_once(
    start_server: StartServer, certificate: Certificate, how: str, kind: str
) -> None:
    """gunicorn serving TLS itself (--certfile/--keyfile): a client that sends close_notify and
    keeps its TCP connection open (waiting for the server's close_notify, as Python's
    ``unwrap`` does) is gone at once, as is one that closes TCP; not at the next heartbeat.
    The same for a direct stream (``sse.response``), whose generator is stopped at once."""
    cert, key = certificate
    server = start_server(args=["--certfile", str(cert), "--keyfile", str(key)])
    name = f"tls-{how}"
    if kind == "channel":
        sock = _tls_stream(server.port, "/stream?channel=tls")
        assert _streams(server.port) == 1
    else:
        sock = _tls_stream(server.port, f"/probe/{name}")  # its generator then waits 30 s
        assert _finally_at(server.port, name) is None

    def gone() -> bool:
        if kind == "channel":
            return _streams(server.port) == 0
        return _finally_at(server.port, name) is not None

    left = time.monotonic()
    if how == "close_notify":
        sock.settimeout(0.2)
        try:
            sock.unwrap()  # sends close_notify, then waits for the server's
        except (OSError, ValueError):
            pass
    else:
        sock.close()
    wait_until(gone, timeout=1, message="the stream stayed open")
    print(f"{kind} {how}: stream freed after {time.monotonic() - left:.3f} s (heartbeat: 15 s)")
    sock.close()


OPEN_TEN = """
(count) => new Promise((resolve, reject) => {
    window.sources = [];
    window.got = {};
    let open = 0;
    for (let i = 0; i < count; i++) {
        const source = new EventSource("/stream?channel=h2-" + i);
        source.onmessage = (e) => { window.got[i] = e.data; };
        source.onopen = () => { if (++open === count) resolve(open); };
        source.onerror = () => reject(new Error("EventSource " + i + " failed"));
        window.sources.push(source);
    }
})
"""

#: The page's protocol (resource timing has no entry for a stream until it ends).
PROTOCOL = """() => performance.getEntriesByType("navigation")[0].nextHopProtocol"""


def _established_to(port: int) -> int:
    """Client connections to 127.0.0.1:``port`` in state ESTABLISHED, from /proc/net/tcp."""
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[2] == f"0100007F:{port:04X}" and fields[3] == "01":
                count += 1
    return count


def test_nginx_http2_serves_ten_streams_over_one_connection(
    start_server: StartServer, certificate: Certificate, browser: Browser
) -> None:
    """docs/nginx-http2.conf in front of gunicorn (HTTP/1.1): a Chromium page opens ten
    EventSources (more than HTTP/1.1's six per host) over one connection, each receives its
    event, and one the page closes is freed on the server within a second."""
    server = start_server()
    nginx = NginxServer(server.port, site=H2_SITE, tls=certificate)
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        origin = f"https://127.0.0.1:{nginx.port}"
        response = page.goto(origin + "/stats")  # a page of the origin, over nginx
        assert response is not None and response.status == 200
        assert page.evaluate(OPEN_TEN, 10) == 10
        assert server.stats()["streams"] == 10
        ids = [server.publish(data=f"to {i}", channel=f"h2-{i}") for i in range(10)]
        assert len(set(ids)) == 10
        got = wait_until(lambda: len(g := page.evaluate("window.got")) == 10 and g, message="events")
        assert got == {str(i): f"to {i}" for i in range(10)}
        assert page.evaluate(PROTOCOL) == "h2"
        # Ten open streams, one connection: over HTTP/1.1 they would take ten (at most six).
        assert _established_to(nginx.port) == 1

        closed = time.monotonic()
        page.evaluate("window.sources[3].close()")
        wait_until(lambda: server.stats()["streams"] == 9, timeout=1, message=server.stats)
        print(f"a closed stream freed on the server after {time.monotonic() - closed:.3f} s")
        # The others still receive.
        server.publish(data="again", channel="h2-4")
        wait_until(lambda: page.evaluate("window.got[4]") == "again", message="the stream after a close")
    finally:
        context.close()
        nginx.cleanup()
