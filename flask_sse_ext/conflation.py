"""Conflation: for events published with a key, only the newest of each key need reach a
client that is behind.

A client that keeps up gets every event. A client whose queue still holds an event of the same
channel and key when the next one comes gets the newer one in its place (at the newer one's
place in the order), so its queue holds at most one event per key, and it is not cut for lag
on those events. A replay keeps every event without a key and the newest of each key, in order.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

from .brokers.base import Message

__all__ = ["conflate", "replace_keyed"]


def conflate(messages: Iterable[Message]) -> List[Message]:
    """``messages`` (in order) without the keyed ones that a later one of the same channel
    and key supersedes."""
    items = list(messages)
    newest: Dict[Tuple[str, str], Message] = {}
    for message in items:
        if message.key is not None:
            newest[(message.channel, message.key)] = message
    if not newest:
        return items
    return [m for m in items if m.key is None or newest[(m.channel, m.key)] is m]


def replace_keyed(queue: List[Message], message: Message) -> int:
    """Drop from ``queue`` the event that ``message`` (keyed) supersedes, if one waits there;
    the bytes dropped. A queue holds at most one event per key, so one scan finds it."""
    key, channel = message.key, message.channel
    for index, old in enumerate(queue):
        if old.key == key and old.channel == channel:
            del queue[index]
            return len(old.frame)
    return 0
