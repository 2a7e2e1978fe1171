"""The Redis broker (``pip install "flask-sse-ext[redis]"``): one server, Sentinel, or a cluster."""

from .broker import RedisBroker
from .limiter import RedisLimiter

__all__ = ["RedisBroker", "RedisLimiter"]
