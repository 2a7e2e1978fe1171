"""The floor: the leanest hand-written gevent SSE fan-out we could write, to measure against.

Plain WSGI (no Flask), meant for ``gunicorn -k gevent -w 1 floor_app:app``. Per worker ONE
greenlet reads ONE Redis pub/sub connection (raw socket, RESP parsed by hiredis) and, for each
event, frames it once as an HTTP/1.1 chunk and writes it with one non-blocking ``send`` to every
client's socket, from that greenlet: no wake-up, no switch, no WSGI write per client. A
client whose socket would block (or took only part of a chunk) keeps the rest in a backlog that
its own request greenlet writes (gevent ``sendall``), and later events queue behind it, so the
bytes stay in order; a backlog of ``QUEUE_SIZE`` chunks cuts the client. The request greenlet
writes the response head itself on ``environ["gunicorn.socket"]`` and then parks until its
client is cut or gone. One ticker greenlet writes the heartbeat comment every 15 s.

No history, no replay, no ids: the least work a correct fan-out does, so ``ext / floor`` is
the price of flask_sse_ext's features and design.

``GET /stream?channel=NAME`` streams one channel (the bench publishes straight to Redis with
``PUBLISH``). Redis comes from ``BENCH_REDIS_URL`` (``redis://127.0.0.1:PORT/0``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, List, Set
from urllib.parse import parse_qs, urlparse

import gevent
import hiredis
from gevent import socket
from gevent.event import Event
from gunicorn.workers.base_async import ALREADY_HANDLED

QUEUE_SIZE = 1000
HEARTBEAT = 15.0
_CHANNEL = re.compile(r"[A-Za-z0-9_\-.:@/]{1,200}")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(payload: bytes) -> bytes:
    """One SSE event from the published bytes, framed as one HTTP/1.1 chunk."""
    if b"\n" not in payload and b"\r" not in payload:
        event = b"data: " + payload + b"\n\n"
    else:
        event = b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(payload)) + b"\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class Client:
    __slots__ = ("send", "backlog", "wake", "cut")

    def __init__(self, sock: Any) -> None:
        self.send = sock._sock.send  # the non-blocking OS socket under gevent's wrapper
        self.backlog: List[bytes] = []
        self.wake = Event()
        self.cut = False


class Fanout:
    """One pub/sub connection per worker process; channel -> local clients."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.clients: Dict[bytes, Set[Client]] = {}
        self.confirmed: Dict[bytes, Event] = {}
        gevent.spawn(self._read)
        gevent.spawn(self._heartbeat)

    def attach(self, channel: bytes, client: Client) -> None:
        """Route ``channel`` to ``client``; return once Redis has confirmed the subscription."""
        clients = self.clients.get(channel)
        if clients is None:
            self.clients[channel] = clients = set()
            self.confirmed[channel] = Event()
            self.sock.sendall(_command(b"SUBSCRIBE", channel))
        clients.add(client)
        if not self.confirmed[channel].wait(5):
            raise RuntimeError("Redis did not confirm SUBSCRIBE")

    def detach(self, channel: bytes, client: Client) -> None:
        clients = self.clients.get(channel)
        if clients is None:
            return
        clients.discard(client)
        if not clients:
            del self.clients[channel]
            del self.confirmed[channel]
            self.sock.sendall(_command(b"UNSUBSCRIBE", channel))

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
                if reply[0] == b"message":
                    clients = self.clients.get(reply[1])
                    if clients:
                        write_all(clients, chunk(reply[2]))
                elif reply[0] == b"subscribe" and reply[1] in self.confirmed:
                    self.confirmed[reply[1]].set()

    def _heartbeat(self) -> None:
        beat = b"3\r\n:\n\n\r\n"
        while True:
            gevent.sleep(HEARTBEAT)
            for clients in list(self.clients.values()):
                write_all(clients, beat)


def write_all(clients: Set[Client], data: bytes) -> None:
    """``data`` to every client: one non-blocking send each; the rest to its backlog."""
    for client in clients:
        if client.backlog:
            if len(client.backlog) >= QUEUE_SIZE:
                client.cut = True
                client.wake.set()
            else:
                client.backlog.append(data)
            continue
        try:
            sent = client.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            client.cut = True
            client.wake.set()
            continue
        if sent < len(data):
            client.backlog.append(data[sent:])
            client.wake.set()


_state: Dict[str, Any] = {"pid": None}


def _fanout() -> Fanout:
    if _state["pid"] != os.getpid():  # per worker process, after the fork
        url = urlparse(os.environ["BENCH_REDIS_URL"])
        _state["fanout"] = Fanout(url.hostname or "127.0.0.1", url.port or 6379)
        _state["pid"] = os.getpid()
    return _state["fanout"]  # type: ignore[no-any-return]


def _serve(sock: Any, client: Client) -> None:
    """Park until the client is cut or gone; write its backlog when the dispatcher left one."""
    backlog = client.backlog
    while not client.cut:
        client.wake.wait()
        client.wake.clear()
        while backlog and not client.cut:
            data = backlog[0] if len(backlog) == 1 else b"".join(backlog)
            count = len(backlog)
            try:
                sock.sendall(data)  # gevent: waits for the socket without blocking the worker
            except OSError:
                return
            del backlog[:count]  # only now: the dispatcher queues behind a pending backlog


def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ.get("PATH_INFO", "")
    if path == "/stream":
        name = (parse_qs(environ.get("QUERY_STRING", "")).get("channel") or ["sse"])[0]
        if not _CHANNEL.fullmatch(name):
            start_response("400 Bad Request", [("Content-Length", "0")])
            return [b""]
        fanout = _fanout()
        channel = name.encode()
        sock = environ["gunicorn.socket"]
        client = Client(sock)
        # The head goes first through the backlog: events that arrive meanwhile queue behind it.
        client.backlog.append(_HEAD + b"d\r\nretry: 3000\n\n\r\n")
        try:
            fanout.attach(channel, client)  # the head goes out once Redis confirmed SUBSCRIBE
            client.wake.set()
            _serve(sock, client)
        except OSError:
            pass
        finally:
            fanout.detach(channel, client)
        return ALREADY_HANDLED
    if path == "/ping":
        body = b'{"pid": %d}' % os.getpid()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]
