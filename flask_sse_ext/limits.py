"""Connection caps per client address and per identity, checked before a stream opens.

The in-process limiter counts this process's streams. With Redis, counts are shared by every
worker and host: each open stream holds a lease in a sorted set that its process renews, so the
streams of a worker that dies stop counting once their lease runs out.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

__all__ = ["Limiter", "MemoryLimiter", "RedisLimiter"]

logger = logging.getLogger(__name__)

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


# KEYS[1]: the cap's sorted set. ARGV: now, lease expiry, member, limit. Returns 1 if admitted.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1)
return 1
"""


class RedisLimiter(Limiter):
    """Caps shared through Redis; ``lease`` seconds after its process last renewed it, a stream
    no longer counts."""

    def __init__(self, client: Any, prefix: str, lease: float = 60.0) -> None:
        self.client = client
        self.prefix = prefix
        self.lease = lease
        self._acquire = client.register_script(_ACQUIRE)
        self._ids = itertools.count()
        self._me = f"{socket.gethostname()}:{os.getpid()}"
        self._held: Set[Tuple[Tuple[str, ...], str]] = set()
        self._renewer: Optional[threading.Thread] = None

    def acquire(self, caps: Caps) -> Optional[object]:
        member = f"{self._me}:{next(self._ids)}"
        taken: List[str] = []
        now = time.time()
        for key, limit in caps:
            redis_key = f"{self.prefix}:n:{{{key}}}"
            if not self._acquire(keys=[redis_key], args=[now, now + self.lease, member, limit]):
                self.release((tuple(taken), member))
                return None
            taken.append(redis_key)
        handle = (tuple(taken), member)
        self._held.add(handle)
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(target=self._renew, name="sse-limit-renewer", daemon=True)
            self._renewer.start()
        return handle

    def release(self, handle: object) -> None:
        assert isinstance(handle, tuple)
        self._held.discard(handle)
        keys, member = handle
        try:
            for key in keys:
                self.client.zrem(key, member)
        except Exception as exc:  # the lease runs out by itself
            logger.warning("Could not release a connection slot in Redis: %r", exc)

    def _renew(self) -> None:
        while self._held:
            time.sleep(self.lease / 3)
            expiry = time.time() + self.lease
            try:
                pipe = self.client.pipeline(transaction=False)
                for keys, member in list(self._held):
                    for key in keys:
                        pipe.zadd(key, {member: expiry}, xx=True)
                pipe.execute()
            except Exception as exc:
                logger.warning("Could not renew connection slots in Redis: %r", exc)
