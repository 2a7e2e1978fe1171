"""Waiting for appends to logs on Redis: one blocking read per node and worker, not one per reader.

A reader of a log (a resumable stream, a job's progress) that has read everything registers a
watch here and waits on an event. One greenlet per node (a thread without gevent) waits with a
single multi-key ``XREAD BLOCK`` over every watched log of that node; when entries arrive it
hands them to the log's watch and sets its event, and the reader takes them without a command
of its own. A log newly watched interrupts the blocking read (``CLIENT UNBLOCK``) so that the
next one includes it. A watch outlives its last reader by ``LINGER`` seconds, so a reader that
writes what it got and comes back finds its log still in the read.

In a cluster a multi-key command must stay within one hash slot, and each log is its own hash
tag: there it is one blocking read per slot with readers, from a pool of at most
``SLOT_CONNECTIONS`` per node; readers of slots beyond that wait for a connection to free up,
and meanwhile find new entries by their own read when their wait times out.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from ..base import Position, format_position, parse_position
from .topology import Target, Topology

__all__ = ["LogWaits", "Watch", "LINGER", "SLOT_CONNECTIONS"]

logger = logging.getLogger(__name__)

_ERRORS = (RedisError, OSError)
#: Seconds a watch stays in the blocking read after its last reader left.
LINGER = 5.0
#: Blocking reads at once per node and worker in a cluster (one per hash slot with readers).
SLOT_CONNECTIONS = 16
#: Milliseconds a blocking read waits (below the connections' 10 s socket timeout).
_BLOCK_MS = 5000
#: Entries one blocking read hands over per log; a reader reads on by itself.
_COUNT = 100

Raw = List[Tuple[bytes, Dict[bytes, bytes]]]


class Watch:
    """One watched log: the position the blocking read goes on from, the entries it got last
    (``batch``, right after ``base``) and the event set when they arrived."""

    __slots__ = ("key", "after", "base", "batch", "event", "readers", "left", "error")

    def __init__(self, key: str, after: Position) -> None:
        self.key = key
        self.after = after
        self.base: Optional[Position] = None
        self.batch: Raw = []
        self.event = threading.Event()
        self.readers = 0
        self.left = time.monotonic()
        #: Why the blocking read failed: its readers raise it.
        self.error: Optional[Exception] = None


class _Group:
    """The watches of one node (one slot of it, in a cluster) and the greenlet that reads them."""

    __slots__ = ("name", "target", "watches", "blocked_on", "client_id")

    def __init__(self, name: Tuple[str, Optional[int]], target: Target) -> None:
        self.name = name
        self.target = target
        self.watches: Dict[str, Watch] = {}
        #: The keys of the blocking read under way, else ``None``.
        self.blocked_on: Optional[FrozenSet[str]] = None
        self.client_id: Optional[int] = None


class LogWaits:
    """The blocking reads of one broker. ``watch`` a log, wait on the event it returns,
    ``release`` the watch."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._lock = threading.Lock()
        self._groups: Dict[Tuple[str, Optional[int]], _Group] = {}
        self._pools: Dict[str, Any] = {}  # node name -> bounded pool of blocking connections
        self._closed = False

    def watch(self, key: str, after: Position) -> Tuple[Watch, threading.Event, Optional[Raw]]:
        """Watch the stream ``key`` for a reader that has everything up to ``after``: the watch,
        the event set when entries arrive, and the entries right after ``after`` if the
        blocking read has them already (``[]``: the reader must read by itself, the blocking
        read being behind it; ``None``: wait). Raises ``redis`` errors while the layout is not
        known."""
        target = self.topology.target(key)
        slot = key_slot(key.encode("utf-8")) if self.topology.sharded else None
        name = (target.name, slot)
        start = False
        unblock = None
        with self._lock:
            group = self._groups.get(name)
            if group is None:
                group = self._groups[name] = _Group(name, target)
                start = True
            watch = group.watches.get(key)
            if watch is None:
                watch = group.watches[key] = Watch(key, after)
                if group.blocked_on is not None:
                    unblock = group.client_id
            watch.readers += 1
            ready: Optional[Raw] = None
            if watch.base == after and watch.batch:
                ready = watch.batch
            elif watch.after > after:
                ready = []
            elif watch.after < after:
                watch.after = after
            event = watch.event
        if start:
            threading.Thread(target=self._run, args=(group,), name="sse-log-waits", daemon=True).start()
        elif unblock is not None:
            try:
                self.topology.node_client(key).client_unblock(unblock)
            except _ERRORS as exc:  # the blocking read ends by itself within _BLOCK_MS
                logger.debug("Could not interrupt a blocking log read: %r", exc)
        return watch, event, ready

    def release(self, watch: Watch) -> None:
        with self._lock:
            watch.readers -= 1
            watch.left = time.monotonic()

    def _pool(self, target: Target) -> Any:
        with self._lock:
            pool = self._pools.get(target.name)
            if pool is None:
                size = SLOT_CONNECTIONS if self.topology.sharded else 1
                pool = self._pools[target.name] = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
                    connection_class=target.connection_class, max_connections=size, timeout=1, **target.kwargs
                )
            return pool

    def _streams(self, group: _Group) -> Optional[Dict[str, str]]:
        """Under the lock: what the next blocking read asks for, dropping watches that nobody
        came back to; ``None`` ends the group (and, with it gone, its node's pool if no other
        group uses it)."""
        now = time.monotonic()
        watches = group.watches
        for key in [k for k, w in watches.items() if not w.readers and now - w.left > LINGER]:
            del watches[key]
        if watches and not self._closed:
            group.blocked_on = frozenset(watches)
            return {key: format_position(w.after) for key, w in watches.items()}
        if self._groups.get(group.name) is group:
            del self._groups[group.name]
        node = group.target.name
        if not any(n == node for n, _ in self._groups):
            pool = self._pools.pop(node, None)
            if pool is not None:
                pool.disconnect()
        return None

    def _run(self, group: _Group) -> None:
        client: Any = None
        try:
            while True:
                if client is None:
                    client = self._connect(group)
                    if client is None:
                        continue
                with self._lock:
                    streams = self._streams(group)
                if streams is None:
                    return
                try:
                    reply = client.xread(streams, count=_COUNT, block=_BLOCK_MS)
                except _ERRORS as exc:
                    self._fail(group, exc)
                    return
                finally:
                    group.blocked_on = None
                self._hand_over(group, streams, reply)
        except _Ended:
            return
        finally:
            if client is not None:
                client.close()

    def _connect(self, group: _Group) -> Any:
        """A client holding one blocking connection for ``group``, or ``None`` while the
        node's pool has none free."""
        try:
            client = redis.Redis(connection_pool=self._pool(group.target), single_connection_client=True)
        except redis.ConnectionError as exc:
            if "No connection available" in str(exc):
                with self._lock:  # readers read by themselves at their timeouts meanwhile
                    alive = self._streams(group) is not None
                    group.blocked_on = None
                if alive:
                    return None
                raise _Ended from None
            self._fail(group, exc)
            raise _Ended from None
        try:
            group.client_id = client.client_id()
        except _ERRORS as exc:
            client.close()
            self._fail(group, exc)
            raise _Ended from None
        return client

    def _hand_over(self, group: _Group, streams: Dict[str, str], reply: Any) -> None:
        """Give each watch the entries the read got, after the position it was read from (a
        reader may have moved the watch on meanwhile: then the batch is nobody's, and a reader
        reads by itself)."""
        if isinstance(reply, dict):  # RESP3: {key: [entries]}
            reply = [(key, value[0]) for key, value in reply.items() if value]
        with self._lock:
            for key, entries in reply or ():
                name = _text(key)
                watch = group.watches.get(name)
                if watch is None or not entries:
                    continue
                last = parse_position(_text(entries[-1][0]))
                if last is None or last <= watch.after:
                    continue
                watch.base, watch.batch, watch.after = parse_position(streams[name]), entries, last
                event, watch.event = watch.event, threading.Event()
                event.set()

    def _fail(self, group: _Group, exc: Exception) -> None:
        """The blocking read failed: wake its readers with the error, end the group (readers
        that come back start a new one, on the node the layout names then)."""
        self.topology.invalidate()
        with self._lock:
            for watch in group.watches.values():
                watch.error = exc
                watch.event.set()
            group.watches.clear()
            self._streams(group)

    @property
    def nodes(self) -> FrozenSet[str]:
        """The nodes (``host:port``) this broker holds blocking connections to: those with
        watched logs. A node whose blocking read failed (it left, a failover) is dropped, and
        its connections closed."""
        with self._lock:
            return frozenset(self._pools)

    def close(self) -> None:
        """End every blocking read and close the pools."""
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.disconnect()


class _Ended(Exception):
    """The group ended while getting a connection."""


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
