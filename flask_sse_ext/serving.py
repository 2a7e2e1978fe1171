"""What a stream needs to know about the server it runs in.

Under WSGI the only sign that a client left is usually a failed write, found at the next
heartbeat. Under gunicorn's gevent worker we can do better: the connection's socket is in the
environ, and a read watcher on it sees the client's FIN (or TLS close_notify) at once, without
a greenlet per stream. The kernel also tells how much sent data the client has not
acknowledged yet (``send_progress``), which is how a stalled or half-open client is found, and
a client cut for that gets a reset (``abort``) that frees its buffers at once.

All of it assumes the connection carries this one response: under HTTP/2 (``http2``) it is
shared by every stream of a browser, and nothing here touches it: every stream response (channel,
direct, resumable, job) answers ``http2_refusal`` instead.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import math
import os
import socket
import ssl
import struct
import sys
import termios
import time
from types import FrameType
from typing import Any, Callable, Dict, Mapping, Optional, Set, Tuple

from flask import Response

__all__ = [
    "gevent_active",
    "raw_socket",
    "tls_layer",
    "watch_disconnect",
    "unwatch",
    "shutdown",
    "abort",
    "limit_send_buffer",
    "release_free_memory",
    "send_progress",
    "SendDeadline",
    "watch_send",
    "guard",
    "server_response",
    "http2",
    "HTTP2_REFUSAL",
    "http2_refusal",
    "check_server",
    "sibling_workers",
    "process_name",
    "warn_memory_broker",
]

logger = logging.getLogger(__name__)
_warned: Set[str] = set()


def gevent_active() -> bool:
    """True when gevent has patched ``socket`` in this process (gunicorn ``-k gevent``)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


#: What a stream answers under gunicorn's own HTTP/2, and what the worker logs at startup.
HTTP2_REFUSAL = (
    "flask-sse-ext cannot stream over gunicorn's own HTTP/2, which serves the requests of a "
    "connection one after another: one event stream would hold up every later request of "
    "that browser. Terminate HTTP/2 at a proxy (nginx: 'listen 443 ssl http2;') that speaks "
    "HTTP/1.1 to gunicorn, and drop h2 from gunicorn's --http-protocols (and --http2-cleartext)."
)


def http2(environ: Dict[str, Any]) -> bool:
    """True when the server speaks HTTP/2 on this request's connection (gunicorn 27's own
    HTTP/2 says ``SERVER_PROTOCOL = "HTTP/2.0"``): the connection is shared."""
    return str(environ.get("SERVER_PROTOCOL", "")).startswith("HTTP/2")


def http2_refusal(environ: Dict[str, Any], headers: Optional[Mapping[str, str]] = None) -> Optional[Response]:
    """The answer of every stream response under gunicorn's own HTTP/2 (``None`` elsewhere): a
    505 that says what to do, with ``headers`` (a stream's CORS headers) added."""
    if not http2(environ):
        return None
    # 505 is final for EventSource: no reconnect loop against a server that cannot serve it.
    logger.error(HTTP2_REFUSAL)
    sent = {**(headers or {}), "Cache-Control": "no-store"}
    return Response(HTTP2_REFUSAL + "\n", 505, sent, mimetype="text/plain")


def raw_socket(environ: Dict[str, Any]) -> Optional[socket.socket]:
    """The connection's socket under gunicorn's gevent worker, else ``None`` (also under
    HTTP/2, where the connection belongs to every stream of the browser).

    gevent's socket wraps a non-blocking ``_socket.socket`` that is not tied to the hub: it can
    be watched, peeked at and shut down from any greenlet without blocking.
    """
    if not gevent_active() or http2(environ):
        return None
    return getattr(environ.get("gunicorn.socket"), "_sock", None)


def tls_layer(environ: Dict[str, Any]) -> Any:
    """The TLS layer of the connection when gunicorn serves TLS itself (``--certfile``), else
    ``None``: the ``_ssl`` object of the connection's ``ssl.SSLSocket``."""
    return getattr(environ.get("gunicorn.socket"), "_sslobj", None)


def watch_disconnect(sock: socket.socket, on_gone: Callable[..., None], *args: Any, tls: Any = None) -> Any:
    """Call ``on_gone(*args)`` as soon as the peer closes ``sock``: a FIN, or, with ``tls``
    (from ``tls_layer``), a TLS close_notify. Returns the watcher, for ``unwatch``. No
    greenlet and no closure: one libev watcher per connection."""
    import gevent

    watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
    if tls is not None:
        watcher.start(_readable_tls, watcher, tls, on_gone, *args)
    else:
        watcher.start(_readable, watcher, sock, on_gone, *args)
    return watcher


def _readable(watcher: Any, sock: socket.socket, on_gone: Callable[..., None], *args: Any) -> None:
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    watcher.stop()  # drops the callback and its arguments
    # Bytes from the client belong to the server (a pipelined request): leave them be.
    if not data:
        on_gone(*args)


def _readable_tls(watcher: Any, tls_object: Any, on_gone: Callable[..., None], *args: Any) -> None:
    # Under TLS a client that leaves first sends a close_notify alert: bytes, which a peek at the
    # socket cannot tell from a request (TLS 1.3 hides the record type). The TLS layer can:
    # reading through it turns close_notify into SSLZeroReturnError, a bare FIN into an
    # SSLEOFError, and a key update into "want more", with nothing read.
    try:
        data = tls_object.read(1)
    except ssl.SSLWantReadError:
        return
    except (ssl.SSLError, OSError):
        data = b""
    watcher.stop()
    # A byte of application data would be a pipelined request, which no browser sends while a
    # response streams; it is dropped, and the server's next read sees a broken request.
    if not data:
        on_gone(*args)


def unwatch(*watchers: Any) -> None:
    """Stop ``watch_disconnect``, ``watch_send`` or ``guard`` watchers for good (``None``: none)."""
    for watcher in watchers:
        if watcher is not None:
            watcher.stop()
            watcher.close()


def shutdown(sock: socket.socket, how: int) -> None:
    """``sock.shutdown(how)``, ignoring a connection that is already gone.

    ``SHUT_RDWR`` unblocks a write stuck on a client that stopped reading; ``SHUT_RD`` makes
    the server close the connection once the response is complete, so the browser's reconnect
    opens a new one (to a live worker) instead of reusing this one.
    """
    try:
        sock.shutdown(how)
    except OSError:
        pass


def abort(sock: socket.socket) -> None:
    """Cut ``sock`` so that its close resets the connection: ``SO_LINGER`` (on, 0 s) makes the
    kernel drop what is still queued for the client and send a RST, instead of holding the
    data (megabytes for a client that stopped reading) until the client reads it or TCP gives
    up. The shutdown wakes a write stuck on the client; gunicorn then closes the socket."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    except OSError:
        pass
    shutdown(sock, socket.SHUT_RDWR)


def limit_send_buffer(sock: socket.socket, size: int) -> None:
    """Cap the kernel's send buffer of ``sock`` at ``size`` bytes (``SO_SNDBUF``; Linux counts
    twice that with its bookkeeping). Left alone, Linux grows it up to ``tcp_wmem``'s maximum
    (4 MB) for a client that stops reading, so a thousand stalled clients would pin gigabytes
    of kernel memory, and the memory pressure would slow every connection of the machine."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        pass


def release_free_memory() -> None:
    """Give memory the process freed back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Events of kilobytes live outside Python's small-object allocator, and what
    glibc frees between live blocks stays in the process's RSS until trimmed."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _find_malloc_trim()
_LINGER_ZERO = struct.pack("ii", 1, 0)
#: Seconds between two checks of a direct stream's send deadline, at most: with ``watch_send``'s
#: eight checks per timeout alone, a 10 s timeout would be checked every 1.25 s.
SEND_CHECK_PERIOD = 0.5
_OUTQ = bytearray(4)
#: ``struct tcp_info`` up to ``tcpi_bytes_acked`` (Linux 4.1+), a 64-bit field at offset 120.
_TCP_INFO_LENGTH = 128
_TCP_INFO = getattr(socket, "TCP_INFO", 11)


def send_progress(sock: socket.socket) -> Optional[Tuple[int, int]]:
    """``(unacknowledged, acknowledged)``: bytes written to ``sock`` that the client has not
    acknowledged yet, and bytes it has acknowledged since the connection opened. ``(0, 0)``
    when nothing waits (one system call); ``None`` where the kernel does not tell (not Linux,
    or the socket is closed)."""
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _OUTQ)  # SIOCOUTQ on a TCP socket
        waiting = int.from_bytes(_OUTQ, sys.byteorder)
        if not waiting:
            return 0, 0
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LENGTH)
    except (OSError, ValueError):
        return None
    if len(info) < _TCP_INFO_LENGTH:
        return None
    return waiting, struct.unpack_from("Q", info, 120)[0]


class SendDeadline:
    """The write deadline of one connection: ``passed`` is true once what was waiting in its
    send queue ``timeout`` seconds ago (or more) has still not been acknowledged. Asked with
    each write or heartbeat, that is true of a client that stopped reading or vanished,
    however quiet its stream."""

    __slots__ = ("timeout", "target", "since")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: The count of acknowledged bytes at which what waited at ``since`` has drained
        #: (-1: nothing waits).
        self.target = -1
        self.since = 0.0

    def passed(self, sock: socket.socket, now: float) -> bool:
        progress = send_progress(sock)
        if progress is None:
            self.target = -1  # nothing to go by: no wait is kept (``due`` is never)
            return False
        waiting, acked = progress
        if self.target >= 0 and (not waiting or acked >= self.target):
            self.target = -1  # drained: a later write starts a new wait
        if self.target < 0:
            if waiting:
                self.target = acked + waiting
                self.since = now
            return False
        return now - self.since >= self.timeout

    def behind(self, now: float) -> bool:
        """Whether what waited at an earlier ``passed`` (at ``since``) still waits at ``now``."""
        return self.target >= 0 and self.since < now

    def due(self) -> float:
        """When ``passed`` turns true unless what waits drains (``inf`` while nothing waits)."""
        return self.since + self.timeout if self.target >= 0 else math.inf


def guard(
    environ: Dict[str, Any],
    on_gone: Callable[[], None],
    on_timed_out: Callable[[], None],
    send_timeout: Optional[float],
    send_buffer: Optional[int],
) -> Tuple[Any, Any]:
    """For a stream the hub's ticker does not watch (``sse.response``, a resumable reader):
    call ``on_gone`` when the client leaves (a TLS close_notify too), cap the send buffer, and
    reset the connection and call ``on_timed_out`` once sent data has not drained within
    ``send_timeout``. The two watchers, for ``unwatch``; ``None`` without a socket or timeout."""
    sock = raw_socket(environ)
    if sock is None:
        return None, None
    watcher = watch_disconnect(sock, on_gone, tls=tls_layer(environ))
    if send_buffer is not None:
        limit_send_buffer(sock, send_buffer)
    return watcher, None if send_timeout is None else watch_send(sock, send_timeout, on_timed_out)


def watch_send(sock: socket.socket, timeout: float, on_cut: Callable[..., None], *args: Any) -> Any:
    """Reset ``sock`` (``abort``) and call ``on_cut(*args)`` once its sent data has not drained
    within ``timeout`` seconds (``SendDeadline``). For a stream that has no hub ticker to do
    it: its own write may be the one stuck. One libev timer checks eight times per timeout, at
    most every ``SEND_CHECK_PERIOD``, and a cut comes at most two checks late (one second with
    the default timeout); no greenlet. Returns the watcher, for ``unwatch``."""
    import gevent

    period = min(timeout / 8, SEND_CHECK_PERIOD)
    timer = gevent.get_hub().loop.timer(period, period)
    timer.start(_check_send, timer, sock, SendDeadline(timeout), on_cut, *args)
    return timer


def _check_send(
    timer: Any, sock: socket.socket, deadline: SendDeadline, on_cut: Callable[..., None], *args: Any
) -> None:
    if deadline.passed(sock, time.monotonic()):
        timer.stop()  # drops the callback and its arguments
        abort(sock)
        on_cut(*args)


def server_response(caller: Optional[FrameType], response: Any) -> Any:
    """``response``, the object whose ``start_response`` the app was called with, if it is
    gunicorn's response to a plain HTTP/1.x request (no TLS layer, no ``uwsgi`` protocol, no
    ``Content-Length``, not ``HEAD``) and ``caller``, the frame that asks a stream's body for a
    chunk, is gunicorn's async worker writing each chunk to the socket as it comes
    (``AsyncWorker.handle_request``, the gevent worker's), with nothing between them (a WSGI
    middleware that wraps the body could change it). Else ``None``.

    Such a body may also write to the socket itself, between two of its chunks: gunicorn is
    then waiting for the next one, with nothing of its own on the way. The response tells
    the framing (``chunked``) and counts what was sent (``sent``, for the access log).
    """
    try:
        from gunicorn.http.wsgi import Response
        from gunicorn.workers.base_async import AsyncWorker
    except ImportError:  # not under gunicorn
        return None
    if (
        caller is None
        or caller.f_code is not AsyncWorker.handle_request.__code__
        or type(response) is not Response
        or getattr(response.cfg, "protocol", "http") != "http"
        or response.response_length is not None
        or response.req.method == "HEAD"
        or isinstance(response.sock, ssl.SSLSocket)
        or getattr(response.sock, "_sock", None) is None
    ):
        return None
    return response


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


def check_server(environ: Dict[str, Any]) -> None:
    """Warn (once per process) when streams would block the server."""
    software = str(environ.get("SERVER_SOFTWARE", ""))
    if (
        software.startswith("gunicorn")
        and not environ.get("wsgi.multithread")
        and not gevent_active()
        and "eventlet" not in sys.modules
    ):
        _warn_once(
            "sync",
            "flask-sse-ext: this gunicorn worker is synchronous, so one open stream blocks the "
            "whole worker. Run gunicorn with '-k gevent' (see gunicorn.conf.py).",
        )


def sibling_workers() -> int:
    """How many processes the parent of this one has started (Linux); 1 when unknown."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as children:
            return max(1, len(children.read().split()))
    except OSError:
        return 1


def warn_memory_broker(environ: Dict[str, Any]) -> None:
    """The in-process broker cannot reach the streams of other worker processes."""
    if str(environ.get("SERVER_SOFTWARE", "")).startswith("gunicorn") and sibling_workers() > 1:
        _warn_once(
            "memory",
            "flask-sse-ext: several gunicorn workers share no in-process broker: an event "
            "published in one worker never reaches streams in the others. Set SSE_REDIS_URL, "
            "or run one worker.",
        )


def process_name() -> str:
    """This process as it names itself to other processes: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"
