"""gunicorn.conf.py and flask_sse_ext.gunicorn: handover on stop and reload, token redaction."""

from __future__ import annotations

import signal
import time
from typing import Optional

from flask_sse_ext import Publisher
from flask_sse_ext.gunicorn import redact
from support.client import RawStream
from support.paths import ROOT
from support.redis import RedisServer
from support.server import StartServer
from support.waiting import wait_until

CONF = ["-c", str(ROOT / "gunicorn.conf.py")]


def test_redact() -> None:
    assert redact("GET /stream?token=abc.def&channel=x HTTP/1.1") == (
        "GET /stream?token=[redacted]&channel=x HTTP/1.1"
    )
    assert redact("channel=x&token=abc") == "channel=x&token=[redacted]"
    assert redact("channel=x&mytoken=abc") == "channel=x&mytoken=abc"


def test_access_log_never_shows_tokens(start_server: StartServer) -> None:
    server = start_server(args=CONF)
    stream = RawStream(server.port, "/stream?channel=x&token=SUPERSECRETVALUE")
    assert stream.status == 401
    stream.close()
    wait_until(lambda: "token=[redacted]" in server.log(), message=server.log)
    assert "SUPERSECRETVALUE" not in server.log()


def test_sigterm_ends_streams_at_once_and_the_server_stops_fast(start_server: StartServer) -> None:
    server = start_server(args=CONF)
    stream = RawStream(server.port, "/stream?channel=x")
    stream.opening()
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    stream.idle(5)
    assert stream.ended, "the stream ended with a proper last chunk"
    ended = time.monotonic() - started
    server.proc.wait(15)
    stopped = time.monotonic() - started
    # Without the hook the worker would hold the stream for graceful_timeout (10 s).
    assert ended < 2.5 and stopped < 5, (ended, stopped)


def test_reload_hands_clients_over_without_loss(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    server = start_server(args=CONF, config={"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix})
    publisher = Publisher(redis_server.url, prefix=prefix)
    try:
        stream = RawStream(server.port, "/stream?channel=deploy")
        stream.opening()
        first = publisher.publish("before", channel="deploy")
        assert [e.data for e in stream.events(1)] == ["before"]
        started = time.monotonic()
        server.proc.send_signal(signal.SIGHUP)
        stream.idle(5)
        assert stream.ended and time.monotonic() - started < 2.5
        during = [publisher.publish(f"during-{i}", channel="deploy") for i in range(3)]

        def resumed() -> Optional[RawStream]:
            again = RawStream(server.port, "/stream?channel=deploy", headers={"Last-Event-ID": first})
            if again.status == 200 and again.chunked:
                return again
            again.close()
            return None

        # The new worker may take a moment to boot.
        again = wait_until(resumed, timeout=15, message="no worker serves the stream", interval=0.2)
        again.opening()
        assert [(e.data, e.last_event_id) for e in again.events(3)] == [
            (f"during-{i}", during[i]) for i in range(3)
        ]
    finally:
        publisher.close()


def test_a_stream_ended_by_shutdown_closes_its_connection(start_server: StartServer) -> None:
    """Regression: the browser reconnected over the same keep-alive connection to the stopping
    worker, which answered with one more short-lived stream before the reconnect reached a live
    worker."""
    server = start_server(args=CONF)
    stream = RawStream(server.port, "/stream?channel=x")
    stream.opening()
    server.proc.send_signal(signal.SIGHUP)
    assert stream.idle(5) == [] and stream.ended
    stream.sock.settimeout(3)
    assert stream.sock.recv(1) == b""  # the server closed the connection after the last chunk


def test_max_requests_recycling_ends_streams_at_once(start_server: StartServer) -> None:
    server = start_server(args=[*CONF, "--max-requests", "3"])
    stream = RawStream(server.port, "/stream?channel=x")
    stream.opening()
    started = time.monotonic()
    server.stats()  # requests 2 and 3: the worker now recycles itself
    server.stats()
    assert stream.idle(5) == [] and stream.ended
    assert time.monotonic() - started < 2.5
