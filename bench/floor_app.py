"""The floor: a minimal hand-written gevent SSE fan-out, to measure flask_sse_ext against.

Plain WSGI (no Flask), meant for ``gunicorn -k gevent -w 1 floor_app:app``. Per worker it
holds ONE Redis connection for pub/sub (raw socket, RESP parsed by hiredis) and subscribes to
a channel when its first local client arrives. Each event is encoded once and appended to a
bounded deque per client; a client's stream writes everything queued in one chunk. A client
whose queue is full is cut. No history, no replay, no ids: the least work a correct fan-out
does, so ``ext / floor`` is the price of flask_sse_ext's features and design.

``GET /stream?channel=NAME`` streams one channel; ``POST /publish`` with JSON
``{"data": str, "channel": str}`` publishes through Redis (the bench publishes straight to
Redis with ``PUBLISH``). Redis comes from ``BENCH_REDIS_URL`` (``redis://127.0.0.1:PORT/0``).
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Set
from urllib.parse import parse_qs, urlparse

import gevent
import hiredis
from gevent import socket
from gevent.event import Event
from gevent.lock import Semaphore

QUEUE_SIZE = 1000
HEARTBEAT = 15.0
_CHANNEL = re.compile(r"[A-Za-z0-9_\-.:@/]{1,200}")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def encode(payload: bytes) -> bytes:
    """One SSE event from the published bytes (every line a ``data:`` line)."""
    if b"\n" not in payload and b"\r" not in payload:
        return b"data: " + payload + b"\n\n"
    return b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(payload)) + b"\n"


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class Client:
    __slots__ = ("queue", "wake", "cut")

    def __init__(self) -> None:
        self.queue: Deque[bytes] = deque()
        self.wake = Event()
        self.cut = False


class Fanout:
    """One pub/sub connection per worker process; channel -> local clients."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.send_lock = Semaphore()
        self.clients: Dict[bytes, Set[Client]] = {}
        self.confirmed: Dict[bytes, Event] = {}
        self.pending: Dict[bytes, Deque[Event]] = {}  # SUBSCRIBE replies come in order
        gevent.spawn(self._read)

    def _send(self, data: bytes) -> None:
        with self.send_lock:  # one command at a time on the shared socket
            self.sock.sendall(data)

    def attach(self, channel: bytes, client: Client) -> None:
        """Route ``channel`` to ``client``; return once Redis has confirmed the subscription."""
        clients = self.clients.get(channel)
        if clients is not None:
            clients.add(client)
            confirmed = self.confirmed[channel]
        else:
            self.clients[channel] = {client}
            confirmed = self.confirmed[channel] = Event()
            self.pending.setdefault(channel, deque()).append(confirmed)
            self._send(_command(b"SUBSCRIBE", channel))
        if not confirmed.wait(5):
            self.detach(channel, client)
            raise RuntimeError("Redis did not confirm SUBSCRIBE")

    def detach(self, channel: bytes, client: Client) -> None:
        clients = self.clients.get(channel)
        if clients is None:
            return
        clients.discard(client)
        if not clients:
            del self.clients[channel]
            del self.confirmed[channel]
            self._send(_command(b"UNSUBSCRIBE", channel))

    def _read(self) -> None:
        reader = hiredis.Reader()
        recv = self.sock.recv
        while True:
            data = recv(262144)
            if not data:
                raise RuntimeError("Redis closed the pub/sub connection")
            reader.feed(data)
            while True:
                reply = reader.gets()
                if reply is False:
                    break
                kind = reply[0]
                if kind == b"message":
                    self._fan_out(reply[1], reply[2])
                elif kind == b"subscribe":
                    waiting = self.pending.get(reply[1])
                    if waiting:
                        waiting.popleft().set()
                        if not waiting:
                            del self.pending[reply[1]]

    def _fan_out(self, channel: bytes, payload: bytes) -> None:
        clients = self.clients.get(channel)
        if not clients:
            return
        frame = encode(payload)
        for client in clients:
            queue = client.queue
            if len(queue) >= QUEUE_SIZE:
                client.cut = True
                client.wake.set()
                continue
            queue.append(frame)
            if len(queue) == 1:
                client.wake.set()


_state: Dict[str, Any] = {"pid": None}


def _fanout() -> Fanout:
    if _state["pid"] != os.getpid():  # per worker process, after the fork
        url = urlparse(os.environ["BENCH_REDIS_URL"])
        _state["fanout"] = Fanout(url.hostname or "127.0.0.1", url.port or 6379)
        _state["pid"] = os.getpid()
        _state["publisher"] = None
    return _state["fanout"]  # type: ignore[no-any-return]


def _stream(fanout: Fanout, channel: bytes, client: Client) -> Iterator[bytes]:
    try:
        yield b"retry: 3000\n\n"  # headers go out with the first chunk, after SUBSCRIBE is confirmed
        queue = client.queue
        wake = client.wake
        while not client.cut:
            if not queue:
                wake.clear()
                if not wake.wait(HEARTBEAT) and not queue:
                    yield b":\n\n"
                    continue
            if client.cut:
                break
            if len(queue) == 1:
                chunk = queue.popleft()
            else:
                chunk = b"".join(queue)
                queue.clear()
            yield chunk
    finally:
        fanout.detach(channel, client)


def _respond(start_response: Callable[..., Any], status: str, body: Any) -> List[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == "/stream" and method == "GET":
        names = parse_qs(environ.get("QUERY_STRING", "")).get("channel") or ["sse"]
        name = names[0]
        if not _CHANNEL.fullmatch(name):
            return _respond(start_response, "400 Bad Request", {"error": "bad channel"})
        fanout = _fanout()
        channel = name.encode()
        client = Client()
        fanout.attach(channel, client)
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Cache-Control", "no-cache"),
                ("X-Accel-Buffering", "no"),
            ],
        )
        return _stream(fanout, channel, client)
    if path == "/publish" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        _fanout()
        if _state["publisher"] is None:
            import redis

            _state["publisher"] = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        data = body.get("data", "")
        if not isinstance(data, str):
            data = json.dumps(data, separators=(",", ":"))
        count = _state["publisher"].publish(body.get("channel", "sse"), data.encode())
        return _respond(start_response, "200 OK", {"receivers": count})
    if path == "/ping":
        return _respond(start_response, "200 OK", {"pid": os.getpid()})
    return _respond(start_response, "404 Not Found", {"error": "not found"})
