"""What a stream needs to know about the server it runs in.

Under WSGI the only sign that a client left is usually a failed write, found at the next
heartbeat. Under gunicorn's gevent worker we can do better: the connection's socket is in the
environ, and a read watcher on it sees the client's FIN (or TLS close_notify) at once, without
a greenlet per stream. What the kernel tells of the data sent on it is in ``sendwatch``.

All of it assumes the connection carries this one response: under HTTP/2 (``http2``) it is
shared by every stream of a browser, and nothing here touches it: every stream response (channel,
direct, resumable, job) answers ``http2_refusal`` instead.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import ssl
import sys
from types import FrameType
from typing import Any, Callable, Dict, Mapping, Optional, Set, Tuple

from flask import Response

from .sendwatch import limit_send_buffer, watch_send

__all__ = [
    "gevent_active",
    "raw_socket",
    "tls_layer",
    "watch_disconnect",
    "unwatch",
    "release_free_memory",
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
