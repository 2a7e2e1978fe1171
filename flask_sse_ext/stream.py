"""The streaming response: headers at once, ``retry:``, replay, live events, heartbeats, close."""

from __future__ import annotations

import heapq
import json
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from flask import Response

from .brokers.base import Broker, Message, Position, Replay, format_position
from .cursor import decode_compound, encode_compound
from .event import comment, encode_body, frame, retry_line
from .hub import GONE, LAGGED, SHUTDOWN, Client, Hub
from .serving import socket_abort, socket_end_reads, watch_disconnect

__all__ = ["MISSED_EVENT", "HEADERS", "open_stream"]

#: Sent when history after the client's ``Last-Event-ID`` is no longer known.
MISSED_EVENT = "sse.missed"

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

_HEARTBEAT = comment()


class _Stream:
    """The response body: an iterator of chunks, each everything that was waiting."""

    def __init__(
        self,
        hub: Hub,
        client: Client,
        opening: bytes,
        positions: Dict[str, Position],
        heartbeat: float,
        max_age: Optional[float],
        stop_watch: Optional[Callable[[], None]],
        on_close: Optional[Callable[[Optional[str]], None]] = None,
    ) -> None:
        self.hub = hub
        self.client = client
        self.opening: Optional[bytes] = opening
        self.positions = positions
        self.single = len(positions) == 1
        self.heartbeat = heartbeat
        self.deadline = None if max_age is None else time.monotonic() + max_age
        self.stop_watch = stop_watch
        self.on_close = on_close
        #: Set by ``open_stream``: closes the connection after a shutdown ends the stream.
        self.end_reads: Optional[Callable[[], None]] = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.opening is not None:
            chunk, self.opening = self.opening, None
            return chunk
        client = self.client
        while True:
            if client.closed in (LAGGED, GONE):
                raise StopIteration
            timeout = self.heartbeat
            if self.deadline is not None:
                timeout = min(timeout, self.deadline - time.monotonic())
                if timeout <= 0:
                    raise StopIteration
            if client.wake.wait(timeout):
                client.wake.clear()
                chunk = self._drain()
                if chunk:
                    return chunk
                if client.closed is not None:
                    if client.closed == SHUTDOWN and self.end_reads is not None:
                        self.end_reads()
                    raise StopIteration
            elif self.deadline is None or time.monotonic() < self.deadline:
                return _HEARTBEAT

    def _drain(self) -> bytes:
        queue = self.client.queue
        positions = self.positions
        out = []
        while queue:
            message = queue.popleft()
            if message.position <= positions[message.channel]:
                continue  # already sent by the replay
            positions[message.channel] = message.position
            out.append(message.frame if self.single else self._multi_frame(message))
        self.hub.stats.delivered += len(out)
        return b"".join(out)

    def _multi_frame(self, message: Message) -> bytes:
        return frame(message.body, encode_compound(list(self.positions.values())))

    def close(self) -> None:
        if self.stop_watch is not None:
            self.stop_watch()
            self.stop_watch = None
        self.hub.detach(self.client)
        if self.on_close is not None:
            self.on_close(self.client.closed)
            self.on_close = None


def _missed_event(channels: Sequence[str], cursor_id: str) -> bytes:
    body = encode_body({"channels": list(channels)}, MISSED_EVENT)
    return frame(body, cursor_id)


def _cursor_for(channels: Sequence[str], cursor: Optional[str]) -> List[Any]:
    """Per channel: what to replay after (``None`` means nothing, start live)."""
    if cursor is None:
        return [None] * len(channels)
    if len(channels) == 1:
        return [cursor]
    positions = decode_compound(cursor, len(channels))
    if positions is None:
        return ["~"] * len(channels)  # unknown to every broker: reported as missed
    return list(positions)


def open_stream(
    hub: Hub,
    broker: Broker,
    channels: Tuple[str, ...],
    cursor: Optional[str],
    *,
    retry: int,
    heartbeat: float,
    max_age: Optional[float],
    queue_size: int,
    environ: Dict[str, Any],
    allowed: Callable[[str], bool] = lambda channel: True,
    on_close: Optional[Callable[[Optional[str]], None]] = None,
) -> Response:
    """Subscribe, replay after ``cursor``, and return the response that streams the rest.

    ``channels`` are sorted and unique. The client subscribes first and then reads history (or,
    with no cursor, each channel's newest position), so nothing published meanwhile falls
    between the two; the stream drops live events that the replay already covers.
    ``allowed`` is asked again before a channel's history is replayed; ``on_close`` runs when
    the stream ends, with the reason it was cut (or ``None``). Raises ``BrokerError`` when the broker cannot subscribe or read history.
    """
    after = _cursor_for(channels, cursor)
    client = Client(channels, queue_size, socket_abort(environ), hub.stats)
    hub.attach(client)
    try:
        broker.ready(channels)
        replays = [broker.replay(c, a) for c, a in zip(channels, after)]
        replays = [r if not r.messages or allowed(c) else r._replace(messages=[])
                   for c, r in zip(channels, replays)]  # fmt: skip
    except BaseException:
        hub.detach(client)
        raise

    multi = len(channels) > 1
    positions: Dict[str, Position] = {}
    missed = []
    for channel, replay, position in zip(channels, replays, after):
        if replay.missed:
            missed.append(channel)
        # A multi-channel replay's ids advance from the client's cursor, channel by channel.
        replaying = multi and not replay.missed and isinstance(position, tuple)
        positions[channel] = position if replaying else replay.head
    chunks = [retry_line(retry)]
    if missed:
        chunks.append(_missed_event(missed, _current_id(positions)))
    for message in heapq.merge(*(r.messages for r in replays), key=lambda m: m.position):
        if multi:
            positions[message.channel] = message.position
            chunks.append(frame(message.body, _current_id(positions)))
        else:
            chunks.append(message.frame)
    for channel, replay in zip(channels, replays):
        positions[channel] = replay.head
        hub.stats.replayed += len(replay.messages)

    stop_watch = watch_disconnect(environ, lambda: client.close(GONE))
    body = _Stream(hub, client, b"".join(chunks), positions, heartbeat, max_age, stop_watch, on_close)
    body.end_reads = socket_end_reads(environ)
    return Response(body, mimetype="text/event-stream", headers=HEADERS)


def _current_id(positions: Dict[str, Position]) -> str:
    if len(positions) == 1:
        return format_position(next(iter(positions.values())))
    return encode_compound(list(positions.values()))
