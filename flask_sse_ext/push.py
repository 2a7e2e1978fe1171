"""Direct writes (``SSE_DIRECT_WRITES``): an event written to a waiting stream's socket by the
greenlet that delivers it.

A stream under gunicorn's gevent worker spends most of its life waiting for its next event.
Waking its greenlet, switching into it and passing a chunk through gunicorn costs several
times the ``send`` itself, once per stream and event. While a stream waits with nothing
queued (``Client.parked``), the hub writes the event to its socket instead: the same bytes,
framed as gunicorn frames a chunk, with one non-blocking ``send``. What the socket does not
take at once (``Client.pending``) is sent by the stream's greenlet before anything else, and
events that come meanwhile queue behind it, so the order holds.
"""

from __future__ import annotations

import socket
from abc import abstractmethod
from typing import Any, Dict, Optional

from .brokers.base import Message, Position
from .client import GONE, RESET, Client
from .compression import GzipEncoder
from .event import comment
from .hub import Hub
from .sendwatch import abort

__all__ = ["DirectWrites", "HEARTBEAT"]

HEARTBEAT = comment()


def _chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk, as gunicorn writes each chunk of a body."""
    return b"%X\r\n%b\r\n" % (len(data), data)


_HEARTBEAT_CHUNK = _chunk(HEARTBEAT)


class DirectWrites:
    """The part of a stream that other greenlets write to (``hub.Writer``). The stream sets
    ``response`` to gunicorn's response (``serving.server_response``) once it may be
    written to this way."""

    __slots__ = ()

    hub: Hub
    client: Client
    sock: Optional[socket.socket]
    positions: Dict[str, Position]
    encoder: Optional[GzipEncoder]
    response: Any

    @abstractmethod
    def _frame(self, message: Message) -> bytes:
        """``message`` as this stream sends it."""

    def _raw(self, data: bytes) -> bytes:
        """Bytes of this stream's own (a heartbeat, its opening), compressed if it is."""
        return data if self.encoder is None else self.encoder.raw(data)

    def push(self, message: Message) -> None:
        """Write ``message`` now (``Client.put``, while the stream waits with nothing queued)."""
        positions = self.positions
        if message.position <= positions[message.channel]:
            return  # sent by a replay or catch-up
        positions[message.channel] = message.position
        data = self._frame(message)
        if not self.response.chunked:
            chunk = data
        elif data is message.frame:
            # The same chunk for every stream that writes the event as it is: made once.
            if message.chunk is None:
                message.chunk = _chunk(data)
            chunk = message.chunk
        else:
            chunk = _chunk(data)
        stats = self.hub.stats
        stats.delivered += 1
        stats.pushed += 1
        self.client.active = True
        self._send(chunk, len(data))

    def beat(self) -> None:
        """Write a heartbeat the same way (the hub's ticker)."""
        data = self._raw(HEARTBEAT)
        if not self.response.chunked:
            self._send(data, len(data))
        else:
            self._send(_HEARTBEAT_CHUNK if self.encoder is None else _chunk(data), len(data))

    def _send(self, chunk: bytes, size: int) -> None:
        """Hand ``chunk`` to the kernel without blocking, leaving the rest to ``flush``.
        ``size`` is what it carries of the body, counted for gunicorn's access log."""
        self.response.sent += size
        if self.client.pending is not None:  # never ahead of what waits
            self.client.pending += chunk
            return
        try:
            sent = self.sock.send(chunk)  # type: ignore[union-attr]
        except BlockingIOError:
            sent = 0
        except OSError:
            self.client.close(GONE)
            return
        if sent < len(chunk):
            self.client.pending = chunk[sent:]
            self.client.wake.set()

    def flush(self) -> None:
        """Send the rest of a direct write, from the stream's greenlet, waiting for the socket
        as gunicorn would; or, on a stream that ends at once, reset the connection: nothing
        may follow a chunk cut short."""
        client = self.client
        data, client.pending = client.pending, None
        if client.closed in RESET:
            abort(self.sock)  # type: ignore[arg-type]
            return
        try:
            self.response.sock.sendall(data)
        except OSError:
            client.close(GONE)
