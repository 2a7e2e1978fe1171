"""The in-process broker: the zero-setup default for one process, with real history and replay."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, Optional, Set

from .base import UNKNOWN, Broker, Cursor, Message, Position, Replay, parse_position
from .memory_logs import MemoryLogs

__all__ = ["MemoryBroker"]


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
    """

    def __init__(self, history_size: int) -> None:
        MemoryLogs.__init__(self)
        self.history_size = history_size
        self._lock = threading.Lock()
        self._channels: Dict[str, _Channel] = {}
        self._subscribed: Set[str] = set()
        self._deliver: Optional[Callable[[Message], None]] = None
        # Nothing from before this broker existed is known: that is the floor of every channel.
        self._floor: Position = (int(time.time() * 1000), 0)
        self._last = self._floor
        #: Claimed keys (single-use tickets) and when they may be forgotten (monotonic).
        self._claims: Dict[str, float] = {}

    def start(self, deliver: Callable[[Message], None], lost: Callable[[str], None]) -> None:
        self._deliver = deliver  # nothing is ever lost in one process

    def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

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
        # Delivery happens under the lock so that every stream sees a channel in position order.
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
                self._deliver(message)
        return message

    def live_position(self, channel: str) -> Optional[Position]:
        # ``publish`` delivers before it returns: nothing older can arrive after a subscribe.
        return (0, 0)

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
            if len(self._claims) >= 1024:  # forget expired claims now and then, not per call
                self._claims = {k: t for k, t in self._claims.items() if t > now}
            if self._claims.get(key, 0.0) > now:
                return False
            self._claims[key] = now + ttl
            return True
