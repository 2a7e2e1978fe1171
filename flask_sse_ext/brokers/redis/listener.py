"""Live delivery for one process: a pub/sub link per node that serves its channels.

Each link's reader delivers live messages; a channel confirmed on a new link first catches up
from history (``positions.py``). A supervisor pings every link (one that does not answer in
time is cut), has the history heads compared with what was delivered (a gap is replayed), and
after any fault learns the layout again (a cluster's slot map, Sentinel's primary), moves
channels to the node that serves them now, and reconnects with capped backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

from ..base import Message, Position, Replay
from .links import Link
from .positions import Positions
from .topology import Target, Topology

__all__ = ["Listener"]

logger = logging.getLogger(__name__)

_ERRORS = (Exception,)  # the listener must outlive anything Redis or the network does


class _Reader:
    """One node's link and the channels it carries."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.channels: Set[str] = set()
        #: Channels whose subscription is not confirmed on the current link yet.
        self.pending: Set[str] = set()
        #: Unsubscribes sent and not yet answered, per channel (any other is Redis's own).
        self.leaving: Dict[str, int] = {}
        self.link: Optional[Link] = None
        self.running = False
        self.stopped = False
        #: The link broke, or the channels came from one that did: its next link reconnects.
        self.failed = False
        self.ping_sent: Optional[float] = None
        #: History heads read just before the last ping: compared once its answer arrives.
        self.heads: Optional[Dict[str, Position]] = None


class Listener:
    """Keeps ``channels`` delivered live (to ``deliver``, given to ``start``), whatever
    happens to Redis.

    ``keys`` maps a channel to its pub/sub key and back; ``replay(channel, position)`` and
    ``heads(channels)`` read history through the command client.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        pubsub_key: Callable[[str], str],
        channel_of: Callable[[str], str],
        replay: Callable[[str, Position], Replay],
        heads: Callable[[Sequence[str]], Dict[str, Position]],
        max_backoff: float = 2.0,
        ping_interval: float = 1.0,
        link_timeout: float = 3.0,
        gap_interval: float = 5.0,
    ) -> None:
        self.topology = topology
        self.pubsub_key = pubsub_key
        self.channel_of = channel_of
        self.max_backoff = max_backoff
        self.ping_interval = ping_interval
        self.link_timeout = link_timeout
        self.gap_interval = gap_interval
        self.sharded = topology.sharded
        self.lock = threading.RLock()
        self.channels: Set[str] = set()
        self.confirmed: Dict[str, threading.Event] = {}
        self.positions = Positions(self.channels, replay=replay, heads=heads)
        self.heads = heads
        self.owner: Dict[str, _Reader] = {}
        self.readers: Dict[str, _Reader] = {}
        #: Channels no node could be found for yet (Redis unreachable): placed by the supervisor.
        self.unplaced: Set[str] = set()
        self.reconnects = 0
        self.closed = False
        self._wake = threading.Event()
        self._relayout = False
        self._retry_at = 0.0
        self._backoff = 0.1
        self._next_gap_check = 0.0
        self._relaying = False
        self._supervisor: Optional[threading.Thread] = None

    # -- what the broker calls -------------------------------------------------------------

    def start(self, deliver: Callable[[Message], None], lost: Callable[[str], None]) -> None:
        self.positions.deliver = deliver
        self.positions.lost = lost
        self._supervisor = threading.Thread(target=self._supervise, name="sse-redis-listener", daemon=True)
        self._supervisor.start()
        self._need_relayout()  # learn the layout now, before the first stream needs it

    def subscribe(self, channel: str) -> None:
        with self.lock:
            self.channels.add(channel)
            self.confirmed[channel] = threading.Event()
            self._place(channel)

    def unsubscribe(self, channel: str) -> None:
        with self.lock:
            self.channels.discard(channel)
            self.confirmed.pop(channel, None)
            self.positions.last.pop(channel, None)
            self.unplaced.discard(channel)
            reader = self.owner.pop(channel, None)
            if reader is not None:
                self._leave(reader, channel)

    def connected(self, channel: str) -> bool:
        """Whether ``channel``'s link is up (its subscription may still be on its way)."""
        reader = self.owner.get(channel)
        return reader is not None and reader.link is not None

    def live_position(self, channel: str) -> Optional[Position]:
        event = self.confirmed.get(channel)
        if event is None or not event.is_set():
            return None
        return self.positions.last.get(channel)

    def note_read(self, channel: str, position: Position) -> None:
        """A stream read ``channel``'s history up to ``position``: where to catch up from if
        no live event comes before the link drops."""
        if channel in self.channels:
            self.positions.last.setdefault(channel, position)

    def request_relayout(self) -> None:
        """A command failed: learn the layout again (at once, or after the current backoff)."""
        self._need_relayout()

    def close(self) -> None:
        self.closed = True
        self._wake.set()
        with self.lock:
            readers = list(self.readers.values())
        for reader in readers:
            self._stop(reader)
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(2)

    # -- placing channels on links ---------------------------------------------------------

    def _place(self, channel: str) -> None:
        """Put ``channel`` on the link of the node that serves it (under the lock)."""
        try:
            target = self.topology.target(self.pubsub_key(channel))
        except _ERRORS as exc:
            logger.info("No Redis node for channel %r yet (%r); placing it later", channel, exc)
            self.unplaced.add(channel)
            self._need_relayout()
            return
        self.unplaced.discard(channel)
        reader = self.readers.get(target.name)
        if reader is None:
            reader = self.readers[target.name] = _Reader(target)
            reader.failed = self._relaying
        old = self.owner.get(channel)
        if old is reader:
            return
        if old is not None:
            self._leave(old, channel)
            self.confirmed[channel].clear()
        self.owner[channel] = reader
        reader.channels.add(channel)
        link = reader.link
        if link is not None:
            reader.pending.add(channel)
            self._send(reader, link, link.subscribe, channel)
        elif not reader.running and not self._relayout:
            self._run(reader)

    def _leave(self, reader: _Reader, channel: str) -> None:
        reader.channels.discard(channel)
        reader.pending.discard(channel)
        link = reader.link
        if link is not None:
            reader.leaving[channel] = reader.leaving.get(channel, 0) + 1
            self._send(reader, link, link.unsubscribe, channel)

    def _send(self, reader: _Reader, link: Link, command: str, channel: str) -> None:
        try:
            link.send(command, self.pubsub_key(channel))
        except _ERRORS as exc:
            # The reader sees the broken link too, and the channel is subscribed on the next.
            logger.info("Redis pub/sub %s of %r deferred to reconnect: %r", command, channel, exc)
            link.abort()

    def _need_relayout(self) -> None:
        self._relayout = True
        self._wake.set()

    def _relayout_now(self) -> None:
        """After a fault: learn the layout, move channels to the nodes that serve them now,
        and start a link for every node that has channels and none."""
        self.topology.refresh()
        with self.lock:
            self._relaying = True
            try:
                for channel in list(self.channels):
                    self._place(channel)
            finally:
                self._relaying = False
            for name, reader in list(self.readers.items()):
                if not reader.channels:
                    self._stop(reader)
                    del self.readers[name]
                elif not reader.running:
                    self._run(reader)

    def _stop(self, reader: _Reader) -> None:
        reader.stopped = True
        link = reader.link
        if link is not None:
            link.abort()

    # -- one link's reader -----------------------------------------------------------------

    def _run(self, reader: _Reader) -> None:
        reader.running = True
        reader.stopped = False
        threading.Thread(target=self._read, args=(reader,), name="sse-redis-link", daemon=True).start()

    def _read(self, reader: _Reader) -> None:
        link: Optional[Link] = None
        try:
            try:
                link = Link(reader.target.connection_class, reader.target.kwargs, self.sharded)
            except _ERRORS as exc:
                reader.failed = True
                logger.warning("Cannot reach Redis node %s (%r); retrying", reader.target.name, exc)
                self._need_relayout()
                return
            with self.lock:
                reader.link = link
                reader.ping_sent = None
                reader.heads = None
                reader.leaving.clear()
                channels = list(reader.channels)
                reader.pending = set(channels)
                for channel in channels:
                    self.confirmed[channel].clear()
                # A cluster takes the channels of one slot per SSUBSCRIBE: one each, then.
                size = 1 if self.sharded else 1000
                for start in range(0, len(channels), size):
                    link.send(link.subscribe, *(self.pubsub_key(c) for c in channels[start : start + size]))
                if reader.failed:
                    reader.failed = False
                    self.reconnects += 1
                    logger.warning(
                        "Reconnected to Redis %s; catching up %d channels", link.name, len(channels)
                    )
            while not reader.stopped and not self.closed:
                self._handle(reader, link.read())
        except _ERRORS as exc:
            if not reader.stopped and not self.closed:
                reader.failed = True
                logger.warning(
                    "Lost Redis pub/sub link to %s (%r); re-reading the layout", reader.target.name, exc
                )
                self._need_relayout()
        finally:
            with self.lock:
                reader.link = None
                reader.running = False
                reader.pending.clear()
            if link is not None:
                link.close()

    def _handle(self, reader: _Reader, replies: List[List[Any]]) -> None:
        confirmed: List[str] = []
        for reply in replies:
            if not isinstance(reply, list):  # PING's answer on a link with no subscription
                if reply == b"PONG":
                    self._on_pong(reader)
                continue
            kind = reply[0]
            if kind == b"message" or kind == b"smessage":
                if confirmed:
                    self._confirm(reader, confirmed)  # no later message may pass a catch-up
                    confirmed = []
                self.positions.on_payload(self.channel_of(reply[1].decode("utf-8")), reply[2])
            elif kind == b"subscribe" or kind == b"ssubscribe":
                channel = self.channel_of(reply[1].decode("utf-8"))
                if channel in reader.pending:
                    reader.pending.discard(channel)
                    confirmed.append(channel)
            elif kind == b"unsubscribe" or kind == b"sunsubscribe":
                self._on_unsubscribed(reader, self.channel_of(reply[1].decode("utf-8")))
            elif kind == b"pong":
                if confirmed:
                    self._confirm(reader, confirmed)
                    confirmed = []
                self._on_pong(reader)
        if confirmed:
            self._confirm(reader, confirmed)

    def _on_unsubscribed(self, reader: _Reader, channel: str) -> None:
        count = reader.leaving.get(channel, 0)
        if count > 1:
            reader.leaving[channel] = count - 1
        elif count == 1:
            del reader.leaving[channel]
        elif channel in reader.channels:
            # Redis dropped the subscription itself: the channel's slot moved to another shard.
            logger.warning(
                "Redis moved channel %r off %s; re-reading the layout", channel, reader.target.name
            )
            self._need_relayout()

    def _confirm(self, reader: _Reader, channels: List[str]) -> None:
        """Subscriptions confirmed on ``reader``'s link. A channel this process delivered
        before catches up from history; a new one starts at its history's head (read for the
        whole batch in one round trip). Then streams waiting in ``ready`` may go on."""
        self._backoff = 0.1  # the node answers: the next fault starts the backoff afresh
        positions = self.positions
        fresh = [c for c in channels if c not in positions.last]
        if fresh:
            try:
                positions.start_fresh(fresh)
            except _ERRORS as exc:
                logger.warning("Could not read the heads of %d channels: %r", len(fresh), exc)
        for channel in channels:
            if channel not in fresh:
                positions.catch_up(channel)
            event = self.confirmed.get(channel)
            if event is not None and self.owner.get(channel) is reader:
                event.set()

    def _on_pong(self, reader: _Reader) -> None:
        reader.ping_sent = None
        heads, reader.heads = reader.heads, None
        if heads:
            self.positions.check(heads, lambda c: self.owner.get(c) is reader and c not in reader.pending)

    # -- the supervisor --------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self.closed:
            wait = self.ping_interval
            if self._relayout or self.unplaced:
                wait = min(wait, max(0.0, self._retry_at - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()
            if self.closed:
                break
            now = time.monotonic()
            if (self._relayout or self.unplaced) and now >= self._retry_at:
                self._relayout = False
                try:
                    self._relayout_now()
                except _ERRORS as exc:
                    logger.warning("Redis layout unknown (%r); retrying in %.1fs", exc, self._backoff)
                    self._relayout = True
                self._retry_at = now + self._backoff
                self._backoff = min(self._backoff * 2, self.max_backoff)
                if self._relayout:
                    continue
            try:
                self._check_links(now)
            except _ERRORS as exc:  # a check that fails is retried at the next tick
                logger.info("Redis link check failed: %r", exc)

    def _check_links(self, now: float) -> None:
        gap_check = now >= self._next_gap_check
        if gap_check:
            self._next_gap_check = now + self.gap_interval
        with self.lock:
            readers = [r for r in self.readers.values() if r.link is not None]
        for reader in readers:
            link = reader.link
            if link is None:
                continue
            if reader.ping_sent is not None:
                if now - reader.ping_sent > self.link_timeout:
                    logger.warning(
                        "Redis node %s did not answer a ping; cutting its link", reader.target.name
                    )
                    link.abort()
                continue
            if gap_check:
                channels = [
                    c for c in list(reader.channels) if c not in reader.pending and c in self.positions.last
                ]
                reader.heads = self.heads(channels) if channels else None
            reader.ping_sent = now
            link.send("PING")
            if reader.link is not link:  # the link broke meanwhile; the next one starts afresh
                reader.ping_sent = None
