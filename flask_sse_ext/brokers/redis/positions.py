"""Where live delivery stands per channel, and how a channel catches up from history.

Pub/sub is at-most-once; history is the truth. ``Positions`` keeps the last position this
process delivered on each channel, drops what history already delivered, and replays what a
dropped link or a lost message left out. What history no longer holds is reported through
``lost``, and the streams tell their clients.
"""

from __future__ import annotations

import logging
from typing import Callable, Collection, Dict, Sequence

from ..base import Message, Position, Replay, parse_position

__all__ = ["Positions"]

logger = logging.getLogger(__name__)


class Positions:
    """The last position delivered per channel of ``channels`` (the listener's live set)."""

    def __init__(
        self,
        channels: Collection[str],
        *,
        replay: Callable[[str, Position], Replay],
        heads: Callable[[Sequence[str]], Dict[str, Position]],
    ) -> None:
        self.channels = channels
        self.replay = replay
        self.heads = heads
        #: Where live messages go, and who hears of a channel that lost events: the hub's,
        #: set by ``Listener.start`` (called straight, as they run once per event).
        self.deliver: Callable[[Message], None] = _not_started
        self.lost: Callable[[str], None] = _not_started
        self.last: Dict[str, Position] = {}
        #: Channels whose live events went missing while their link was up (then replayed).
        self.gaps = 0

    def start_fresh(self, channels: Sequence[str]) -> None:
        """New channels start at their history's head, read for all of them in one round
        trip. Raises on a Redis error."""
        for channel, head in self.heads(channels).items():
            if channel in self.channels:
                self.last.setdefault(channel, head)

    def check(self, heads: Dict[str, Position], owned: Callable[[str], bool]) -> None:
        """Replay the channels whose history head is past what was delivered: heads read
        before a ping whose answer has arrived, so every live message they cover came first."""
        for channel, head in heads.items():
            last = self.last.get(channel)
            if owned(channel) and last is not None and head > last:
                self.gaps += 1
                logger.warning("Live events of channel %r went missing; replaying them", channel)
                self.catch_up(channel)

    def catch_up(self, channel: str) -> None:
        """Deliver, in order, what ``channel``'s history holds after the last position this
        process delivered. Raises on a Redis error: the link is then renewed, and retried."""
        last = self.last.get(channel)
        if last is None:
            return
        replay = self.replay(channel, last)
        if replay.missed:
            # History no longer holds what this process delivered last (trimmed, or lost in a
            # failover): its streams end, and each client resumes from its own cursor or is
            # told what it missed.
            self.last[channel] = replay.head
            self.lost(channel)
            return
        if replay.messages:
            logger.info("Caught up %d events of channel %r from history", len(replay.messages), channel)
        for message in replay.messages:
            self.on_message(message)

    def on_payload(self, channel: str, payload: bytes) -> None:
        head, _, body = payload.partition(b"\n")
        position_bytes, _, event_id = head.partition(b" ")
        position_bytes, tab, key = position_bytes.partition(b"\t")  # a conflation key
        position_text = position_bytes.decode()
        position = parse_position(position_text)
        if position is not None:
            # With no publisher's id, the event's id is its position as Redis wrote it.
            event_text = event_id.decode("utf-8") or position_text
            self.on_message(Message(channel, position, event_text, body, key.decode() if tab else None))

    def on_message(self, message: Message) -> None:
        channel = message.channel
        if channel not in self.channels:
            return
        last = self.last.get(channel)
        if last is not None and message.position <= last:
            return  # delivered already, from history
        self.last[channel] = message.position
        self.deliver(message)


def _not_started(_: object) -> None:
    raise RuntimeError("the Redis listener delivers only once started")
