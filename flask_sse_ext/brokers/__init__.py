"""Transports for events: an in-process broker and a Redis broker share one contract."""

from __future__ import annotations

from typing import Optional

from .base import Broker, BrokerError, Message, Replay
from .memory import MemoryBroker

__all__ = ["Broker", "BrokerError", "Message", "MemoryBroker", "Replay", "open_broker"]


def open_broker(
    redis_url: Optional[str],
    *,
    cluster: bool = False,
    prefix: str = "sse",
    history_size: int = 1000,
    history_ttl: int = 86400,
    min_replicas: int = 0,
    replica_timeout: float = 1.0,
) -> Broker:
    """The broker for these settings: Redis (one server, Sentinel or a cluster) when
    ``redis_url`` is given, else the in-process broker. Connects lazily."""
    if redis_url is None:
        return MemoryBroker(history_size)
    from .redis import RedisBroker  # the redis extra is needed only here

    return RedisBroker.from_url(
        redis_url,
        cluster=cluster,
        prefix=prefix,
        history_size=history_size,
        history_ttl=history_ttl,
        min_replicas=min_replicas,
        replica_timeout=replica_timeout,
    )
