"""Hostile networks: clients that stop reading are cut on time with a reset and their memory
freed; gunicorn's own HTTP/2 is refused; a TLS close_notify is a disconnect.

Real gunicorn gevent workers, real sockets and the real kernel: a stalled client is a socket
with a 4 KB receive buffer that is never read, and its reset is the kernel's TCP state.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import re
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import gunicorn.config
import h2.config
import h2.connection
import h2.events
import pytest
from flask import Flask

from flask_sse_ext import SSE
from flask_sse_ext.brokers.base import Message
from flask_sse_ext.brokers.memory import MemoryBroker
from flask_sse_ext.client import LAGGED, Client, Stats
from flask_sse_ext.gunicorn import serves_http2
from flask_sse_ext.hub import CHUNK_BYTES, Hub
from support.client import RawStream, request
from support.server import Server, StartServer
from support.waiting import wait_until

pytestmark = pytest.mark.fault

#: A short send timeout, so that each test takes seconds.
SEND_TIMEOUT = 2.0
PAYLOAD = "x" * 16 * 1024
_TCP_CLOSE = 7


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _tcp_closed(sock: socket.socket) -> bool:
    """Whether the kernel has closed this connection (a reset from the peer does that at once;
    a FIN would leave it in CLOSE_WAIT), read from TCP_INFO without reading the socket."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    state: int = struct.unpack_from("B", info)[0]
    return state == _TCP_CLOSE


def _assert_reset(stream: RawStream) -> None:
    """The client sees ECONNRESET once it reads what the kernel kept for it."""
    stream.sock.settimeout(2)
    with pytest.raises(ConnectionResetError):
        while stream.sock.recv(65536):
            pass


class Publishing(threading.Thread):
    """Publishes ``count`` events of 16 KB to ``channel`` at ``rate`` per second over one
    keep-alive connection, recording their ids and when the first went out."""

    def __init__(self, server: Server, channel: str, count: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.server, self.channel, self.count, self.rate = server, channel, count, rate
        self.ids: List[str] = []
        self.started_at = 0.0

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        start = time.monotonic()
        self.started_at = start
        for i in range(self.count):
            pause = start + i / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            body = json.dumps({"data": f"{i}:{PAYLOAD}", "channel": self.channel})
            connection.request("POST", "/publish", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            self.ids.append(json.loads(response.read())["id"])
            assert response.status == 200
        connection.close()


class Reader(threading.Thread):
    """A healthy client: reads ``count`` events."""

    def __init__(self, port: int, channel: str, count: int) -> None:
        super().__init__(daemon=True)
        self.stream = RawStream(port, f"/stream?channel={channel}")
        self.stream.opening()
        self.count = count
        self.ids: List[Optional[str]] = []

    def run(self) -> None:
        self.ids = [e.last_event_id for e in self.stream.events(self.count, timeout=30)]


def _cut(server: Server, stalled: RawStream, since: float, within: float) -> float:
    """Seconds from ``since`` until the stalled client's connection was reset, at most
    ``within``."""
    wait_until(
        lambda: _tcp_closed(stalled.sock),
        timeout=within - (time.monotonic() - since) + 0.05,
        message=lambda: f"the stalled client was not reset: {server.stats()}",
        interval=0.01,
    )
    return time.monotonic() - since


@pytest.mark.parametrize(
    "queue_bytes, reason",
    [(None, "lagged"), (256 * 1024 * 1024, "timed_out")],
    ids=["cut-by-queue-bytes", "cut-by-send-timeout"],
)
def test_stalled_client_among_readers_is_reset_in_time(
    start_server: StartServer, queue_bytes: Optional[int], reason: str
) -> None:
    """16 KB events at 200/s: the client that never reads is reset within SSE_SEND_TIMEOUT + 1 s
    (with the default SSE_CLIENT_QUEUE_BYTES, sooner: its queue holds 1 MiB), readers lose
    nothing, and the worker keeps no copy of what the stalled client missed."""
    history = 100
    config: Dict[str, object] = {"SSE_SEND_TIMEOUT": SEND_TIMEOUT, "SSE_HISTORY_SIZE": history}
    if queue_bytes is not None:  # only the send timeout can cut
        config.update(SSE_CLIENT_QUEUE_BYTES=queue_bytes, SSE_CLIENT_QUEUE_SIZE=100000)
    server = start_server(config=config)
    worker = server.worker_pids(1)[0]
    count = 600
    stalled = RawStream(server.port, "/stream?channel=fast", rcvbuf=4096)
    stalled.opening()
    readers = [Reader(server.port, "fast", count) for _ in range(3)]
    before = _rss_kb(worker)
    for reader in readers:
        reader.start()
    publishing = Publishing(server, "fast", count, rate=200)
    publishing.start()
    wait_until(lambda: publishing.started_at, message="the publisher did not start")
    elapsed = _cut(server, stalled, publishing.started_at, SEND_TIMEOUT + 1)
    publishing.join(30)
    for reader in readers:
        reader.join(30)
        assert reader.ids == publishing.ids  # every event, in order
    stats = server.stats()
    grown = _rss_kb(worker) - before
    print(f"{reason}: reset after {elapsed:.2f} s, worker RSS grew {grown} kB, {stats}")
    assert (stats["lagged"], stats["timed_out"]) == ((1, 0) if reason == "lagged" else (0, 1))
    assert stats["streams"] == 3
    _assert_reset(stalled)
    # History holds its 100 events of 16 KB by design; a stalled client holds at most its
    # queue (1 MiB by default; with the send timeout alone, what 2 s at 200/s brought), and
    # nothing once cut: the first finding was a worker that kept a full queue.
    assert grown < 2048 + history * 16
    for reader in readers:
        reader.stream.close()


def test_stalled_client_on_a_quiet_channel_is_cut_by_the_send_timeout(start_server: StartServer) -> None:
    """One 16 KB event, then only heartbeats: a client that does not read it never fills its
    queue, yet is reset within SSE_SEND_TIMEOUT + one heartbeat, and counted by reason."""
    heartbeat = 1.0
    config = {
        "SSE_SEND_TIMEOUT": SEND_TIMEOUT,
        "SSE_HEARTBEAT_INTERVAL": heartbeat,
        "SSE_METRICS_PATH": "/metrics",
    }
    server = start_server(config=config)
    stalled = RawStream(server.port, "/stream?channel=quiet", rcvbuf=4096)
    stalled.opening()
    reader = RawStream(server.port, "/stream?channel=quiet")
    reader.opening()
    published_at = time.monotonic()
    event_id = server.publish(data=PAYLOAD, channel="quiet")
    assert [e.last_event_id for e in reader.events(1)] == [event_id]
    elapsed = _cut(server, stalled, published_at, SEND_TIMEOUT + heartbeat)
    assert elapsed >= SEND_TIMEOUT - 0.1  # not before its time
    _assert_reset(stalled)
    stats = wait_until(lambda: (s := server.stats())["streams"] == 1 and s, message=server.stats)
    assert (stats["lagged"], stats["timed_out"]) == (0, 1)
    status, metrics = request(server.port, "GET", "/metrics")
    assert status == 200
    assert b'sse_cuts_total{reason="timed_out"} 1.0' in metrics
    assert b'sse_cuts_total{reason="lagged"} 0.0' in metrics
    # The reader, which reads its heartbeats, stays.
    assert reader.idle(heartbeat * 1.5) and not reader.ended


def test_half_open_client_is_found_by_heartbeats_alone(start_server: StartServer) -> None:
    """No event at all: the heartbeats are the probe. A client that stops reading (its receive
    window, the smallest the kernel allows, fills with heartbeats, as a vanished peer's window
    would never reopen) is reset once a heartbeat has waited SSE_SEND_TIMEOUT unacknowledged."""
    heartbeat, timeout = 0.02, 1.0
    config = {"SSE_HEARTBEAT_INTERVAL": heartbeat, "SSE_SEND_TIMEOUT": timeout}
    server = start_server(config=config)
    stalled = RawStream(server.port, "/stream?channel=silent", rcvbuf=1)
    stalled.opening()
    opened = time.monotonic()
    unread, grew_at = 0, opened

    def reset() -> bool:
        nonlocal unread, grew_at
        if _tcp_closed(stalled.sock):
            return True
        now_unread = struct.unpack("i", fcntl.ioctl(stalled.sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        if now_unread != unread:
            unread, grew_at = now_unread, time.monotonic()
        return False

    wait_until(reset, timeout=20, message=lambda: f"never reset: {server.stats()}", interval=0.005)
    waited = time.monotonic() - grew_at  # since the last heartbeat the client's kernel took
    print(f"{unread} bytes of heartbeats took, reset {waited:.2f} s after the last one")
    # The heartbeat stuck since before that last growth (the window took part of it) waited
    # the timeout; none waited much longer.
    assert waited <= timeout + heartbeat + 0.5
    assert time.monotonic() - opened >= timeout
    _assert_reset(stalled)
    stats = server.stats()
    assert (stats["published"], stats["lagged"], stats["timed_out"], stats["streams"]) == (0, 0, 1, 0)


def test_client_queue_is_bounded_in_bytes() -> None:
    """SSE_CLIENT_QUEUE_BYTES: past it the client is cut as lagged, whatever the event count;
    an empty queue takes one event of any size."""
    stats = Stats()
    client = Client(("c",), 1000, stats=stats, maxbytes=40 * 1024)
    big = Message("c", (1, 0), None, b"data: " + b"x" * 50 * 1024 + b"\n")
    client.put(big)
    assert client.closed is None and client.queued_bytes == len(big.frame)
    client.queue.clear()
    client.queued_bytes = 0
    for i in range(4):
        client.put(Message("c", (2, i), None, b"data: " + b"x" * 9 * 1024 + b"\n"))
    assert client.closed is None and len(client.queue) == 4
    client.put(Message("c", (3, 0), None, b"data: " + b"x" * 9 * 1024 + b"\n"))
    assert client.closed == LAGGED and stats.lagged == 1 and len(client.queue) == 4


@pytest.mark.parametrize(
    "key, value",
    [
        ("SSE_SEND_TIMEOUT", 0),
        ("SSE_SEND_TIMEOUT", "10"),
        ("SSE_CLIENT_QUEUE_BYTES", 0),
        ("SSE_SEND_BUFFER_BYTES", 1024),
    ],
)
def test_bad_settings_are_refused(app: Flask, key: str, value: object) -> None:
    app.config[key] = value
    with pytest.raises(ValueError, match=key):
        SSE(app)


@pytest.mark.parametrize(
    "settings, h2",
    [
        ({}, False),
        ({"http_protocols": "h2,h1"}, False),  # no TLS and no cleartext HTTP/2: never negotiated
        ({"http_protocols": "h2,h1", "http2_cleartext": "prior-knowledge"}, True),
        ({"http_protocols": "h2,h1", "http2_cleartext": "upgrade"}, True),
        ({"http_protocols": "h1,h2", "certfile": "cert.pem", "keyfile": "key.pem"}, True),
        ({"certfile": "cert.pem", "keyfile": "key.pem"}, False),
    ],
)
def test_serves_http2_reads_gunicorn_settings(settings: Dict[str, str], h2: bool) -> None:
    config = gunicorn.config.Config()
    for name, value in settings.items():
        config.set(name, value)
    assert serves_http2(config) is h2


def test_gunicorn_own_http2_is_refused_at_startup(start_server: StartServer) -> None:
    """With the project's gunicorn.conf.py (its post_worker_init hook), a server that offers h2 stops at boot and says
    to terminate HTTP/2 at the proxy."""
    h2 = ["--http-protocols", "h2,h1", "--http2-cleartext", "prior-knowledge"]
    try:
        server = start_server(args=["-c", "gunicorn.conf.py", *h2])
    except RuntimeError as exc:  # it may exit before it even listens
        log = str(exc)
    else:
        server.proc.wait(20)
        log = server.log()
    assert "Terminate HTTP/2 at a proxy" in log, log
    assert "Worker failed to boot" in log, log


def test_gunicorn_own_http2_stream_is_refused_without_touching_the_connection(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Without the hook (a config of its own instead of the project's gunicorn.conf.py), every
    stream over gunicorn's HTTP/2 gets the same 505 that says what to do: a channel stream, a
    direct ``sse.response``, a resumable answer and a job. Regression: the last three were
    served, and one endless response held up every later request of the connection. No
    generator starts, and the connection they share with other requests stays up for them."""
    config = tmp_path / "plain.conf.py"
    config.write_text("# no flask_sse_ext.gunicorn hook\n")
    h2 = ["--http-protocols", "h2,h1", "--http2-cleartext", "prior-knowledge"]
    server = start_server(config={"TEST_JOURNAL": str(tmp_path)}, args=["-c", str(config), *h2])
    streams = ["/stream?channel=a", "/probe/h2", "/answer/h2", "/job/h2-job"]
    *refused, stats, gone = _h2_get(server.port, [*streams, "/stats", "/gone"])
    assert [status for status, _ in refused] == [505] * len(streams)
    assert b"Terminate HTTP/2 at a proxy" in refused[0][1]
    assert {body for _, body in refused} == {refused[0][1]}  # one refusal, word for word
    # The later requests on the same connection are answered: it was not shut down.
    assert stats[0] == 200 and json.loads(stats[1])["streams"] == 0
    assert gone == (204, b"")
    assert not (tmp_path / "h2").exists()  # the answer's generator never ran
    assert server.log().count("Terminate HTTP/2 at a proxy") >= len(streams)


def test_raw_socket_is_none_under_http2() -> None:
    """``raw_socket`` hands out the connection's socket under gevent, but never under HTTP/2,
    where the socket is every stream's: a stream must not watch, cut or reset it. Run in a
    process that gevent has patched, with a real socket in ``gunicorn.socket``."""
    code = """if True:
        from gevent import monkey
        monkey.patch_all()
        import socket
        from flask_sse_ext.serving import raw_socket
        sock = socket.socket()
        for protocol in ("HTTP/1.1", "HTTP/2.0"):
            found = raw_socket({"SERVER_PROTOCOL": protocol, "gunicorn.socket": sock})
            print(protocol, found is not None and found.fileno() == sock.fileno())
        sock.close()
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["HTTP/1.1", "True", "HTTP/2.0", "False"], out.stderr


def _h2_get(port: int, paths: List[str]) -> List[Tuple[Optional[int], bytes]]:
    """GET each of ``paths`` in turn over one cleartext HTTP/2 connection: (status, body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    sock.sendall(connection.data_to_send())
    results = []
    for path in paths:
        sid = connection.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "127.0.0.1")]
        connection.send_headers(sid, headers, end_stream=True)
        sock.sendall(connection.data_to_send())
        status, body, done = None, b"", False
        deadline = time.monotonic() + 10  # heartbeats of an endless stream must not wait forever
        while not done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer to {path} (status {status}): {body[:200]!r}")
            data = sock.recv(65536)
            if not data:
                raise EOFError(f"the server closed the connection before answering {path}")
            for event in connection.receive_data(data):
                if getattr(event, "stream_id", None) != sid:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
            sock.sendall(connection.data_to_send())
        results.append((status, body))
    sock.close()
    return results


def test_a_stream_takes_at_most_one_chunk_of_its_queue_at_a_time() -> None:
    """A stream coalesces what waits into one write, but no more than CHUNK_BYTES of it: a
    client that stopped reading holds that chunk until it is cut, not its whole queue."""
    broker = MemoryBroker(100)
    hub = Hub(broker)
    client = Client(("c",), 1000, maxbytes=10 * CHUNK_BYTES)
    hub.attach(client)
    for _ in range(40):
        broker.publish("c", b"data: " + b"x" * 10000 + b"\n")
    wait_until(lambda: len(client.queue) == 40)  # the broker's dispatcher delivers
    assert not client.closed
    chunks = []
    while client.queue:
        assert client.wake.is_set()  # left set while something waits
        client.wake.clear()
        taken = hub.take(client)
        size = sum(len(m.frame) for m in taken)
        assert size < CHUNK_BYTES + 10100
        chunks.append(len(taken))
    assert sum(chunks) == 40 and len(chunks) > 5 and client.queued_bytes == 0
    broker.publish("c", b"data: small\n")
    wait_until(lambda: client.queue)
    assert len(hub.take(client)) == 1  # below the bound, everything at once
    hub.detach(client)


def _server_send_buffer(server_port: int, client: socket.socket) -> int:
    """The kernel's send buffer (``tb`` in ``ss -m``) of the server's side of ``client``."""
    client_port = client.getsockname()[1]
    out = subprocess.run(
        ["ss", "-tmnH", f"( sport = :{server_port} and dport = :{client_port} )"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    match = re.search(r"\btb(\d+)", out)
    assert match, out
    return int(match.group(1))


@pytest.mark.parametrize("size", [65536, None])
def test_send_buffer_of_a_stream_is_capped(start_server: StartServer, size: Optional[int]) -> None:
    """SSE_SEND_BUFFER_BYTES sets the connection's SO_SNDBUF (Linux doubles it), so a stalled
    client pins at most that in the kernel; None leaves the kernel's autotuning."""
    server = start_server(config={"SSE_SEND_BUFFER_BYTES": size})
    stream = RawStream(server.port, "/stream?channel=buffer")
    stream.opening()
    buffer = _server_send_buffer(server.port, stream.sock)
    if size is None:
        assert buffer != 2 * 65536
    else:
        assert buffer == 2 * size
