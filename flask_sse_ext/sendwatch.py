"""A connection's sent data, as the kernel tells it: how much the client has not acknowledged
yet (``send_progress``), the write deadline built on it (``SendDeadline``, ``watch_send``),
which is how a stalled or half-open client is found, and the reset (``abort``) that cuts such
a client and frees its kernel buffers at once.
"""

from __future__ import annotations

import fcntl
import math
import socket
import struct
import sys
import termios
import time
from typing import Any, Callable, Optional, Tuple

__all__ = [
    "shutdown",
    "abort",
    "limit_send_buffer",
    "send_progress",
    "SendDeadline",
    "SEND_CHECK_PERIOD",
    "check_period",
    "watch_send",
]

_LINGER_ZERO = struct.pack("ii", 1, 0)
#: Seconds between two checks of a direct stream's send deadline, at most: with eight checks
#: per timeout alone, the default 10 s timeout would be checked every 1.25 s.
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
        """Asked right after ``passed(sock, now)``: whether what waited at an earlier look (at
        ``since``) still waits."""
        return self.target >= 0 and self.since < now

    def due(self) -> float:
        """When ``passed`` turns true unless what waits drains (``inf`` while nothing waits)."""
        return self.since + self.timeout if self.target >= 0 else math.inf


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


def check_period(timeout: float) -> float:
    """Seconds between two checks of a direct stream's send deadline: eight per timeout, at
    most ``SEND_CHECK_PERIOD``."""
    return min(timeout / 8, SEND_CHECK_PERIOD)


def watch_send(sock: socket.socket, timeout: float, on_cut: Callable[..., None], *args: Any) -> Any:
    """Reset ``sock`` (``abort``) and call ``on_cut(*args)`` once its sent data has not drained
    within ``timeout`` seconds (``SendDeadline``). For a stream that has no hub ticker to do
    it: its own write may be the one stuck. One libev timer checks every ``check_period``, and
    a cut comes at most two checks late; no greenlet. Returns the watcher, for
    ``serving.unwatch``."""
    import gevent

    period = check_period(timeout)
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
