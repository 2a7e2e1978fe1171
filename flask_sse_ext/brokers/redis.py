"""The Redis broker: history in a capped Redis Stream per channel, live delivery by pub/sub.

One server-side script appends an event to the channel's stream and publishes it, in one round
trip, so history and live delivery never disagree and the stream entry id is the event's
position. Each process holds one pub/sub connection for all its streams: it subscribes to a
channel when the first local client arrives and unsubscribes when the last one leaves. When
Redis goes away, a listener reconnects with capped backoff, subscribes again, and reads each
channel's history from the last position it delivered, so nothing Redis accepted is lost.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..limits import Caps, Limiter
from .base import Broker, BrokerError, Cursor, Message, Position, Replay, format_position, parse_position

__all__ = ["RedisBroker", "RedisLimiter"]

logger = logging.getLogger(__name__)

# KEYS[1]: the channel's history stream. ARGV: pub/sub channel, entries to keep (the history
# size plus the floor entry), ttl, id, body, "1" for sharded pub/sub.
_PUBLISH = """
local pos = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'i', ARGV[4], 'b', ARGV[5])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
local payload = pos .. ' ' .. ARGV[4] .. '\\n' .. ARGV[5]
if ARGV[6] == '1' then
  redis.call('SPUBLISH', ARGV[1], payload)
else
  redis.call('PUBLISH', ARGV[1], payload)
end
return pos
"""

# KEYS[1]: the channel's history stream. ARGV[1]: "" for the head only, else the cursor text.
# Returns {head, missed (0/1), id1, fields1, id2, fields2, ...} of the entries after the cursor.
_REPLAY = """
local function pos(text)
  local ms, seq = string.match(text, '^(%d+)-(%d+)$')
  if ms == nil then return nil end
  return {tonumber(ms), tonumber(seq)}
end
local function less(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end
-- The oldest entry kept marks the floor: it is not replayed, and a cursor older than it
-- lost events once the stream was trimmed (the stream keeps one more than the history size).
local head, floor, added, length = '0-0', '0-0', 0, 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    local k, v = info[i], info[i + 1]
    if k == 'last-generated-id' then head = v end
    if k == 'recorded-first-entry-id' then floor = v end
    if k == 'entries-added' then added = v end
    if k == 'length' then length = v end
  end
end
if ARGV[1] == '' then return {head, 0} end
local after = nil
if pos(ARGV[1]) ~= nil then
  after = ARGV[1]
else
  -- A publisher's id: look for it from the newest entry back, a page at a time.
  local upper = '+'
  while after == nil do
    local page = redis.call('XREVRANGE', KEYS[1], upper, '-', 'COUNT', 100)
    if #page == 0 then return {head, 1} end
    for _, entry in ipairs(page) do
      if entry[2][2] == ARGV[1] then after = entry[1] break end
    end
    upper = '(' .. page[#page][1]
  end
end
local p = pos(after)
if less(pos(head), p) or (added > length and less(p, pos(floor))) then return {head, 1} end
local out = {head, 0}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '(' .. after, '+')) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2]
end
return out
"""

# KEYS: history streams. Returns each one's newest position ("0-0" where there is none).
_HEADS = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = '0-0'
  if redis.call('EXISTS', key) == 1 then
    local info = redis.call('XINFO', 'STREAM', key)
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then out[i] = info[j + 1] end
    end
  end
end
return out
"""

_CONNECTION_ERRORS = (RedisError, OSError)

_KEEPALIVE = {
    getattr(socket, option): value
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, option)
}


def _text(value: Union[bytes, str]) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisBroker(Broker):
    """History and fan-out through Redis; safe to use from many processes and hosts.

    ``client`` may be a ``redis.Redis`` or a ``redis.RedisCluster``; with a cluster, keys
    carry the channel as a hash tag and live delivery uses sharded pub/sub (Redis 7).
    """

    def __init__(
        self,
        client: Any,
        *,
        pubsub_client: Any = None,
        prefix: str = "sse",
        history_size: int = 1000,
        history_ttl: int = 86400,
        max_backoff: float = 10.0,
    ) -> None:
        self.client = client
        self.pubsub_client = client if pubsub_client is None else pubsub_client
        self.prefix = prefix
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.max_backoff = max_backoff
        self.sharded = isinstance(client, redis.RedisCluster)
        self._publish = client.register_script(_PUBLISH)
        self._replay = client.register_script(_REPLAY)
        self._heads = client.register_script(_HEADS)
        self._deliver: Optional[Callable[[Message], None]] = None
        self._lost: Optional[Callable[[str], None]] = None
        self._channels: Set[str] = set()
        self._confirmed: Dict[str, Any] = {}
        self._last: Dict[str, Position] = {}
        self._link: Optional[_Link] = None
        self._connected = threading.Event()
        # While catching up after a reconnect, live messages wait here so none overtakes
        # an older one from history (a stream drops what is older than what it has sent).
        self._held: Optional[List[Message]] = None
        self._closed = False
        self._listener: Optional[threading.Thread] = None

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **options: Any) -> RedisBroker:
        """A broker with its own connections: two for commands and one for pub/sub, however
        many streams this process serves. Commands are retried once on a dropped connection;
        pub/sub is not retried by redis-py, so that the listener sees every reconnect."""
        if cluster:
            client = redis.RedisCluster.from_url(url, socket_connect_timeout=5, socket_timeout=10)
            return cls(client, **options)
        # Named per process, so CLIENT LIST shows which worker holds which connection.
        common = {
            "socket_connect_timeout": 5,
            "health_check_interval": 15,
            "client_name": f"{options.get('prefix', 'sse')}:{os.getpid()}",
        }
        commands = redis.BlockingConnectionPool.from_url(
            url, max_connections=2, timeout=10, socket_timeout=10,
            retry=Retry(NoBackoff(), 1), **common,
        )  # fmt: skip
        pubsub = redis.BlockingConnectionPool.from_url(
            url, max_connections=1, timeout=10, retry=Retry(NoBackoff(), 0),
            # The listener blocks on its socket: TCP keepalive finds a Redis that vanished
            # without a word (a network partition) in about 25 s.
            socket_keepalive=True, socket_keepalive_options=_KEEPALIVE, **common,
        )  # fmt: skip
        return cls(
            redis.Redis(connection_pool=commands),
            pubsub_client=redis.Redis(connection_pool=pubsub),
            **options,
        )

    # Keys share the channel as a hash tag, so in a cluster they live on one shard.
    def _history_key(self, channel: str) -> str:
        return f"{self.prefix}:h:{{{channel}}}"

    def _pubsub_channel(self, channel: str) -> str:
        return f"{self.prefix}:c:{{{channel}}}"

    def _channel_of(self, pubsub_channel: str) -> str:
        return pubsub_channel[len(self.prefix) + 4 : -1]

    def publish(self, channel: str, body: bytes, id: Optional[str] = None) -> Message:
        try:
            position = self._publish(
                keys=[self._history_key(channel)],
                args=[
                    self._pubsub_channel(channel), self.history_size + 1, self.history_ttl,
                    id or "", body, "1" if self.sharded else "0",
                ],
            )  # fmt: skip
        except _CONNECTION_ERRORS as exc:
            raise BrokerError(f"Redis did not take the event for channel {channel!r}: {exc}") from exc
        parsed = parse_position(_text(position))
        assert parsed is not None
        return Message(channel, parsed, id, body)

    def live_position(self, channel: str) -> Optional[Position]:
        """The last position this process delivered on ``channel`` (or its head when it was
        subscribed), while it is subscribed and not catching up: later events still come
        through pub/sub, in order."""
        confirmed = self._confirmed.get(channel)
        if self._held is not None or confirmed is None or not confirmed.is_set():
            return None
        return self._last.get(channel)

    def replay(self, channel: str, cursor: Cursor) -> Replay:
        text = "" if cursor is None else cursor if isinstance(cursor, str) else format_position(cursor)
        try:
            reply = self._replay(keys=[self._history_key(channel)], args=[text])
        except _CONNECTION_ERRORS as exc:
            raise BrokerError(f"Redis did not answer for channel {channel!r}: {exc}") from exc
        head = parse_position(_text(reply[0]))
        assert head is not None
        messages = []
        for i in range(2, len(reply), 2):
            fields = dict(zip(reply[i + 1][::2], reply[i + 1][1::2]))
            position = parse_position(_text(reply[i]))
            assert position is not None
            event_id = _text(fields[b"i"]) or None
            messages.append(Message(channel, position, event_id, fields[b"b"]))
        if channel in self._channels:
            # Where to catch up from if the connection to Redis drops.
            self._last.setdefault(channel, messages[-1].position if messages else head)
        return Replay(messages, head, bool(reply[1]))

    def share_stats(self, process: str, snapshot: str) -> None:
        key = f"{self.prefix}:stats"
        self.client.hset(key, process, snapshot)
        self.client.expire(key, 3600)

    def shared_stats(self) -> Dict[str, str]:
        try:
            raw = self.client.hgetall(f"{self.prefix}:stats")
        except _CONNECTION_ERRORS as exc:
            raise BrokerError(f"Redis did not answer: {exc}") from exc
        return {_text(k): _text(v) for k, v in raw.items()}

    def limiter(self) -> Limiter:
        """Connection caps shared by every process that uses this Redis."""
        return RedisLimiter(self.client, self.prefix)

    # -- live delivery ---------------------------------------------------------------------

    def start(self, deliver: Callable[[Message], None], lost: Callable[[str], None]) -> None:
        self._deliver = deliver
        self._lost = lost
        self._listener = threading.Thread(target=self._listen, name="sse-redis-listener", daemon=True)
        self._listener.start()

    @property
    def subscriptions(self) -> int:
        return len(self._channels)

    def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self._confirmed[channel] = threading.Event()
        self._send("subscribe", channel)

    def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self._confirmed.pop(channel, None)
        self._last.pop(channel, None)
        self._send("unsubscribe", channel)

    def ready(self, channels: Sequence[str], timeout: float = 5.0) -> None:
        """Wait until Redis confirms the subscriptions, so that history read next and live
        events leave no gap. Raises ``BrokerError`` when Redis does not answer in time."""
        deadline = time.monotonic() + timeout
        if not self._connected.wait(min(timeout, 1.0)):
            raise BrokerError("Redis is unreachable: the pub/sub connection is down")
        for channel in channels:
            event = self._confirmed.get(channel)
            if event is not None and not event.wait(max(0.0, deadline - time.monotonic())):
                raise BrokerError(f"Redis did not confirm the subscription to {channel!r}")

    def _send(self, command: str, channel: str) -> None:
        link = self._link
        if link is None:
            return  # the listener subscribes every channel when it connects
        try:
            link.send(command, self._pubsub_channel(channel))
        except _CONNECTION_ERRORS as exc:
            logger.info("Redis pub/sub %s of %r deferred to reconnect: %s", command, channel, exc)

    def _connect(self) -> _Link:
        if self.sharded:
            return _ShardedLink(self.pubsub_client)
        return _PlainLink(self.pubsub_client.connection_pool)

    def _listen(self) -> None:
        backoff = 0.1
        first = True
        while not self._closed:
            link: Optional[_Link] = None
            try:
                for event in list(self._confirmed.values()):
                    event.clear()
                self._held = None if first else []
                # Connect first; once ``_link`` is set, ``subscribe`` sends its own command,
                # and every channel subscribed before that is in the list read next.
                link = self._connect()
                self._link = link
                self._connected.set()
                channels = list(self._channels)
                if channels:
                    link.send("subscribe", *(self._pubsub_channel(c) for c in channels))
                if not first:
                    self.reconnects += 1
                    logger.warning("Reconnected to Redis; catching up %d channels", len(channels))
                backoff = 0.1
                self._read(link)
            except Exception as exc:  # the listener must outlive anything Redis sends it
                if self._closed:
                    break
                logger.warning("Lost Redis pub/sub (%r); retrying in %.1fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                self._connected.clear()
                self._link = None
                first = False
                if link is not None:
                    link.close()

    def _read(self, link: _Link) -> None:
        confirmed = self._confirmed
        while not self._closed:
            if self._held is not None and all(event.is_set() for event in list(confirmed.values())):
                self._catch_up()
            subscribed: List[str] = []
            for kind, name, data in link.read():
                if kind == b"message" or kind == b"smessage":
                    if subscribed:
                        self._confirm(subscribed)  # no later message may pass a head read after it
                        subscribed = []
                    self._on_payload(self._channel_of(name.decode("utf-8")), data)
                elif kind == b"subscribe" or kind == b"ssubscribe":
                    subscribed.append(self._channel_of(name.decode("utf-8")))
            if subscribed:
                self._confirm(subscribed)

    def _confirm(self, channels: List[str]) -> None:
        """Tell the streams waiting in ``ready`` that ``channels`` are subscribed. A channel new
        to this process first gets its history's head as its live position, read here for a
        whole batch of subscriptions in one round trip: a new stream then opens at once, with
        no history read of its own (see ``live_position``)."""
        fresh = [c for c in channels if c not in self._last]
        if fresh and not self.sharded:  # a cluster's keys are on several shards: no batch
            try:
                heads = self._heads(keys=[self._history_key(c) for c in fresh])
            except _CONNECTION_ERRORS as exc:
                logger.warning("Could not read the heads of %d channels: %s", len(fresh), exc)
            else:
                for channel, head in zip(fresh, heads):
                    position = parse_position(_text(head))
                    if position is not None and channel in self._channels:
                        self._last.setdefault(channel, position)
        for channel in channels:
            event = self._confirmed.get(channel)
            if event is not None:
                event.set()

    def _on_payload(self, channel: str, payload: bytes) -> None:
        head, _, body = payload.partition(b"\n")
        position_bytes, _, event_id = head.partition(b" ")
        position_text = position_bytes.decode()
        position = parse_position(position_text)
        if position is not None:
            # With no publisher's id, the event's id is its position as Redis wrote it.
            self._on_message(Message(channel, position, event_id.decode("utf-8") or position_text, body))

    def _on_message(self, message: Message) -> None:
        channel = message.channel
        if channel not in self._channels:
            return
        if self._held is not None:
            self._held.append(message)
            return
        last = self._last.get(channel)
        if last is None or message.position > last:
            self._last[channel] = message.position
        assert self._deliver is not None
        self._deliver(message)

    def _catch_up(self) -> None:
        """Deliver, in order, what was published while the pub/sub connection was down."""
        caught: List[Message] = []
        for channel in list(self._channels):
            last = self._last.get(channel)
            if last is None:
                continue
            # A Redis that cannot answer yet (still loading its data after a restart) raises
            # here: the listener reconnects after its backoff and catches up again.
            replay = self.replay(channel, last)
            if replay.missed:
                # History no longer reaches back to what this process delivered last: its
                # streams reconnect and replay (or hear of the gap) from their own cursors.
                assert self._lost is not None
                self._lost(channel)
                self._last.pop(channel, None)
                continue
            caught.extend(replay.messages)
        held = self._held or []
        self._held = None
        for message in caught + held:
            self._on_message(message)

    def close(self) -> None:
        """Stop the listener (it closes its own pub/sub connection) and release connections."""
        self._closed = True
        link = self._link
        if link is not None:
            link.close()  # wakes the listener from its blocking read
        if self._listener is not None and self._listener is not threading.current_thread():
            # redis-py may try one reconnect (socket_connect_timeout, 5 s) before giving up.
            self._listener.join(6)
        self.client.close()
        if self.pubsub_client is not self.client:
            self.pubsub_client.close()


class _Link:
    """The pub/sub connection as the listener uses it: ``read`` blocks until replies arrive and
    returns them as ``[kind, channel, data]`` lists, kind and channel in bytes."""

    def send(self, command: str, *channels: str) -> None:
        raise NotImplementedError

    def read(self) -> List[List[Any]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _PlainLink(_Link):
    """One Redis server's pub/sub connection, parsed with hiredis straight off the socket.

    redis-py makes the connection (TLS, AUTH, the client name, keepalive) and sends the
    commands; its ``PubSub`` reader is left out: per message, it costs several times what
    the fan-out to the streams does.
    """

    def __init__(self, pool: Any) -> None:
        # RESP2, whatever the URL asks for: pub/sub replies are then plain arrays.
        self.connection = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
        self.connection.connect()
        self.sock = self.connection._sock
        # Reads wait as long as the connection is quiet; TCP keepalive finds a dead one.
        self.sock.settimeout(None)
        self.reader = hiredis.Reader()
        self.buffer = memoryview(bytearray(65536))
        self.lock = threading.Lock()  # one command at a time on the socket

    def send(self, command: str, *channels: str) -> None:
        with self.lock:
            self.connection.send_command(command.upper(), *channels, check_health=False)

    def read(self) -> List[List[Any]]:
        size = self.sock.recv_into(self.buffer)
        if not size:
            raise ConnectionError("Redis closed the pub/sub connection")
        self.reader.feed(self.buffer, 0, size)  # type: ignore[arg-type]  # any buffer works
        replies: List[List[Any]] = []
        while True:
            reply = self.reader.gets()
            if reply is False:
                return replies
            if isinstance(reply, hiredis.ReplyError):
                raise reply
            replies.append(reply)

    def close(self) -> None:
        try:
            self.connection.disconnect()
        except Exception:  # closing a connection that the other side already cut
            pass


class _ShardedLink(_Link):
    """A Redis Cluster's sharded pub/sub through redis-py, which holds a connection per shard
    and is polled shard by shard, briefly each time."""

    def __init__(self, client: Any) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.ping()

    def send(self, command: str, *channels: str) -> None:
        getattr(self.pubsub, "s" + command)(*channels)

    def read(self) -> List[List[Any]]:
        reply = self.pubsub.get_sharded_message(timeout=0.02 if self.pubsub.subscribed else 1.0)
        if reply is None:
            return []
        return [[_bytes(reply["type"]), _bytes(reply["channel"]), reply["data"]]]

    def close(self) -> None:
        try:
            self.pubsub.close()
        except Exception:  # closing a connection that the other side already cut
            pass


def _bytes(value: Union[bytes, str]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


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
        try:
            for key, limit in caps:
                redis_key = f"{self.prefix}:n:{{{key}}}"
                if not self._acquire(keys=[redis_key], args=[now, now + self.lease, member, limit]):
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
