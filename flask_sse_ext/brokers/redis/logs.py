"""Logs (resumable streams, jobs) in Redis: one Redis Stream per log, with its metadata and
flags beside it under one hash tag, so in a cluster a log lives on one shard.

Writes are scripts (one atomic round trip: an entry after the final one is refused). A reader
reads on the broker's command pool; to wait for more it watches its log with ``LogWaits``,
whose one blocking read per node (per hash slot in a cluster, bounded) serves every reader of
the worker, so Redis clients scale with workers, not with readers.
"""

from __future__ import annotations

import time
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Union, cast

from redis.commands.core import Script
from redis.exceptions import RedisError

from ..base import LOG_FLAGS, BrokerError, LogEntry, Position, format_position, parse_position
from .log_waits import LogWaits, Raw
from .topology import Topology

__all__ = ["RedisLogs"]

_ERRORS = (RedisError, OSError)
_FLAGS = sorted(LOG_FLAGS)

# KEYS[1]: the log's metadata. ARGV: ttl, then field, value pairs. Returns 1 if created.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: metadata, stream. ARGV: ttl, body, "1" if final. Returns the entry's id, or false
# when the log is gone or ended.
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], '~ended') == '1' then
  return false
end
local pos = redis.call('XADD', KEYS[2], '*', 'b', ARGV[2], 'f', ARGV[3])
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], '~ended', '1') end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return pos
"""

# KEYS: metadata, then one key per flag (sorted names). ARGV: index of the flag to raise
# (0: none), its ttl in ms. Returns a 0/1 per flag; nothing for a log that does not exist.
_SIGNAL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local index = tonumber(ARGV[1])
if index > 0 then redis.call('SET', KEYS[index + 1], '1', 'PX', ARGV[2]) end
local out = {}
for i = 2, #KEYS do out[i - 1] = redis.call('EXISTS', KEYS[i]) end
return out
"""


def _script(source: str) -> Script:
    return Script(cast(Any, None), source.encode("utf-8"))


def _text(value: Union[bytes, str]) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisLogs:
    """The ``log_*`` operations of ``Broker`` on Redis (one server, Sentinel or a cluster)."""

    topology: Topology
    prefix: str

    def __init__(self) -> None:
        self._create = _script(_CREATE)
        self._append = _script(_APPEND)
        self._signal = _script(_SIGNAL)
        #: The blocking reads that readers wait on (``RedisBroker`` sets ``topology`` first).
        self.log_waits = LogWaits(self.topology)

    def _keys(self, log: str) -> List[str]:
        base = f"{self.prefix}:log:{{{log}}}"
        return [base + ":m", base + ":s", *(f"{base}:f:{flag}" for flag in _FLAGS)]

    def _fail(self, log: str, exc: Exception) -> BrokerError:
        self.topology.invalidate()
        return BrokerError(f"Redis did not answer for the stream log {log!r}: {exc}")

    def log_create(self, log: str, meta: Mapping[str, str], ttl: int) -> bool:
        args: List[Any] = [ttl]
        for field, value in meta.items():
            args += [field, value]
        try:
            return bool(self._create(keys=self._keys(log)[:1], args=args, client=self.topology.commands))
        except _ERRORS as exc:
            raise self._fail(log, exc) from exc

    def log_meta(self, log: str) -> Optional[Dict[str, str]]:
        try:
            raw = self.topology.commands.hgetall(self._keys(log)[0])
        except _ERRORS as exc:
            raise self._fail(log, exc) from exc
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items() if not _text(k).startswith("~")}

    def log_append(self, log: str, body: bytes, ttl: int, final: bool = False) -> Optional[Position]:
        args: List[Any] = [ttl, body, "1" if final else "0"]
        try:
            reply = self._append(keys=self._keys(log)[:2], args=args, client=self.topology.commands)
        except _ERRORS as exc:
            raise self._fail(log, exc) from exc
        return None if reply is None else parse_position(_text(reply))

    def log_read(self, log: str, after: Position, timeout: float) -> Optional[List[LogEntry]]:
        meta_key, stream_key = self._keys(log)[:2]
        deadline = time.monotonic() + timeout
        try:
            # A first read of its own: a reader that is behind (a replay) does not wait.
            raw = self._read(stream_key, after)
            while not raw and time.monotonic() < deadline:
                watch, event, ready = self.log_waits.watch(stream_key, after)
                try:
                    if ready is None:  # the blocking read covers what comes after ``after``
                        event.wait(max(0.0, deadline - time.monotonic()))
                        if watch.error is not None:
                            raise watch.error
                        if watch.base == after:
                            ready = watch.batch
                finally:
                    self.log_waits.release(watch)
                # Behind the blocking read, or timed out (a race may have kept the log out of
                # it): read on by itself.
                raw = ready or self._read(stream_key, after)
            if not raw and not self.topology.commands.exists(meta_key):
                return None
        except _ERRORS as exc:
            raise self._fail(log, exc) from exc
        entries = []
        for entry_id, fields in raw:
            position = parse_position(_text(entry_id))
            if position is None:
                raise BrokerError(f"Redis answered with a position that is not one: {entry_id!r}")
            entries.append(LogEntry(position, fields[b"b"], fields[b"f"] == b"1"))
        return entries

    def _read(self, stream_key: str, after: Position) -> Raw:
        reply = self.topology.commands.xread({stream_key: format_position(after)}, count=1000)
        if isinstance(reply, dict):  # RESP3: {key: [entries]}
            return list(next(iter(reply.values()), [[]])[0])
        return list(reply[0][1]) if reply else []

    def log_signal(self, log: str, flag: Optional[str], ttl: float) -> FrozenSet[str]:
        if flag is not None and flag not in LOG_FLAGS:
            raise ValueError(f"Unknown log flag {flag!r}: use one of {_FLAGS}")
        keys = self._keys(log)
        index = 0 if flag is None else _FLAGS.index(flag) + 1
        args = [index, max(1, int(ttl * 1000))]
        try:
            reply = self._signal(keys=[keys[0], *keys[2:]], args=args, client=self.topology.commands)
        except _ERRORS as exc:
            raise self._fail(log, exc) from exc
        return frozenset(name for name, up in zip(_FLAGS, reply) if up)

    def close_logs(self) -> None:
        """End the blocking reads and close their connections."""
        self.log_waits.close()
