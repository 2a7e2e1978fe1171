"""Direct streams (``sse.response``) under a real gunicorn gevent worker."""

from __future__ import annotations

import json
import time
from typing import Dict, Iterator, Optional

from flask import Response

from flask_sse_ext import SSE
from support.app import create_app
from support.client import HEARTBEAT, RawStream, request
from support.server import Server, StartServer
from support.waiting import wait_until


class PostStream(RawStream):
    """A POST whose response is an event stream (what a chat client sends)."""

    def __init__(self, port: int, path: str, body: object) -> None:
        payload = json.dumps(body)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(payload))}
        super().__init__(port, path, headers=headers, method="POST", body=payload.encode())


def test_post_with_json_body_streams_tokens_then_end(server: Server) -> None:
    stream = PostStream(server.port, "/chat", {"prompt": "hello there"})
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.chunk() == b"retry: 3000\n"
    events = stream.events(5)
    assert [(e.type, e.data) for e in events] == [
        ("token", "You"),
        ("token", "said:"),
        ("token", "hello"),
        ("token", "there"),
        ("sse.end", ""),
    ]
    assert stream.chunk() is None  # the response ends after the end event


def test_slow_producer_still_heartbeats_at_every_interval(server: Server) -> None:
    stream = RawStream(server.port, "/slow?pause=5&heartbeat=1")
    stream.opening()
    chunks = []
    arrivals = []
    while True:
        chunk = stream.chunk(timeout=3)
        if chunk is None:
            break
        chunks.append(chunk)
        arrivals.append(time.monotonic())
    assert chunks[0] == b"data: first\n\n"
    beats = [t for c, t in zip(chunks, arrivals) if c == HEARTBEAT]
    assert len(beats) >= 4, chunks
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert max(gaps) < 1.5, gaps  # one beat every second while the producer sleeps 5 s
    # What waits together goes out together: the last item and the end event, in one write.
    assert chunks[-1] == b"data: second\n\nevent: sse.end\ndata: \n\n"


def test_client_disconnect_stops_the_producer_promptly(server: Server) -> None:
    stream = RawStream(server.port, "/probe/p1")
    stream.opening()
    assert stream.chunk() == b"data: tick\n\n"
    # The generator now sleeps 30 s in an "upstream call"; the heartbeat interval is 5 s.
    closed_at = time.time()
    stream.close()

    def finally_ran_at() -> Optional[float]:
        at: Optional[float] = request(server.port, "GET", "/finally/p1")[1]["at"]
        return at

    finished = wait_until(
        finally_ran_at, timeout=8, message="the producer's finally never ran", interval=0.05
    )
    assert finished - closed_at < 5.0  # within one heartbeat interval
    print(f"producer finally ran {finished - closed_at:.3f}s after the client closed")


def test_generator_error_ends_with_an_error_event_without_leaking(start_server: StartServer) -> None:
    server = start_server()  # its log gets the app's traceback, on purpose
    stream = RawStream(server.port, "/fail")
    stream.opening()
    events = stream.events(2)
    assert [(e.type, e.data) for e in events] == [
        ("message", "ok"),
        ("sse.error", '{"error":"internal error"}'),
    ]
    assert stream.chunk() is None
    exposed = RawStream(server.port, "/fail?expose=1")
    exposed.opening()
    assert exposed.events(2)[1].data == '{"error":"RuntimeError: upstream exploded with a secret"}'
    assert "RuntimeError: upstream exploded" in server.log()  # the app's log has the traceback


def test_direct_stream_in_the_threaded_dev_server() -> None:
    """Without gevent, a thread runs the generator; the writer still heartbeats."""
    sse = SSE()
    app = create_app(sse=sse)
    stopped = []

    @app.get("/gen")
    def gen() -> Response:
        def items() -> Iterator[Dict[str, int]]:
            try:
                yield {"n": 1}
                time.sleep(0.6)
                yield {"n": 2}
            finally:
                stopped.append(True)

        return sse.response(items(), heartbeat=0.2)

    response = app.test_client().get("/gen", buffered=False)
    chunks = list(response.iter_encoded())
    assert chunks[0] == b"retry: 3000\n"
    body = b"".join(c for c in chunks if c != HEARTBEAT)
    assert body == b'retry: 3000\ndata: {"n":1}\n\ndata: {"n":2}\n\nevent: sse.end\ndata: \n\n'
    assert chunks.count(HEARTBEAT) >= 2
    assert stopped == [True]
