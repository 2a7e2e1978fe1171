"""Transports for events: an in-process broker and a Redis broker share one contract."""

from __future__ import annotations

import importlib.util
from typing import Optional

from .base import Broker, BrokerError, Message, Replay
from .memory import MemoryBroker

__all__ = ["Broker", "BrokerError", "Message", "MemoryBroker", "Replay", "open_broker", "require_extra"]


def open_broker(
    redis_url: Optional[str],
    *,
    cluster: bool = False,
    prefix: str = "sse",
    history_size: int = 1000,
    history_ttl: int = 86400,
    min_replicas: int = 0,
    replica_timeout: float = 1.0,
    needed_by: str = "SSE_REDIS_URL",
) -> Broker:
    """The broker for these settings: Redis (one server, Sentinel or a cluster) when
    ``redis_url`` is given, else the in-process broker. Connects lazily.

    Raises ``RuntimeError`` naming ``needed_by`` (what asked for Redis) and the ``pip install``
    line when the ``[redis]`` extra is missing.
    """
    if redis_url is None:
        return MemoryBroker(history_size)
    require_extra("redis", "hiredis", extra="redis", needed_by=needed_by)
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


def require_extra(*modules: str, extra: str, needed_by: str) -> None:
    """Raise ``RuntimeError`` with the ``pip install`` line when one of ``modules`` (from the
    optional ``extra``) cannot be imported; ``needed_by`` names the setting that needs it.

    Called where a configuration is given (``init_app``, ``Publisher``), so a missing extra
    fails there rather than as a ``ModuleNotFoundError`` at the first request or publish.
    """
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(
                f'{needed_by} needs the {module!r} package: pip install "flask-sse-ext[{extra}]"'
            )
