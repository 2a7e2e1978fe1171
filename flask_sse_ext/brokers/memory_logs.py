"""Logs (resumable streams, jobs) kept in this process, for the in-process broker."""

from __future__ import annotations

import threading
import time
from typing import Dict, FrozenSet, List, Mapping, Optional

from .base import LOG_FLAGS, LogEntry, Position

__all__ = ["MemoryLogs"]


class _Log:
    __slots__ = ("meta", "entries", "flags", "expires", "ended")

    def __init__(self, meta: Mapping[str, str], expires: float) -> None:
        self.meta = dict(meta)
        self.entries: List[LogEntry] = []
        self.flags: Dict[str, float] = {}  # flag -> monotonic expiry
        self.expires = expires
        self.ended = False


class MemoryLogs:
    """The ``log_*`` operations of ``Broker``, in this process. Positions are ``(0, n)``."""

    def __init__(self) -> None:
        self._logs: Dict[str, _Log] = {}
        # One condition for every log: appends are rare next to reads, and a woken reader that
        # finds nothing new for its own log simply waits again.
        self._changed = threading.Condition()
        self._swept = 0.0
        #: How many ``log_read`` calls wait for an append now (what a test awaits).
        self.readers_waiting = 0

    def _live(self, log: str) -> Optional[_Log]:
        """Under the condition's lock: ``log`` unless it expired (then it is dropped)."""
        now = time.monotonic()
        if now - self._swept > 1.0:  # drop expired logs at most once a second
            self._swept = now
            for name in [n for n, item in self._logs.items() if item.expires <= now]:
                del self._logs[name]
        item = self._logs.get(log)
        return None if item is None or item.expires <= now else item

    def log_create(self, log: str, meta: Mapping[str, str], ttl: int) -> bool:
        with self._changed:
            if self._live(log) is not None:
                return False
            self._logs[log] = _Log(meta, time.monotonic() + ttl)
            return True

    def log_meta(self, log: str) -> Optional[Dict[str, str]]:
        with self._changed:
            item = self._live(log)
            return None if item is None else dict(item.meta)

    def log_append(self, log: str, body: bytes, ttl: int, final: bool = False) -> Optional[Position]:
        with self._changed:
            item = self._live(log)
            if item is None or item.ended:
                return None
            position = (0, len(item.entries) + 1)
            item.entries.append(LogEntry(position, body, final))
            item.ended = final
            item.expires = time.monotonic() + ttl
            self._changed.notify_all()
            return position

    def log_read(self, log: str, after: Position, timeout: float) -> Optional[List[LogEntry]]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                item = self._live(log)
                if item is None:
                    return None
                newer = [entry for entry in item.entries[after[1] :] if entry.position > after]
                left = deadline - time.monotonic()
                if newer or left <= 0:
                    return newer
                self.readers_waiting += 1
                try:
                    self._changed.wait(left)
                finally:
                    self.readers_waiting -= 1

    def log_signal(self, log: str, flag: Optional[str], ttl: float) -> FrozenSet[str]:
        if flag is not None and flag not in LOG_FLAGS:
            raise ValueError(f"Unknown log flag {flag!r}: use one of {sorted(LOG_FLAGS)}")
        with self._changed:
            item = self._live(log)
            if item is None:
                return frozenset()
            now = time.monotonic()
            if flag is not None:
                item.flags[flag] = now + ttl
            return frozenset(name for name, until in item.flags.items() if until > now)
