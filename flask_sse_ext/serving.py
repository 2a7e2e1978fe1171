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
    "raw_socket",
    "watch_disconnect",
    "unwatch",
    "shutdown",
    "check_server",
    "sibling_workers",
    "process_name",
]

logger = logging.getLogger(__name__)
_warned: Set[str] = set()


def gevent_active() -> bool:
    """True when gevent has patched ``socket`` in this process (gunicorn ``-k gevent``)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def raw_socket(environ: Dict[str, Any]) -> Optional[socket.socket]:
    """The connection's socket under gunicorn's gevent worker, else ``None``.

    gevent's socket wraps a non-blocking ``_socket.socket`` that is not tied to the hub: it can
    be watched, peeked at and shut down from any greenlet without blocking.
    """
    sock = environ.get("gunicorn.socket")
    return getattr(sock, "_sock", None) if gevent_active() else None


def watch_disconnect(sock: socket.socket, on_gone: Callable[..., None], *args: Any) -> Any:
    """Call ``on_gone(*args)`` as soon as the peer closes ``sock``; returns the watcher, for
    ``unwatch``. No greenlet and no closure: one libev watcher per connection."""
    import gevent

    watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
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


def unwatch(watcher: Any) -> None:
    """Stop a ``watch_disconnect`` watcher for good."""
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
