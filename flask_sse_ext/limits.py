"""Connection caps per client address and per identity, checked before a stream opens.

The in-process limiter counts this process's streams; the Redis broker brings a limiter whose
counts every worker and host share (``brokers/redis.py``).
"""

from __future__ import annotations

import threading
from typing import Dict, Optional, Sequence, Tuple

__all__ = ["Limiter", "MemoryLimiter", "Caps"]

#: (key, limit) pairs: ``("addr:10.0.0.7", 20)``.
Caps = Sequence[Tuple[str, int]]


class Limiter:
    """Admits a connection if every cap has room, and forgets it when it closes."""

    def acquire(self, caps: Caps) -> Optional[object]:
        """A handle to pass to ``release``, or ``None`` when a cap is full."""
        raise NotImplementedError

    def release(self, handle: object) -> None:
        raise NotImplementedError


class MemoryLimiter(Limiter):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = {}

    def acquire(self, caps: Caps) -> Optional[object]:
        with self._lock:
            if any(self._counts.get(key, 0) >= limit for key, limit in caps):
                return None
            for key, _ in caps:
                self._counts[key] = self._counts.get(key, 0) + 1
        return [key for key, _ in caps]

    def release(self, handle: object) -> None:
        assert isinstance(handle, list)
        with self._lock:
            for key in handle:
                count = self._counts.get(key, 0) - 1
                if count > 0:
                    self._counts[key] = count
                else:
                    self._counts.pop(key, None)
