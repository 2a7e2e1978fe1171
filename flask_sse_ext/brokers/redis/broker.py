"""The Redis broker: history in a capped Redis Stream per channel, live delivery by pub/sub.

One server-side script appends an event to the channel's stream and publishes it, in one round
trip, so history and live delivery never disagree and the stream entry id is the event's
position. Each process holds one pub/sub link per node for all its streams (``listener.py``);
connections are few and named (``topology.py``); connection caps and shared counters live in
``limiter.py`` and ``store.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union, cast

from redis.commands.core import Script
from redis.exceptions import RedisError

from ...limits import Limiter
from ..base import (
    UNKNOWN,
    Broker,
    BrokerError,
    Cursor,
    Message,
    Position,
    Replay,
    format_position,
    parse_position,
)
from .limiter import RedisLimiter
from .listener import Listener
from .logs import RedisLogs
from .scripts import HEADS, PUBLISH, REPLAY
from .store import SharedStore
from .topology import Topology, connect

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

_ERRORS = (RedisError, OSError)


def _text(value: Union[bytes, str]) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _position(value: Union[bytes, str]) -> Position:
    position = parse_position(_text(value))
    if position is None:
        raise BrokerError(f"Redis answered with a position that is not one: {value!r}")
    return position


def _script(source: str) -> Script:
    # Given as bytes, a script needs no client to compute its hash.
    return Script(cast(Any, None), source.encode("utf-8"))


class RedisBroker(RedisLogs, Broker):
    """History and fan-out through Redis; safe to use from many processes and hosts.

    ``topology`` says where Redis is (one server, Sentinel, a cluster: ``from_url`` picks it).
    With ``min_replicas``, ``publish`` returns only once that many replicas hold the event
    (``WAIT``), so a failover cannot lose it, and raises ``BrokerError`` otherwise.
    """

    shared = True

    def __init__(
        self,
        topology: Topology,
        *,
        prefix: str = "sse",
        history_size: int = 1000,
        history_ttl: int = 86400,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
        max_backoff: float = 2.0,
    ) -> None:
        self.topology = topology
        self.prefix = prefix
        RedisLogs.__init__(self)
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout
        self.sharded = topology.sharded
        # Scripts are sent by hash, and loaded again where a node does not know them (a new
        # primary after a failover). Each call names its client: the topology's may change.
        self._publish = _script(PUBLISH)
        self._replay = _script(REPLAY)
        self._heads = _script(HEADS)
        self.store = SharedStore(topology, prefix)
        self._limiter: Optional[RedisLimiter] = None
        self._lock = threading.Lock()
        self.listener = Listener(
            topology,
            pubsub_key=self.pubsub_channel,
            channel_of=self.channel_of,
            replay=self.replay,
            heads=self.heads,
            max_backoff=max_backoff,
        )

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **options: Any) -> RedisBroker:
        """A broker with its own connections: a command pool of two per node and one pub/sub
        link per node that serves subscribed channels, however many streams this process
        serves. ``url`` is ``redis://``, ``rediss://``, ``unix://`` or, for Sentinel,
        ``redis+sentinel://host:port[,host:port...]/<service>[/<db>]``; ``cluster=True``
        for a Redis Cluster. Connects lazily: nothing is sent before the first use."""
        return cls(connect(url, cluster=cluster, prefix=options.get("prefix", "sse")), **options)

    # Keys carry the channel as a hash tag, so in a cluster its history and pub/sub share a shard.
    def history_key(self, channel: str) -> str:
        """The Redis Stream that keeps ``channel``'s history."""
        return f"{self.prefix}:h:{{{channel}}}"

    def pubsub_channel(self, channel: str) -> str:
        """The pub/sub channel that carries ``channel``'s live events."""
        return f"{self.prefix}:c:{{{channel}}}"

    def channel_of(self, pubsub_channel: str) -> str:
        return pubsub_channel[len(self.prefix) + 4 : -1]

    # -- publishing and history ------------------------------------------------------------

    def publish(
        self, channel: str, body: bytes, id: Optional[str] = None, key: Optional[str] = None
    ) -> Message:
        keys = [self.history_key(channel)]
        args: List[Any] = [
            self.pubsub_channel(channel),
            self.history_size + 1,
            self.history_ttl,
            id or "",
            body,
            "1" if self.sharded else "0",
            key or "",
        ]
        try:
            if self.min_replicas:
                position, replicas = self._publish_replicated(keys, args)
            else:
                position = self._publish(keys=keys, args=args, client=self.topology.commands)
        except _ERRORS as exc:
            self._fault()
            raise BrokerError(f"Redis did not take the event for channel {channel!r}: {exc}") from exc
        message = Message(channel, _position(position), id, body, key)
        if self.min_replicas and replicas < self.min_replicas:
            raise BrokerError(
                f"The event {message.id} for channel {channel!r} reached {replicas} of the "
                f"{self.min_replicas} replicas required (SSE_REDIS_MIN_REPLICAS) within "
                f"{self.replica_timeout}s: it may be lost if the primary fails now"
            )
        return message

    def _publish_replicated(self, keys: List[str], args: List[Any]) -> Any:
        # WAIT counts the replicas that acknowledged this connection's writes: it must run on
        # the connection that ran the script, so both go in one pipeline to the key's node.
        pipe = self.topology.node_client(keys[0]).pipeline(transaction=False)
        self._publish(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.min_replicas, int(self.replica_timeout * 1000))
        position, replicas = pipe.execute()
        return position, int(replicas)

    def replay(self, channel: str, cursor: Cursor) -> Replay:
        if cursor is UNKNOWN:
            text = "~"
        elif cursor is None:
            text = ""
        else:
            text = cursor if isinstance(cursor, str) else format_position(cursor)
        try:
            reply = self._replay(keys=[self.history_key(channel)], args=[text], client=self.topology.commands)
        except _ERRORS as exc:
            self._fault()
            raise BrokerError(f"Redis did not answer for channel {channel!r}: {exc}") from exc
        head = _position(reply[0])
        messages = []
        for i in range(2, len(reply), 2):
            fields = dict(zip(reply[i + 1][::2], reply[i + 1][1::2]))
            event_id = _text(fields[b"i"]) or None
            key = fields.get(b"k")
            messages.append(
                Message(
                    channel, _position(reply[i]), event_id, fields[b"b"], None if key is None else _text(key)
                )
            )
        self.listener.note_read(channel, messages[-1].position if messages else head)
        return Replay(messages, head, bool(reply[1]))

    def heads(self, channels: Sequence[str]) -> Dict[str, Position]:
        """Each channel's newest position (``(0, 0)`` for one with no history)."""
        client = self.topology.commands
        heads: Dict[str, Position] = {}
        if self.sharded:  # keys on several shards: one pipeline, split by node
            pipe = client.pipeline(transaction=False)
            for channel in channels:
                pipe.xrevrange(self.history_key(channel), "+", "-", count=1)
            for channel, entries in zip(channels, pipe.execute()):
                heads[channel] = _position(entries[0][0]) if entries else (0, 0)
            return heads
        for start in range(0, len(channels), 1000):
            batch = channels[start : start + 1000]
            reply = self._heads(keys=[self.history_key(c) for c in batch], client=client)
            heads.update((channel, _position(head)) for channel, head in zip(batch, reply))
        return heads

    def _fault(self) -> None:
        """A command failed: the layout may have changed (a failover); learn it again."""
        self.topology.invalidate()
        self.listener.request_relayout()

    # -- live delivery ---------------------------------------------------------------------

    def start(self, deliver: Callable[[Message], None], lost: Callable[[str], None]) -> None:
        self.listener.start(deliver, lost)

    @property
    def subscriptions(self) -> int:
        return len(self.listener.channels)

    @property
    def reconnects(self) -> int:
        return self.listener.reconnects

    def subscribe(self, channel: str) -> None:
        self.listener.subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        self.listener.unsubscribe(channel)

    def ready(self, channels: Sequence[str], timeout: float = 5.0) -> None:
        """Wait until Redis confirms the subscriptions, so that history read next and live
        events leave no gap. Raises ``BrokerError`` when Redis does not answer in time."""
        deadline = time.monotonic() + timeout
        for channel in channels:
            event = self.listener.confirmed.get(channel)
            if event is None or event.is_set():
                continue
            # A link that is down fails fast: the stream ends and its client retries.
            wait = deadline - time.monotonic()
            if not self.listener.connected(channel) and not event.wait(min(wait, 1.0)):
                raise BrokerError("Redis is unreachable: the pub/sub connection is down")
            if not event.wait(max(0.0, deadline - time.monotonic())):
                raise BrokerError(f"Redis did not confirm the subscription to {channel!r}")

    def live_position(self, channel: str) -> Optional[Position]:
        """The last position this process delivered on ``channel`` (or its head when it was
        subscribed), once subscribed: later events still come through pub/sub, in order."""
        return self.listener.live_position(channel)

    # -- shared between processes ----------------------------------------------------------

    def share_stats(self, process: str, snapshot: str) -> None:
        self.store.share_stats(process, snapshot)

    def shared_stats(self) -> Dict[str, str]:
        return self.store.shared_stats()

    def report_presence(self, process: str, counts: Dict[str, int], ttl: float) -> None:
        self.store.report_presence(process, counts, ttl)

    def presence(self, channel: str) -> Optional[int]:
        return self.store.presence(channel)

    def processes(self) -> Optional[int]:
        return len(self.store.live_processes())

    def claim_once(self, key: str, ttl: float) -> bool:
        return self.store.claim_once(key, ttl)

    def limiter(self) -> Limiter:
        """Connection caps shared by every process that uses this Redis."""
        with self._lock:
            if self._limiter is None:
                self._limiter = RedisLimiter(self.topology, self.prefix)
        return self._limiter

    def close(self) -> None:
        """Stop the listener (it closes its links) and release connections."""
        self.listener.close()
        self.close_logs()
        self.topology.close()
