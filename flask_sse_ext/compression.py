"""gzip event streams, each event compressed once for every client that receives it.

A gzip stream is a 10-byte header, a raw DEFLATE stream and an 8-byte trailer (CRC-32 and
length of the uncompressed data). DEFLATE lets a stream be a sequence of blocks that each
start on a byte boundary and refer to nothing before them, provided the compressor's
dictionary is reset: a fresh compressor ended with ``Z_FULL_FLUSH`` gives exactly such a
*piece* (its last block is not final). Pieces can then be concatenated in any order, so each
event's frame is compressed once, kept on its ``Message``, and shared by every gzip stream that
sends it; a stream makes only its header, a running CRC-32 (a fast pass over the uncompressed
bytes, no compression) and, at the end, the final empty block and the trailer.

Bytes that differ per stream (the opening ``retry:`` line, a multi-channel stream's ``id:``
lines, heartbeats) and frames below the size threshold go in *stored* blocks: copied as they
are, five bytes of overhead, no compressor. Every piece flushes: nothing waits in a compressor.
"""

from __future__ import annotations

import struct
import zlib
from typing import Dict, Optional

from .brokers.base import Message
from .event import frame

__all__ = ["GzipEncoder", "accepts_gzip", "deflate_piece", "stored_piece", "COMPRESSED_HEADERS"]

#: Added to a compressed stream's headers (the endpoint adds ``Vary: Accept-Encoding`` to
#: every stream while compression is on). No Content-Length: the stream has no end.
COMPRESSED_HEADERS = {"Content-Encoding": "gzip"}

# Magic, CM=deflate, no flags, no mtime, XFL=0, OS=255 (unknown).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# A final block of fixed Huffman codes holding only its end-of-block code.
_FINAL_BLOCK = b"\x03\x00"
_STORED_MAX = 0xFFFF


def stored_piece(data: bytes) -> bytes:
    """``data`` as non-final stored DEFLATE blocks (uncompressed), starting and ending on a
    byte boundary."""
    out = []
    for start in range(0, len(data), _STORED_MAX):
        part = data[start : start + _STORED_MAX]
        out.append(b"\x00" + struct.pack("<HH", len(part), len(part) ^ 0xFFFF) + part)
    return b"".join(out)


def deflate_piece(data: bytes, level: int) -> bytes:
    """``data`` compressed into self-contained, non-final DEFLATE blocks ending on a byte
    boundary: a fresh compressor (no back-reference before it) closed by a full flush."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def accepts_gzip(header: Optional[str]) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip: its ``gzip`` (or ``x-gzip``) item,
    else its ``*`` item, has a quality above 0 (``q`` may stand among other parameters)."""
    if not header:
        return False
    qualities: Dict[str, float] = {}
    for item in header.split(","):
        name, *params = (part.strip().lower() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities[name] = quality
    for name in ("gzip", "x-gzip", "*"):
        if name in qualities:
            return qualities[name] > 0
    return False


class GzipEncoder:
    """The per-stream part of a gzip stream: header first, a running CRC-32 and length, the
    trailer last. ``min_bytes``: frames shorter than this are stored, not compressed."""

    __slots__ = ("crc", "length", "min_bytes", "level", "started", "ended")

    def __init__(self, min_bytes: int, level: int = 6) -> None:
        self.crc = 0
        self.length = 0
        self.min_bytes = min_bytes
        self.level = level
        self.started = False
        self.ended = False

    def _head(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        return _GZIP_HEADER

    def raw(self, data: bytes) -> bytes:
        """Bytes of this stream alone, stored (or compressed if at least ``min_bytes``)."""
        if not data:
            return self._head()
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        piece = deflate_piece(data, self.level) if len(data) >= self.min_bytes else stored_piece(data)
        return self._head() + piece

    def frame(self, message: Message) -> bytes:
        """``message.frame``, compressed once per message and shared."""
        data = message.frame
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        piece = message.gzip
        if piece is None:
            piece = deflate_piece(data, self.level) if len(data) >= self.min_bytes else stored_piece(data)
            message.gzip = piece
        # The shared piece itself, not a copy, once the header is out (the opening chunk).
        return piece if self.started else self._head() + piece

    def body(self, message: Message, event_id: str) -> bytes:
        """``message``'s body (compressed once, shared) and this stream's own ``id:`` line
        (stored): a multi-channel stream's frame, whose id is the stream's cursor."""
        body = message.body
        tail = frame(b"", event_id)
        self.crc = zlib.crc32(tail, zlib.crc32(body, self.crc))
        self.length += len(body) + len(tail)
        piece = message.gzip_body
        if piece is None:
            piece = deflate_piece(body, self.level) if len(body) >= self.min_bytes else stored_piece(body)
            message.gzip_body = piece
        return self._head() + piece + stored_piece(tail)

    def end(self) -> bytes:
        """The final empty block and the trailer; ``b""`` once ended."""
        if self.ended:
            return b""
        self.ended = True
        return self._head() + _FINAL_BLOCK + struct.pack("<II", self.crc, self.length & 0xFFFFFFFF)
