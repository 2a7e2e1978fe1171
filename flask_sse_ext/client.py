"""One open stream's inbox (``Client``), why a stream ends early, and a process's counters.

A client's queue is bounded in events and in bytes: one that fills is cut (its stream ends and
the browser reconnects with ``Last-Event-ID``), which bounds a worker's memory per client. A
cut client's connection is reset, which frees its kernel buffers at once.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import List, Optional, Protocol, Tuple

from .brokers.base import Message
from .conflation import replace_keyed
from .sendwatch import SendDeadline, abort

__all__ = [
    "Client",
    "Stats",
    "Writer",
    "LAGGED",
    "GONE",
    "SHUTDOWN",
    "RESYNC",
    "EXPIRED",
    "TIMED_OUT",
    "RESET",
]

logger = logging.getLogger(__name__)

#: Why a stream ended early.
LAGGED = "lagged"
GONE = "gone"
SHUTDOWN = "shutdown"
RESYNC = "resync"
EXPIRED = "expired"
TIMED_OUT = "timed_out"
#: Ends whose connection is reset: what was not sent is dropped with it.
RESET = (LAGGED, TIMED_OUT, GONE)


class Stats:
    """Counters of one process, reported by ``SSE.stats()``."""

    __slots__ = ("published", "delivered", "pushed", "replayed", "lagged", "timed_out")

    def __init__(self) -> None:
        #: Events this process published.
        self.published = 0
        #: Events written to streams live (one per event per stream).
        self.delivered = 0
        #: Of ``delivered``, those written to the socket by the greenlet that delivers the
        #: event, with no switch to the stream's own.
        self.pushed = 0
        #: Events written to streams from history, on reconnects.
        self.replayed = 0
        #: Streams cut because their client could not keep up (its queue was full).
        self.lagged = 0
        #: Streams cut because what was sent to them did not drain within the send timeout.
        self.timed_out = 0


class Writer(Protocol):
    """A stream that can be written to from any greenlet while it waits (``Client.parked``)."""

    def push(self, message: Message) -> None:
        """Write ``message`` now, without blocking; what the socket does not take at once
        goes to ``Client.pending``, with ``wake`` set."""

    def beat(self) -> None:
        """Write a heartbeat the same way."""


class Client:
    """One open stream's inbox. ``put`` never blocks; the stream drains ``queue`` on ``wake``,
    or, while it waits with nothing queued (``parked``), ``put`` writes to it directly."""

    __slots__ = (
        "channels",
        "queue",
        "wake",
        "maxsize",
        "maxbytes",
        "queued_bytes",
        "closed",
        "sock",
        "stats",
        "active",
        "quiet_since",
        "beat_due",
        "deadline",
        "send_deadline",
        "behind",
        "parked",
        "pending",
    )

    def __init__(
        self,
        channels: Tuple[str, ...],
        maxsize: int,
        sock: Optional[socket.socket] = None,
        stats: Optional[Stats] = None,
        maxbytes: Optional[int] = None,
    ) -> None:
        self.channels = channels
        # A list, not a deque: an empty deque costs 600 bytes, and the stream takes the whole
        # list at once (``Hub.take``), under the lock that ``put`` runs under. It lives as long
        # as the client: a fresh list per event would outlive young garbage collections and,
        # with thousands of clients, trigger a full collection every few dozen events.
        self.queue: List[Message] = []
        # Looked up at call time: under gevent's monkey patching this is gevent's Event.
        self.wake = threading.Event()
        self.maxsize = maxsize
        #: The bound in bytes of what waits in ``queue`` (``None``: none); a queue always
        #: takes one event, whatever its size.
        self.maxbytes = maxbytes
        self.queued_bytes = 0
        #: ``None`` while open, else why it must end (``lagged``, ``timed_out``, ``gone``,
        #: ``shutdown``, ``resync``, ``expired``).
        self.closed: Optional[str] = None
        #: The connection, reset when the client is cut: that unblocks a write stuck on a
        #: reader that stopped, and frees what the kernel holds for it.
        self.sock = sock
        self.stats = stats
        #: Heartbeat bookkeeping, kept by the hub's ticker: the stream sets ``active`` when it
        #: writes; the ticker sets ``beat_due`` after a heartbeat interval without writes.
        self.active = False
        self.quiet_since = 0.0
        self.beat_due = False
        #: ``time.monotonic()`` at which the stream must end (age limit, token expiry).
        self.deadline: Optional[float] = None
        #: The send timeout's bookkeeping, made and asked by the hub's ticker.
        self.send_deadline: Optional[SendDeadline] = None
        #: Set by the ticker while data sent to the client waits unacknowledged from one of its
        #: looks to the next. When it is set, the ticker moves the client last in the fan-out,
        #: behind the streams that keep up; it stays there once it catches up.
        self.behind = False
        #: The stream, while it waits for ``wake`` and may be written to directly; else ``None``.
        self.parked: Optional[Writer] = None
        #: The rest of a direct write that the socket did not take, for the stream to send
        #: before anything else.
        self.pending: Optional[bytes] = None

    def put(self, message: Message) -> None:
        """Write ``message`` to the stream now if it waits with nothing before it, else
        ``enqueue`` it."""
        if self.parked is not None and self.pending is None and not self.queue and self.closed is None:
            try:
                self.parked.push(message)
            except Exception:  # a bug: this stream ends, the fan-out to the others goes on
                logger.exception("A direct write failed; the stream ends")
                self.close(GONE)
        else:
            self.enqueue(message)

    def enqueue(self, message: Message) -> None:
        if self.closed is not None:
            return
        queue = self.queue
        size = len(message.frame)
        if message.key is not None and queue:
            # A newer event of the same key replaces one still waiting (conflation).
            self.queued_bytes -= replace_keyed(queue, message)
        if len(queue) >= self.maxsize or (
            queue and self.maxbytes is not None and self.queued_bytes + size > self.maxbytes
        ):
            self.cut(LAGGED)
            return
        self.queued_bytes += size
        queue.append(message)
        if len(queue) == 1:
            # Set by the first put since the stream last took its queue: a stream clears the
            # event before it takes, so later puts find it set, or their messages taken.
            self.wake.set()

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self.wake.set()

    def cut(self, reason: str) -> None:
        """End the stream at once for ``reason`` (``lagged`` or ``timed_out``), counted, with
        its connection reset: the client reconnects and replays from its ``Last-Event-ID``."""
        if self.closed is not None:
            return
        self.close(reason)
        if self.stats is not None:
            if reason == LAGGED:
                self.stats.lagged += 1
            else:
                self.stats.timed_out += 1
        if self.sock is not None:
            abort(self.sock)
