"""Per-process fan-out: one broker subscription per channel, one bounded queue per client.

The hub hands every client of a channel the same ``Message`` object, so an event is encoded
once however many clients read it. A client whose queue is full (in events or in bytes) is cut
(its stream ends and the browser reconnects with ``Last-Event-ID``), which bounds a worker's
memory per client; so is one whose sent data has not drained within the send timeout (a
client that stopped reading, or a half-open connection that no longer acknowledges even
heartbeats). A cut client's connection is reset, which frees its kernel buffers at once.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Callable, Dict, List, Optional, Set, Tuple

from .brokers.base import Broker, Message
from .client import EXPIRED, RESYNC, SHUTDOWN, TIMED_OUT, Client, Stats
from .pace import Pace
from .sendwatch import SendDeadline
from .serving import process_name, release_free_memory

__all__ = ["Hub", "shutdown_all"]

logger = logging.getLogger(__name__)

#: Every hub of this process, for ``shutdown_all``.
_hubs: "weakref.WeakSet[Hub]" = weakref.WeakSet()

#: Seconds between two reports of this process's streams per channel to a shared broker;
#: a report counts for three of them, so a process that dies drops out by itself.
PRESENCE_INTERVAL = 5.0

#: The most a stream writes in one chunk when several events wait (a larger event goes alone).
CHUNK_BYTES = 64 * 1024


class Hub:
    """Routes a broker's live messages to the clients of this process.

    One ticker (a greenlet under gevent) keeps time for every stream: it sends a heartbeat (or
    marks one due) on streams that wrote nothing for ``heartbeat`` seconds, ends streams past
    their deadline, and cuts streams whose sent data has not drained within ``send_timeout``
    seconds, so a stream waits on its wake-up event alone, with no timer of its own. A stream
    whose data it finds still waiting at its next look goes last in the fan-out, behind those
    that keep up. It also releases streams dropped unsent (``orphans``).

    Direct writes to a stream's socket (``Client.parked``) are made under the hub's lock
    only, so that two of them never interleave.
    """

    def __init__(
        self,
        broker: Broker,
        stats: Optional[Stats] = None,
        heartbeat: float = 15.0,
        send_timeout: Optional[float] = None,
    ) -> None:
        self.broker = broker
        self.heartbeat = heartbeat
        self.send_timeout = send_timeout
        self._lock = threading.Lock()
        #: Each channel's clients in the order the fan-out writes to them: as they came, but
        #: a client that fell behind moved last (``_last``). A dict: ordered, O(1) removal.
        self._clients: Dict[str, Dict[Client, None]] = {}
        self._all: Set[Client] = set()
        self.stats = Stats() if stats is None else stats
        #: Set by ``shutdown``: streams opened after it end right after their opening chunk.
        self.closing = False
        self.pace = Pace(time.monotonic())
        #: ``(client, on_close)`` of streams collected unsent, for the ticker to ``release``:
        #: a finalizer must not switch greenlets (it may run inside a direct write).
        self.orphans: List[Tuple[Client, Optional[Callable[[Optional[str]], None]]]] = []
        broker.start(self.deliver, self.resync)
        # From the start, so that a shared broker hears of this process before its first stream.
        threading.Thread(target=self._tick, name="sse-ticker", daemon=True).start()
        _hubs.add(self)

    def attach(self, client: Client) -> None:
        """Start routing ``client``'s channels to it, subscribing the broker to new ones."""
        client.quiet_since = time.monotonic()
        with self._lock:
            if self.closing:
                client.close(SHUTDOWN)
            self._all.add(client)
            for channel in client.channels:
                clients = self._clients.get(channel)
                if clients is None:
                    clients = self._clients[channel] = {}
                    self.broker.subscribe(channel)
                clients[client] = None

    def detach(self, client: Client) -> None:
        """Stop routing to ``client``; unsubscribe channels that no local client reads."""
        with self._lock:
            if client not in self._all:
                return
            self._all.discard(client)
            for channel in client.channels:
                clients = self._clients.get(channel)
                if clients is None:
                    continue
                clients.pop(client, None)
                if not clients:
                    del self._clients[channel]
                    self.broker.unsubscribe(channel)

    def release(self, client: Client, on_close: Optional[Callable[[Optional[str]], None]]) -> None:
        """The end of a stream: ``detach`` it, then call ``on_close`` with why it ended."""
        self.detach(client)
        if on_close is not None:
            on_close(client.closed)

    def take(self, client: Client) -> List[Message]:
        """What is queued for ``client``, oldest first: everything, or, past ``CHUNK_BYTES``,
        the oldest events up to that size (at least one), with the wake-up left set for the
        rest. A stream writes what it takes as one chunk, and a client that stopped reading
        holds its chunk (and the server's copy of it) until it is cut: that must not be up
        to a whole queue per client."""
        with self._lock:
            queue = client.queue
            if client.queued_bytes <= CHUNK_BYTES:
                taken = queue[:]
                queue.clear()
                client.queued_bytes = 0
                return taken
            size = count = 0
            for message in queue:
                size += len(message.frame)
                count += 1
                if size >= CHUNK_BYTES:
                    break
            taken = queue[:count]
            del queue[:count]
            client.queued_bytes -= size
            client.wake.set()
        return taken

    def deliver(self, message: Message) -> None:
        started = time.thread_time()
        with self._lock:
            clients = self._clients.get(message.channel)
            if clients and self.pace.direct:
                for client in clients:
                    client.put(message)
            elif clients:
                for client in clients:
                    client.enqueue(message)
        message.chunk = None  # made for this fan-out; history keeps the frame alone
        self.pace.delivered(time.thread_time() - started, time.monotonic())

    def _tick(self) -> None:
        # Heartbeats are kept to within a second: a scan of every client costs a few
        # milliseconds per 10,000 streams (one more system call each for the send timeout). A
        # deadline due before the next scan gets a scan of its own, on time, and so does a
        # send deadline. The scan that first sees a stream's data waiting comes at most one
        # period after it was written (hence eight periods per send timeout), and the stream
        # is cut at most that late. (Counting scans would not do: a sleep may end a little
        # early, by the event loop's clock.)
        period = min(self.heartbeat / 2, 1.0)
        send_timeout = self.send_timeout
        stats = self.stats
        cuts = trimmed = 0
        if send_timeout is not None:
            period = min(period, send_timeout / 8)
        pause = period
        next_report = 0.0
        reporter: Optional[threading.Thread] = None
        while True:
            time.sleep(pause)
            now = time.monotonic()
            soonest = now + period
            if self.broker.shared and now >= next_report and (reporter is None or not reporter.is_alive()):
                # In a thread of its own: a slow Redis must not hold back heartbeats.
                next_report = now + PRESENCE_INTERVAL
                reporter = threading.Thread(target=self._report, name="sse-presence", daemon=True)
                reporter.start()
            if self.orphans:
                orphans, self.orphans = self.orphans, []
                for orphan in orphans:
                    threading.Thread(
                        target=self.release, args=orphan, name="sse-release", daemon=True
                    ).start()
            with self._lock:
                clients = list(self._all)
            for done, client in enumerate(clients):
                if done % 500 == 499:
                    time.sleep(0)  # let the streams run: 10,000 clients take milliseconds
                deadline = client.deadline
                if deadline is not None and now >= deadline:
                    client.close(EXPIRED)
                    continue
                if deadline is not None and deadline < soonest:
                    soonest = deadline
                if send_timeout is not None and _stalled(client, now, send_timeout):
                    client.cut(TIMED_OUT)
                    continue
                send_deadline = client.send_deadline
                if send_deadline is not None and (send_deadline.target >= 0 or client.behind):
                    behind = send_deadline.behind(now)
                    if behind and not client.behind:
                        self._last(client)
                    client.behind = behind
                    soonest = min(soonest, send_deadline.due())
                if client.active:
                    client.active = False
                    client.quiet_since = now
                elif now - client.quiet_since >= self.heartbeat:
                    client.quiet_since = now
                    with self._lock:
                        writer = client.parked
                        if writer is not None and client.pending is None and client.closed is None:
                            writer.beat()
                            continue
                    client.beat_due = True
                    client.wake.set()
            # Cut clients leave their chunks and buffers to the allocator, in holes it keeps:
            # once the cuts stop, give the free memory back to the system.
            if cuts != stats.lagged + stats.timed_out:
                cuts = stats.lagged + stats.timed_out
            elif trimmed != cuts:
                trimmed = cuts
                release_free_memory()
            pause = max(0.01, soonest - time.monotonic())

    def _last(self, client: Client) -> None:
        """Move ``client`` to the end of its channels' fan-out: writing an event into the kernel
        buffers of clients that stopped reading costs time (16 KB: about 10 µs each), which
        the clients that keep up must not wait for."""
        with self._lock:
            for channel in client.channels:
                clients = self._clients.get(channel)
                if clients is not None and client in clients:
                    del clients[client]
                    clients[client] = None

    def _report(self) -> None:
        with self._lock:
            counts = {channel: len(clients) for channel, clients in self._clients.items()}
        try:
            self.broker.report_presence(process_name(), counts, 3 * PRESENCE_INTERVAL)
        except Exception as exc:  # Redis may be down: the next report will do
            logger.info("Could not report presence: %r", exc)

    def channel_streams(self, channel: str) -> int:
        """Open streams of this process on ``channel``."""
        return len(self._clients.get(channel, ()))

    def resync(self, channel: str) -> None:
        """End the streams of ``channel``: the broker lost track of it (events may be missing),
        so each client reconnects and replays from its own ``Last-Event-ID``."""
        with self._lock:
            for client in self._clients.get(channel, ()):
                client.close(RESYNC)

    def shutdown(self) -> None:
        """End every open stream (after it sends what it has queued), and every later one."""
        self.broker.flush()  # what was published here goes out before the streams end
        with self._lock:
            self.closing = True
            for client in self._all:
                client.close(SHUTDOWN)

    @property
    def client_count(self) -> int:
        return len(self._all)

    @property
    def channel_count(self) -> int:
        return len(self._clients)


def _stalled(client: Client, now: float, timeout: float) -> bool:
    """Whether what ``client``'s connection had waiting ``timeout`` seconds ago (or more) has
    still not been acknowledged (``SendDeadline``). A heartbeat, written whenever nothing else
    is, keeps this true of a client that stopped reading or vanished, however quiet its
    channels."""
    if client.sock is None:  # no socket to ask (not gunicorn's gevent worker)
        return False
    if client.send_deadline is None:
        client.send_deadline = SendDeadline(timeout)
    return client.send_deadline.passed(client.sock, now)


def shutdown_all() -> None:
    """End every stream of this process (a worker that is stopping hands its clients over)."""
    for hub in list(_hubs):
        hub.shutdown()
