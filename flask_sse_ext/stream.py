"""The streaming response: headers at once, ``retry:``, replay, live events, heartbeats, close."""

from __future__ import annotations

import heapq
import inspect
import logging
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, Optional, Tuple, Union

from flask import Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

from .brokers.base import Broker, BrokerError, Message, Position, Replay, Unknown
from .client import EXPIRED, GONE, LAGGED, RESET, RESYNC, SHUTDOWN, TIMED_OUT, Client
from .compression import COMPRESSED_HEADERS, GzipEncoder
from .conflation import conflate
from .cursor import current_id, cursors_for, encode_compound
from .event import cursor_comment, frame, missed_event, retry_line, unavailable
from .hub import Hub
from .push import HEARTBEAT, DirectWrites
from .sendwatch import limit_send_buffer, shutdown
from .serving import raw_socket, server_response, tls_layer, unwatch, watch_disconnect

__all__ = ["HEADERS", "open_stream"]

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_ENDS_AT_ONCE = (LAGGED, TIMED_OUT, GONE, RESYNC, EXPIRED)

logger = logging.getLogger(__name__)


class _Stream(DirectWrites):
    """The response body. Its first chunk subscribes, replays and carries the ``retry:`` hint;
    every later one is everything that was waiting, or a heartbeat. It owns all it holds:
    ``close`` (or, if the server drops the response unread, garbage collection) releases it.

    A worker holds thousands of these, so each holds as few objects as it can: no closures,
    no finalizer object (every extra object per stream is work for each full collection).

    Under gunicorn's gevent worker, while it waits with nothing queued, the greenlet that
    delivers an event may write it to the socket itself (``push.DirectWrites``).
    """

    __slots__ = (
        "hub",
        "broker",
        "channels",
        "cursor",
        "retry",
        "max_age",
        "allowed",
        "on_close",
        "client",
        "positions",
        "single",
        "opened",
        "finished",
        "sock",
        "tls",
        "watcher",
        "released",
        "farewell",
        "encoder",
        "interval",
        "next_write",
        "backlog",
        "poll",
        "pushable",
        "response",
    )

    def __init__(
        self,
        hub: Hub,
        broker: Broker,
        channels: Tuple[str, ...],
        cursor: Union[str, Unknown, None],
        *,
        retry: int,
        max_age: Optional[float],
        queue_size: int,
        queue_bytes: Optional[int],
        send_buffer: Optional[int],
        environ: Dict[str, Any],
        allowed: Callable[[str], bool],
        on_close: Optional[Callable[[Optional[str]], None]],
        farewell: Optional[bytes] = None,
        encoder: Optional[GzipEncoder] = None,
        max_rate: Optional[float] = None,
        poll: Optional[float] = None,
        direct_writes: bool = True,
    ) -> None:
        self.hub = hub
        self.broker = broker
        self.channels = channels
        self.cursor = cursor
        self.retry = retry
        self.max_age = max_age
        self.allowed = allowed
        self.on_close = on_close
        self.sock = raw_socket(environ)
        self.tls = tls_layer(environ) if self.sock is not None else None
        if self.sock is not None and send_buffer is not None:
            limit_send_buffer(self.sock, send_buffer)
        self.client = Client(channels, queue_size, self.sock, hub.stats, queue_bytes)
        self.positions: Dict[str, Position] = {}
        self.single = len(channels) == 1
        self.opened = False
        self.finished = False
        self.watcher: Any = None
        self.released = False
        #: The last event, sent when the stream ends at its deadline (``reauth``).
        self.farewell = farewell
        #: Compresses what the stream writes (``None``: sent as it is).
        self.encoder = encoder
        #: With ``?max_rate=``: the least time between two writes; meanwhile keyed events
        #: waiting in the queue are conflated.
        self.interval = None if max_rate is None else 1.0 / max_rate
        self.next_write = 0.0
        self.backlog = False
        #: A long poll: the longest wait (seconds) for an event when none is after the cursor.
        self.poll = poll
        #: Whether other greenlets may write to it (``push``), on a plain socket: not a poll or
        #: a rate-limited stream, which write on their own schedule. Then the server's
        #: response (``_Response``), kept if it is gunicorn's (``server_response``).
        self.pushable = direct_writes and self.sock is not None and self.tls is None
        self.pushable = self.pushable and poll is None and max_rate is None
        self.response: Any = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if not self.opened:
            self.opened = True
            if self.response is not None:
                frame = inspect.currentframe()
                self.response = server_response(frame and frame.f_back, self.response)
            return self._open()
        client = self.client
        while True:
            if self.finished or client.closed in _ENDS_AT_ONCE:
                if client.closed == EXPIRED and self.farewell is not None:
                    chunk, self.farewell = self.farewell, None
                    return self._raw(chunk)
                return self._end()
            if client.closed == SHUTDOWN and not client.queue:
                if self.sock is not None:
                    shutdown(self.sock, socket.SHUT_RD)
                return self._end()
            if self.response is None:
                client.wake.wait()
            else:
                client.parked = self
                try:
                    client.wake.wait()
                finally:
                    client.parked = None
            if self.interval is not None and not self.backlog:
                _hold(self)
            client.wake.clear()
            if client.pending is not None:
                self.flush()
                if client.closed in RESET:
                    continue
            chunk = self._drain()
            # A drain stops at CHUNK_BYTES; the rest goes out without waiting out another
            # ?max_rate= interval, or a busy channel would outgrow the queue and be cut.
            self.backlog = bool(client.queue)
            if chunk:
                client.active = True
                if self.poll is not None:
                    self.finished = True  # a poll ends with its first events
                return chunk
            if client.beat_due:
                client.beat_due = False
                return self._raw(HEARTBEAT)

    def _end(self) -> bytes:
        """The end of the body: a gzip stream's trailer (not after a reset: nobody reads it)."""
        encoder = self.encoder
        if encoder is None or encoder.ended or self.client.closed in RESET:
            raise StopIteration
        return encoder.end()

    def _open(self) -> bytes:
        """Subscribe first, then read history (or, with no cursor, each channel's newest
        position), so nothing published meanwhile falls between the two; ``_drain`` drops live
        events that the replay already covers."""
        channels, client = self.channels, self.client
        after = cursors_for(channels, self.cursor)
        self.hub.attach(client)
        try:
            self.broker.ready(channels)
            live = self.broker.live_position(channels[0]) if self.single and self.poll is None else None
            if live is not None and self.cursor is None:
                # Nothing to replay and the ids are the events' own: start where live delivery
                # stands, with no history read (no round trip to the broker).
                replays = [Replay([], live, False)]
            else:
                replays = [self.broker.replay(c, a) for c, a in zip(channels, after)]
        except BrokerError as exc:
            logger.warning("Stream ended at once, the broker is unavailable: %s", exc)
            self.finished = True
            return self._raw(unavailable(self.retry))
        replays = [
            r if not r.messages or self.allowed(c) else r._replace(messages=[])
            for c, r in zip(channels, replays)
        ]
        positions = self.positions
        multi = not self.single
        missed = []
        for channel, replay, position in zip(channels, replays, after):
            if replay.missed:
                missed.append(channel)
            # A multi-channel replay's ids advance from the client's cursor, channel by channel.
            if multi and not replay.missed and isinstance(position, tuple):
                positions[channel] = position
            else:
                positions[channel] = replay.head
        raw = self._raw
        chunks = [raw(retry_line(self.retry))]
        if missed:
            chunks.append(raw(missed_event(missed, current_id(positions))))
        # Replay sends every event without a key and the newest of each key (conflation).
        merged = conflate(heapq.merge(*(r.messages for r in replays), key=lambda m: m.position))
        for message in merged:
            if multi:
                positions[message.channel] = message.position
                chunks.append(self._multi_frame(message))
            else:
                chunks.append(message.frame if self.encoder is None else self.encoder.frame(message))
        self.hub.stats.replayed += len(merged)
        for channel, replay in zip(channels, replays):
            positions[channel] = replay.head
        if multi or (self.poll is not None and not merged):
            # The cursor as a comment: sse-client.js resumes a stream cut before its first
            # event (or a poll that ends with none) from here on every channel; other clients
            # ignore it (no phantom event).
            chunks.append(raw(cursor_comment(current_id(positions))))
        if self.poll is not None and (merged or missed):
            self.finished = True  # a poll answers at once with what is after the cursor
        if self.sock is not None:
            self.watcher = watch_disconnect(self.sock, client.close, GONE, tls=self.tls)
        if self.max_age is not None:
            client.deadline = time.monotonic() + self.max_age
        if self.poll is not None and (
            client.deadline is None or client.deadline > time.monotonic() + self.poll
        ):
            client.deadline = time.monotonic() + self.poll
            self.farewell = None  # the poll's own end, not the credential's
        return b"".join(chunks)

    def _drain(self) -> bytes:
        positions = self.positions
        out = []
        for message in self.hub.take(self.client):
            if message.position > positions[message.channel]:  # else sent by a replay or catch-up
                positions[message.channel] = message.position
                out.append(self._frame(message))
        self.hub.stats.delivered += len(out)
        return out[0] if len(out) == 1 else b"".join(out)

    def _frame(self, message: Message) -> bytes:
        if not self.single:
            return self._multi_frame(message)
        return message.frame if self.encoder is None else self.encoder.frame(message)

    def _multi_frame(self, message: Message) -> bytes:
        cursor = encode_compound(list(self.positions.values()))
        if self.encoder is not None:
            return self.encoder.body(message, cursor)
        return frame(message.body, cursor)

    def close(self) -> None:
        if self.watcher is not None:
            unwatch(self.watcher)
            self.watcher = None
        if not self.released:
            self.released = True
            self.hub.release(self.client, self.on_close)

    def __del__(self) -> None:
        if not self.released and not sys.is_finalizing():
            # Dropped unsent and collected: the hub's ticker releases what it held (collection
            # may run anywhere, even while this greenlet holds the hub's lock).
            self.released = True
            self.hub.orphans.append((self.client, self.on_close))


class _Response(Response):
    """Hands a stream that may be written to directly (``pushable``) the server's response:
    the object whose ``start_response`` the app is called with."""

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = self.response
        if isinstance(body, _Stream) and body.pushable:
            body.response = getattr(start_response, "__self__", None)
        return super().__call__(environ, start_response)


def _hold(stream: _Stream) -> None:
    """Wait out the rest of ``?max_rate=``'s interval since the last write: what arrives
    meanwhile waits in the queue, where a newer keyed event replaces an older one."""
    now = time.monotonic()
    if stream.next_write > now:
        time.sleep(stream.next_write - now)
    stream.next_write = max(now, stream.next_write) + stream.interval  # type: ignore[operator]


def open_stream(
    hub: Hub,
    broker: Broker,
    channels: Tuple[str, ...],
    cursor: Union[str, Unknown, None],
    *,
    retry: int,
    max_age: Optional[float],
    queue_size: int,
    environ: Dict[str, Any],
    queue_bytes: Optional[int] = None,
    send_buffer: Optional[int] = None,
    allowed: Callable[[str], bool] = lambda channel: True,
    on_close: Optional[Callable[[Optional[str]], None]] = None,
    farewell: Optional[bytes] = None,
    encoder: Optional[GzipEncoder] = None,
    max_rate: Optional[float] = None,
    poll: Optional[float] = None,
    direct_writes: bool = True,
) -> Response:
    """The streaming response for ``channels`` (sorted, unique), resuming after ``cursor``.

    Nothing is subscribed until the server starts sending the body. A client whose queue holds
    ``queue_size`` events, or ``queue_bytes`` bytes, is cut; ``send_buffer`` caps the kernel's
    send buffer of the connection. ``allowed`` is asked again
    before a channel's history is replayed; ``on_close`` runs once when the stream ends (or is
    dropped unsent), with the reason it was cut, or ``None``. ``farewell`` is sent last when
    the stream ends at ``max_age``. ``encoder`` compresses the body (gzip).
    With ``max_rate`` the stream writes at most that many times a second, conflating keyed
    events meanwhile; with ``poll`` it is a long poll: it ends with the events after the
    cursor, or with the first live ones within ``poll`` seconds, or with the cursor alone.
    ``direct_writes`` lets other greenlets write events to the socket while the stream waits.
    """
    body = _Stream(
        hub,
        broker,
        channels,
        cursor,
        retry=retry,
        max_age=max_age,
        queue_size=queue_size,
        queue_bytes=queue_bytes,
        send_buffer=send_buffer,
        environ=environ,
        allowed=allowed,
        on_close=on_close,
        farewell=farewell,
        encoder=encoder,
        max_rate=max_rate,
        poll=poll,
        direct_writes=direct_writes,
    )
    headers = HEADERS if encoder is None else {**HEADERS, **COMPRESSED_HEADERS}
    # direct_passthrough: werkzeug hands the body to the server as it is, unwrapped.
    return _Response(body, mimetype="text/event-stream", headers=headers, direct_passthrough=True)
