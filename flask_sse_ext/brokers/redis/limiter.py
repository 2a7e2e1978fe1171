"""Connection caps shared by every process and host that uses one Redis."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from typing import Any, List, Optional, Set, Tuple, cast

from redis.commands.core import Script
from redis.exceptions import RedisError

from ...limits import Caps, Limiter
from ..base import BrokerError
from .scripts import ACQUIRE
from .topology import Topology

__all__ = ["RedisLimiter"]

logger = logging.getLogger(__name__)


class RedisLimiter(Limiter):
    """Caps shared through Redis; ``lease`` seconds after its process last renewed it, a stream
    no longer counts."""

    def __init__(self, topology: Topology, prefix: str, lease: float = 60.0) -> None:
        self.topology = topology
        self.prefix = prefix
        self.lease = lease
        self._acquire = Script(cast(Any, None), ACQUIRE.encode("utf-8"))
        self._ids = itertools.count()
        self._me = f"{socket.gethostname()}:{os.getpid()}"
        self._held: Set[Tuple[Tuple[str, ...], str]] = set()
        self._renewer: Optional[threading.Thread] = None

    def acquire(self, caps: Caps) -> Optional[object]:
        member = f"{self._me}:{next(self._ids)}"
        taken: List[str] = []
        now = time.time()
        try:
            for key, limit in caps:
                redis_key = f"{self.prefix}:n:{{{key}}}"
                if not self._acquire(
                    keys=[redis_key],
                    args=[now, now + self.lease, member, limit],
                    client=self.topology.commands,
                ):
                    self.release((tuple(taken), member))
                    return None
                taken.append(redis_key)
        except (RedisError, OSError) as exc:
            self.release((tuple(taken), member))
            raise BrokerError(f"Redis did not answer the connection cap check: {exc}") from exc
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
                self.topology.commands.zrem(key, member)
        except Exception as exc:  # the lease runs out by itself
            logger.warning("Could not release a connection slot in Redis: %r", exc)

    def _renew(self) -> None:
        while self._held:
            time.sleep(self.lease / 3)
            expiry = time.time() + self.lease
            try:
                pipe = self.topology.commands.pipeline(transaction=False)
                for keys, member in list(self._held):
                    for key in keys:
                        pipe.zadd(key, {member: expiry}, xx=True)
                pipe.execute()
            except Exception as exc:
                logger.warning("Could not renew connection slots in Redis: %r", exc)
