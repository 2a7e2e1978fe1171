"""What processes share through Redis: their counters, and their streams per channel.

Every key here carries one hash tag, so in a cluster they live on one shard and each read or
write is one round trip. Entries expire: a process (or a whole host) that dies drops out by
itself.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Union

from redis.exceptions import RedisError

from ..base import BrokerError
from .topology import Topology

__all__ = ["SharedStore"]

_ERRORS = (RedisError, OSError)


def _text(value: Union[bytes, str]) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class SharedStore:
    """Counters and presence of every process that uses one Redis under one prefix."""

    def __init__(self, topology: Topology, prefix: str) -> None:
        self.topology = topology
        self.prefix = prefix
        tag = "{" + prefix + ":shared}"
        self.stats_key = f"{prefix}:stats:{tag}"
        self.processes_key = f"{prefix}:processes:{tag}"
        self.presence_prefix = f"{prefix}:presence:{tag}:"
        self._reported: Dict[str, int] = {}

    def share_stats(self, process: str, snapshot: str) -> None:
        client = self.topology.commands
        client.hset(self.stats_key, process, snapshot)
        client.expire(self.stats_key, 3600)

    def shared_stats(self) -> Dict[str, str]:
        try:
            raw = self.topology.commands.hgetall(self.stats_key)
        except _ERRORS as exc:
            raise BrokerError(f"Redis did not answer: {exc}") from exc
        return {_text(k): _text(v) for k, v in raw.items()}

    def report_presence(self, process: str, counts: Dict[str, int], ttl: float) -> None:
        """Record ``process``'s open streams per channel, valid for ``ttl`` seconds. Only what
        changed since the last report is written."""
        key = self.presence_prefix + process
        changed = {c: n for c, n in counts.items() if self._reported.get(c) != n}
        gone = [c for c in self._reported if c not in counts]
        pipe: Any = self.topology.commands.pipeline(transaction=False)
        now = time.time()
        pipe.zadd(self.processes_key, {process: now + ttl})
        pipe.zremrangebyscore(self.processes_key, "-inf", now - 86400)
        if changed:
            pipe.hset(key, mapping=changed)
        if gone:
            pipe.hdel(key, *gone)
        pipe.expire(key, int(ttl) + 1)
        try:
            pipe.execute()
        except _ERRORS as exc:
            self._reported = {}  # the next report writes every count again
            raise BrokerError(f"Redis did not take the presence report: {exc}") from exc
        self._reported = dict(counts)

    def live_processes(self) -> List[str]:
        """Processes whose last report has not expired."""
        try:
            names = self.topology.commands.zrangebyscore(self.processes_key, time.time(), "+inf")
        except _ERRORS as exc:
            raise BrokerError(f"Redis did not answer: {exc}") from exc
        return [_text(name) for name in names]

    def presence(self, channel: str) -> int:
        """Open streams on ``channel`` over every live process."""
        processes = self.live_processes()
        if not processes:
            return 0
        try:
            pipe: Any = self.topology.commands.pipeline(transaction=False)
            for process in processes:
                pipe.hget(self.presence_prefix + process, channel)
            counts = pipe.execute()
        except _ERRORS as exc:
            raise BrokerError(f"Redis did not answer: {exc}") from exc
        return sum(int(count) for count in counts if count is not None)

    def claim_once(self, key: str, ttl: float) -> bool:
        """``SET NX`` with an expiry: one process in all wins a key, until it expires."""
        try:
            won = self.topology.commands.set(
                f"{self.prefix}:claim:{key}", b"1", nx=True, px=max(1, int(ttl * 1000))
            )
        except _ERRORS as exc:
            raise BrokerError(f"Redis did not answer the ticket check: {exc}") from exc
        return bool(won)
