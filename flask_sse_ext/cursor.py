"""Compound cursors: one ``Last-Event-ID`` that resumes every channel of a multi-channel stream.

A compound cursor is ``~`` followed by one token per channel, in the sorted order of the
stream's channel names, joined by ``.``; a token is the position's milliseconds in base 36,
with ``-`` and the sequence in base 36 when it is not zero. It uses only letters, digits and
``~.-_``, so a browser may send it cross-origin, and it stays short. A token ``_`` (a channel
the client adds to a stream it resumes, as a shared tab's leader does) starts that channel from
now.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Union

from .brokers.base import UNKNOWN, Cursor, Position, Unknown, format_position

__all__ = ["encode_compound", "decode_compound", "cursors_for", "current_id"]

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_TOKEN = re.compile(r"([0-9a-z]{1,13})(?:-([0-9a-z]{1,13}))?")
#: A Redis stream id's parts are 64-bit: a larger one is no position either broker handed out.
_LIMIT = 2**64


def _b36(number: int) -> str:
    if number == 0:
        return "0"
    out = []
    while number:
        number, rem = divmod(number, 36)
        out.append(_DIGITS[rem])
    return "".join(reversed(out))


def encode_compound(positions: Sequence[Position]) -> str:
    return "~" + ".".join(_b36(ms) + ("-" + _b36(seq) if seq else "") for ms, seq in positions)


def decode_compound(text: str, count: int) -> Optional[List[Optional[Position]]]:
    """The positions in ``text`` (``None`` for a channel that starts from now), or ``None`` if it
    is not a compound cursor of ``count`` channels."""
    if not text.startswith("~") or len(text) > 28 * count:
        return None
    positions: List[Optional[Position]] = []
    for token in text[1:].split("."):
        if token == "_":
            positions.append(None)
            continue
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        ms, seq = int(match.group(1), 36), int(match.group(2) or "0", 36)
        if ms >= _LIMIT or seq >= _LIMIT:
            return None
        positions.append((ms, seq))
    return positions if len(positions) == count else None


def cursors_for(channels: Sequence[str], cursor: Union[str, Unknown, None]) -> List[Cursor]:
    """Per channel: what to replay after (``None`` means nothing, start live)."""
    if cursor is None or cursor is UNKNOWN:
        return [cursor] * len(channels)
    if len(channels) == 1:
        return [cursor]
    positions = decode_compound(cursor, len(channels))
    if positions is None:
        return [UNKNOWN] * len(channels)
    return list(positions)


def current_id(positions: Dict[str, Position]) -> str:
    """The id that resumes a stream where ``positions`` stand: the position itself on one
    channel, a compound cursor on several."""
    if len(positions) == 1:
        return format_position(next(iter(positions.values())))
    return encode_compound(list(positions.values()))
