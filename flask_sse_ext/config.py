"""``SSE_*`` configuration keys: defaults, validation, and the frozen settings read at init."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "Settings",
    "DEFAULTS",
    "load_settings",
    "validate_channel",
    "CHANNEL_PATTERN",
    "SENTINEL_SCHEMES",
    "parse_sentinel_url",
]

#: Channel names: 1 to 200 of letters, digits and ``-_.:@/``.
CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9_\-.:@/]{1,200}")

DEFAULTS: Dict[str, Any] = {
    "SSE_URL_PREFIX": "/stream",
    "SSE_REDIS_URL": None,
    "SSE_REDIS_CLUSTER": False,
    "SSE_REDIS_PREFIX": "sse",
    "SSE_REDIS_MIN_REPLICAS": 0,
    "SSE_REDIS_REPLICA_TIMEOUT": 1.0,
    "SSE_HISTORY_TTL": 86400,
    "SSE_RETRY": 3000,
    "SSE_HEARTBEAT_INTERVAL": 15.0,
    "SSE_MAX_CONNECTION_AGE": None,
    "SSE_HISTORY_SIZE": 1000,
    "SSE_CLIENT_QUEUE_SIZE": 1000,
    "SSE_MAX_EVENT_BYTES": 1024 * 1024,
    "SSE_MAX_CHANNELS_PER_CONNECTION": 20,
    "SSE_REQUIRE_AUTH": False,
    "SSE_CORS_ORIGINS": (),
    "SSE_MAX_CONNECTIONS_PER_CLIENT": None,
    "SSE_MAX_CONNECTIONS_PER_USER": None,
    "SSE_METRICS_PATH": None,
    "SSE_RESUMABLE_TTL": 3600,
    "SSE_RESUMABLE_IDLE": 30.0,
    "SSE_RESUMABLE_LIFETIME": 600.0,
    "SSE_TICKET_TTL": 30.0,
    "SSE_TICKET_ENDPOINT": False,
    "SSE_SEND_TIMEOUT": 10.0,
    "SSE_CLIENT_QUEUE_BYTES": 1024 * 1024,
    "SSE_SEND_BUFFER_BYTES": 64 * 1024,
    "SSE_COMPRESSION": False,
    "SSE_COMPRESSION_MIN_BYTES": 256,
    "SSE_MAX_RATE_FLOOR": 1.0,
    "SSE_POLL_TIMEOUT": 25.0,
    "SSE_DIRECT_WRITES": True,
}


def validate_channel(channel: Any) -> str:
    """Return ``channel`` if it is a valid channel name, else raise ``ValueError``."""
    if not isinstance(channel, str) or CHANNEL_PATTERN.fullmatch(channel) is None:
        raise ValueError(
            f"Invalid SSE channel name {channel!r}: use 1 to 200 characters among "
            "letters, digits and - _ . : @ /"
        )
    return channel


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one app, read once by ``init_app``."""

    url_prefix: str
    redis_url: Optional[str]
    redis_cluster: bool
    redis_prefix: str
    redis_min_replicas: int
    redis_replica_timeout: float
    history_ttl: int
    retry: int
    heartbeat_interval: float
    max_connection_age: Optional[float]
    history_size: int
    client_queue_size: int
    max_event_bytes: int
    max_channels_per_connection: int
    require_auth: bool
    cors_origins: FrozenSet[str]
    max_connections_per_client: Optional[int]
    max_connections_per_user: Optional[int]
    metrics_path: Optional[str]
    resumable_ttl: int
    resumable_idle: float
    resumable_lifetime: float
    ticket_ttl: float
    ticket_endpoint: bool
    send_timeout: float
    client_queue_bytes: int
    send_buffer_bytes: Optional[int]
    compression: bool
    compression_min_bytes: int
    max_rate_floor: float
    poll_timeout: float
    direct_writes: bool


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}, got {value!r}")
    return value


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _rate(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key} must be a number of writes per second > 0, got {value!r}")
    return float(value)


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda key, value: None if value is None else check(key, value)


def _url_prefix(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{key} must be a path starting with '/', got {value!r}")
    return value.rstrip("/") or "/"


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", *SENTINEL_SCHEMES)


def parse_sentinel_url(url: str) -> Tuple[List[Tuple[str, int]], str, Dict[str, Any]]:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?query]``
    to the sentinels' addresses, the service name and the primary's connection options
    (``password``, ``username``, ``db``, and ``ssl`` for ``rediss+sentinel``). Raises ``ValueError``."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Sentinel URL {url!r}: each sentinel must be host:port, got {item!r}")
        sentinels.append((host.strip("[]"), int(port)))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"Sentinel URL {url!r}: the path must be /<service name>[/<db>]")
    options: Dict[str, Any] = {"db": int(path[1]) if len(path) == 2 else 0}
    if userinfo:
        user, _, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    options["ssl"] = parts.scheme.startswith("rediss")
    for name, values in parse_qs(parts.query).items():
        raise ValueError(f"Sentinel URL {url!r}: unknown option {name!r}={values[0]!r}")
    return sentinels, path[0], options


def _redis_url(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(_REDIS_SCHEMES):
        raise ValueError(
            f"{key} must be a redis://, rediss:// or unix:// URL, or "
            f"redis+sentinel://host:port[,host:port...]/<service>[/<db>], got {value!r}"
        )
    if value.startswith(SENTINEL_SCHEMES):
        try:
            parse_sentinel_url(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}")
    return value


def _prefix(key: str, value: Any) -> str:
    if not isinstance(value, str) or re.fullmatch(r"[A-Za-z0-9_\-.:]{1,64}", value) is None:
        raise ValueError(f"{key} must be 1 to 64 letters, digits or - _ . :, got {value!r}")
    return value


_ORIGIN = re.compile(r"https?://[^/\s?#]+")


def _origins(key: str, value: Any) -> FrozenSet[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"{key} must be a list of origins like 'https://app.example.com', got {value!r}")
    for origin in value:
        if not isinstance(origin, str) or _ORIGIN.fullmatch(origin) is None:
            raise ValueError(
                f"{key} entries must be origins like 'https://app.example.com' (scheme and host, "
                f"no path, no '*'), got {origin!r}"
            )
    return frozenset(value)


_CHECKS: Tuple[Tuple[str, str, Callable[[str, Any], Any]], ...] = (
    ("SSE_URL_PREFIX", "url_prefix", _url_prefix),
    ("SSE_REDIS_URL", "redis_url", _optional(_redis_url)),
    ("SSE_REDIS_CLUSTER", "redis_cluster", _bool),
    ("SSE_REDIS_PREFIX", "redis_prefix", _prefix),
    ("SSE_REDIS_MIN_REPLICAS", "redis_min_replicas", lambda k, v: _int(k, v, 0)),
    ("SSE_REDIS_REPLICA_TIMEOUT", "redis_replica_timeout", _seconds),
    ("SSE_HISTORY_TTL", "history_ttl", lambda k, v: _int(k, v, 0)),
    ("SSE_RETRY", "retry", lambda k, v: _int(k, v, 0)),
    ("SSE_HEARTBEAT_INTERVAL", "heartbeat_interval", _seconds),
    ("SSE_MAX_CONNECTION_AGE", "max_connection_age", _optional(_seconds)),
    ("SSE_HISTORY_SIZE", "history_size", lambda k, v: _int(k, v, 0)),
    ("SSE_CLIENT_QUEUE_SIZE", "client_queue_size", lambda k, v: _int(k, v, 1)),
    ("SSE_MAX_EVENT_BYTES", "max_event_bytes", lambda k, v: _int(k, v, 1)),
    ("SSE_MAX_CHANNELS_PER_CONNECTION", "max_channels_per_connection", lambda k, v: _int(k, v, 1)),
    ("SSE_REQUIRE_AUTH", "require_auth", _bool),
    ("SSE_CORS_ORIGINS", "cors_origins", _origins),
    ("SSE_MAX_CONNECTIONS_PER_CLIENT", "max_connections_per_client", _optional(lambda k, v: _int(k, v, 1))),
    ("SSE_MAX_CONNECTIONS_PER_USER", "max_connections_per_user", _optional(lambda k, v: _int(k, v, 1))),
    ("SSE_METRICS_PATH", "metrics_path", _optional(_url_prefix)),
    ("SSE_RESUMABLE_TTL", "resumable_ttl", lambda k, v: _int(k, v, 1)),
    ("SSE_RESUMABLE_IDLE", "resumable_idle", _seconds),
    ("SSE_RESUMABLE_LIFETIME", "resumable_lifetime", _seconds),
    ("SSE_TICKET_TTL", "ticket_ttl", _seconds),
    ("SSE_TICKET_ENDPOINT", "ticket_endpoint", _bool),
    ("SSE_SEND_TIMEOUT", "send_timeout", _seconds),
    ("SSE_CLIENT_QUEUE_BYTES", "client_queue_bytes", lambda k, v: _int(k, v, 1)),
    ("SSE_SEND_BUFFER_BYTES", "send_buffer_bytes", _optional(lambda k, v: _int(k, v, 4096))),
    ("SSE_COMPRESSION", "compression", _bool),
    ("SSE_COMPRESSION_MIN_BYTES", "compression_min_bytes", lambda k, v: _int(k, v, 0)),
    ("SSE_MAX_RATE_FLOOR", "max_rate_floor", _rate),
    ("SSE_POLL_TIMEOUT", "poll_timeout", _seconds),
    ("SSE_DIRECT_WRITES", "direct_writes", _bool),
)


def load_settings(config: Dict[str, Any], options: Mapping[str, Any]) -> Settings:
    """Fill in defaults (constructor ``options`` first, then ``DEFAULTS``) and validate.

    ``options`` are lower-case key names without the prefix (``heartbeat_interval=5``);
    values in the app's config win over them. Raises ``ValueError`` naming a bad key and
    ``TypeError`` for an unknown option.
    """
    for name in options:
        if "SSE_" + name.upper() not in DEFAULTS:
            raise TypeError(f"SSE() got an unknown option {name!r}")
    values = {}
    for key, attr, check in _CHECKS:
        config.setdefault(key, options.get(attr, DEFAULTS[key]))
        values[attr] = check(key, config[key])
    return Settings(**values)
