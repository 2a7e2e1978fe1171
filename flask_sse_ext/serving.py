"""What a stream needs to know about the server it runs in.

Under WSGI the only sign that a client left is usually a failed write, found at the next
heartbeat. Under gunicorn's gevent worker we can do better: the connection's socket is in the
environ, and a read watcher on it sees the client's FIN at once, without a greenlet per stream.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, Callable, Dict, Optional, Set


__all__ = [
    "gevent_active",
    "watch_disconnect",
    "socket_abort",
    "socket_end_reads",
    "check_server",
    "sibling_workers",
]

logger = logging.getLogger(__name__)
_warned: Set[str] = set()


def gevent_active() -> bool:
    """True when gevent has patched ``socket`` in this process (gunicorn ``-k gevent``)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def _raw_socket(environ: Dict[str, Any]) -> Any:
    sock = environ.get("gunicorn.socket")
    # gevent's socket wraps a non-blocking ``_socket.socket`` that is not tied to the hub.
    return getattr(sock, "_sock", None) if gevent_active() else None


def watch_disconnect(
    environ: Dict[str, Any], on_gone: Callable[[], None]
) -> Optional[Callable[[], None]]:
    """Call ``on_gone`` as soon as the connection is closed by the peer.

    Returns a function that stops watching, or ``None`` where the server offers no socket.
    """
    raw = _raw_socket(environ)
    if raw is None:
        return None
    import gevent

    watcher = gevent.get_hub().loop.io(raw.fileno(), 1)

    def readable() -> None:
        try:
            data = raw.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        watcher.stop()
        # Bytes from the client belong to the server (a pipelined request): leave them be.
        if not data:
            on_gone()

    def stop() -> None:
        watcher.stop()
        watcher.close()

    watcher.start(readable)
    return stop


def _shutdown(environ: Dict[str, Any], how: int) -> Optional[Callable[[], None]]:
    raw = _raw_socket(environ)
    if raw is None:
        return None

    def shutdown() -> None:
        try:
            raw.shutdown(how)
        except OSError:
            pass

    return shutdown


def socket_abort(environ: Dict[str, Any]) -> Optional[Callable[[], None]]:
    """A function that shuts the connection down, unblocking a write to a client that stopped
    reading; ``None`` where the server offers no socket."""
    return _shutdown(environ, socket.SHUT_RDWR)


def socket_end_reads(environ: Dict[str, Any]) -> Optional[Callable[[], None]]:
    """A function that stops reading from the connection, so the server closes it once the
    response is complete: the browser's reconnect then opens a new connection (to a live
    worker) instead of reusing this one. ``None`` where the server offers no socket."""
    return _shutdown(environ, socket.SHUT_RD)


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
