"""The in-process broker: the zero-setup default for one process, with real history and replay."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Tuple

from .base import UNKNOWN, Broker, Cursor, Message, Position, Replay, parse_position
from .memory_logs import MemoryLogs

__all__ = ["MemoryBroker"]

logger = logging.getLogger(__name__)


class _Channel:
    __slots__ = ("messages", "by_id", "dropped")

    def __init__(self, floor: Position) -> None:
        self.messages: Deque[Message] = deque()
        self.by_id: Dict[str, Message] = {}
        # Events at or before this position are no longer kept.
        self.dropped = floor


class MemoryBroker(MemoryLogs, Broker):
    """Keeps the last ``history_size`` events of each channel in this process.

    Events published in another process (a second gunicorn worker, a CLI command) never reach
    it: use the Redis broker there. Positions continue the wall clock, so a cursor handed out
    before a restart reads as older than this broker's history and is reported as missed.
    As on Redis, a position is a cursor only if it is an event's or a head this broker
    reported; any other (``1-0``, ``0-0``, one between two events) is reported as missed.

    ``publish`` stores the event and returns: one dispatcher (a greenlet under gevent) hands
    the events to the streams in publish order, so a view publishing to a channel of 10,000
    streams does not pay for the fan-out.
    """

    def __init__(self, history_size: int) -> None:
        MemoryLogs.__init__(self)
        self.history_size = history_size
        self._lock = threading.Lock()
        self._channels: Dict[str, _Channel] = {}
        #: Subscribed channels, each with the newest position published when it was
        #: subscribed (no event of the channel up to it was queued for delivery).
        self._subscribed: Dict[str, Position] = {}
        self._deliver: Optional[Callable[[Message], None]] = None
        #: Published, not yet handed to the dispatcher, in position order.
        self._pending: List[Message] = []
        self._wakeup = threading.Event()
        #: Held while a batch is delivered: ``flush`` and the dispatcher never interleave.
        self._delivering = threading.Lock()
        #: The newest position the dispatcher has taken: every later event is still to come.
        self._dispatched: Position = (0, 0)
        self._closed = False
        # Nothing from before this broker existed is known: that is the floor of every channel.
        self._floor: Position = (int(time.time() * 1000), 0)
        self._last = self._floor
        #: Claimed keys (single-use tickets) and when they may be forgotten (monotonic), with
        #: the same as a heap by expiry, so that forgetting costs only the expired ones.
        self._claims: Dict[str, float] = {}
        self._expiries: List[Tuple[float, str]] = []

    def start(self, deliver: Callable[[Message], None], lost: Callable[[str], None]) -> None:
        self._deliver = deliver  # nothing is ever lost in one process
        threading.Thread(target=self._dispatch, args=(deliver,), name="sse-dispatcher", daemon=True).start()

    def _dispatch(self, deliver: Callable[[Message], None]) -> None:
        while True:
            self._wakeup.wait()
            if not self._deliver_pending(deliver):
                return

    def _deliver_pending(self, deliver: Callable[[Message], None]) -> bool:
        with self._delivering:
            with self._lock:
                self._wakeup.clear()
                if self._closed:
                    return False
                batch, self._pending = self._pending, []
                if batch:
                    self._dispatched = batch[-1].position
            for message in batch:
                # Read again now: nobody to deliver to if the last stream left meanwhile.
                if message.channel in self._subscribed:
                    try:
                        deliver(message)
                    except Exception:  # one failed delivery must not stop the others
                        logger.exception("Delivering %r failed", message)
        return True

    def flush(self) -> None:
        if self._deliver is not None:
            self._deliver_pending(self._deliver)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wakeup.set()

    def subscribe(self, channel: str) -> None:
        with self._lock:
            self._subscribed.setdefault(channel, self._last)

    def unsubscribe(self, channel: str) -> None:
        with self._lock:
            self._subscribed.pop(channel, None)

    @property
    def subscriptions(self) -> int:
        return len(self._subscribed)

    def _next_position(self) -> Position:
        ms = int(time.time() * 1000)
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return self._last

    def publish(
        self, channel: str, body: bytes, id: Optional[str] = None, key: Optional[str] = None
    ) -> Message:
        # Positions are taken and queued under one lock: the dispatcher sees them in order.
        with self._lock:
            message = Message(channel, self._next_position(), id, body, key)
            if self.history_size:
                history = self._channels.get(channel)
                if history is None:
                    history = self._channels[channel] = _Channel(self._floor)
                history.messages.append(message)
                if id is not None:
                    history.by_id[id] = message
                while len(history.messages) > self.history_size:
                    old = history.messages.popleft()
                    history.dropped = old.position
                    if history.by_id.get(old.id) is old:
                        del history.by_id[old.id]
            else:
                self._floor = message.position
            if self._deliver is not None and channel in self._subscribed:
                self._pending.append(message)
                if len(self._pending) == 1:
                    self._wakeup.set()
        return message

    def live_position(self, channel: str) -> Optional[Position]:
        # Called after ``subscribe``: what was queued and not yet taken by the dispatcher
        # reaches the channel's streams live; nothing it took earlier, nor anything from
        # before the channel was subscribed (never queued), will.
        with self._lock:
            return max(self._dispatched, self._subscribed.get(channel, self._last))

    def replay(self, channel: str, cursor: Cursor) -> Replay:
        with self._lock:
            history = self._channels.get(channel)
            if history is None:
                head = floor = self._floor
                messages: Deque[Message] = deque()
            else:
                floor = history.dropped
                messages = history.messages
                head = messages[-1].position if messages else floor
            if cursor is None:
                return Replay([], head, False)
            if cursor is UNKNOWN:
                return Replay([], head, True)
            if isinstance(cursor, str):
                position = parse_position(cursor)
                if position is None and history is not None:
                    known = history.by_id.get(cursor)
                    position = None if known is None else known.position
                if position is None:
                    return Replay([], head, True)
            else:
                position = cursor
            if position > head:
                # Not a position this broker handed out: its history is unknown.
                return Replay([], head, True)
            if position < floor:
                # Events after the cursor were dropped: the client must start afresh.
                return Replay([], head, True)
            newer = []
            for message in reversed(messages):
                if message.position <= position:
                    if message.position != position:
                        # Between two events: no event has it, so it was never handed out.
                        return Replay([], head, True)
                    break
                newer.append(message)
            else:
                if position != floor:
                    return Replay([], head, True)
            newer.reverse()
            return Replay(newer, head, False)

    def claim_once(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            expiries = self._expiries
            while expiries and expiries[0][0] <= now:
                until, old = heapq.heappop(expiries)
                if self._claims.get(old) == until:  # not claimed again since
                    del self._claims[old]
            if key in self._claims:
                return False
            self._claims[key] = now + ttl
            heapq.heappush(expiries, (now + ttl, key))
            return True
