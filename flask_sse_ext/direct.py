"""Direct streams: one request streams its own events (LLM tokens, a job's log) from a generator.

The generator runs apart from the writer (a greenlet under gevent, a thread otherwise), so a
heartbeat goes out while it waits on an upstream API, and when the client goes away the
generator is stopped: under gevent at once, wherever it waits, so its ``finally`` closes the
upstream call; under threads when it next yields. Like a channel stream, its connection's
send buffer is capped and a client whose sent data does not drain within the send timeout is
reset, which stops the generator too.
"""

from __future__ import annotations

import logging
import queue
import threading
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from flask import Response, copy_current_request_context, has_request_context

from .client import Stats
from .event import Event, comment, encode_body, retry_line
from .serving import gevent_active, guard, http2_refusal, unwatch

__all__ = ["END_EVENT", "ERROR_EVENT", "direct_response"]

logger = logging.getLogger(__name__)

#: Sent when the generator is done; clients close on it instead of reconnecting.
END_EVENT = "sse.end"
#: Sent when the generator raised; ``data`` is ``{"error": ...}``.
ERROR_EVENT = "sse.error"

_HEARTBEAT = comment()
_DONE = object()


def _encode(item: Any) -> bytes:
    if isinstance(item, Event):
        return item.encode()
    return encode_body(item) + b"\n"


class _Gone(Exception):
    """The client left: the producer stops."""


class _DirectStream:
    def __init__(
        self,
        iterable: Iterable[Any],
        heartbeat: float,
        retry: int,
        expose_errors: bool,
        queue_size: int,
        environ: Dict[str, Any],
        send_timeout: Optional[float],
        send_buffer: Optional[int],
        stats: Optional[Stats],
    ) -> None:
        self.heartbeat = heartbeat
        self.expose_errors = expose_errors
        self.queue: "queue.Queue[Any]" = queue.Queue(queue_size)
        self.opening: Optional[bytes] = retry_line(retry)
        self.finished = False
        self.stopped = threading.Event()
        produce: Callable[[], None] = partial(self._produce, iterable)
        if has_request_context():
            produce = copy_current_request_context(produce)
        self.greenlet: Any = None
        if gevent_active():
            import gevent

            self.greenlet = gevent.spawn(produce)
        else:
            threading.Thread(target=produce, name="sse-direct-producer", daemon=True).start()
        self.stats = stats
        self.watcher, self.send_watch = guard(environ, self._gone, self._timed_out, send_timeout, send_buffer)

    def _timed_out(self) -> None:
        # The connection is reset already: the writer's stuck write fails, the producer stops.
        self.send_watch = None
        if self.stats is not None:
            self.stats.timed_out += 1
        self._gone()

    def _gone(self) -> None:
        self.stopped.set()
        try:
            self.queue.put_nowait(_DONE)
        except queue.Full:
            pass  # the writer has data waiting and finds the stream stopped after it

    def _put(self, item: Any) -> None:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise _Gone

    def _produce(self, iterable: Iterable[Any]) -> None:
        iterator = iter(iterable)
        try:
            for item in iterator:
                self._put(_encode(item))
            self._put(encode_body("", END_EVENT) + b"\n")
        except _Gone:
            pass
        except Exception as exc:  # the app's generator failed: tell the client, then end
            logger.exception("A direct SSE stream's generator raised")
            message = f"{type(exc).__name__}: {exc}" if self.expose_errors else "internal error"
            try:
                self._put(encode_body({"error": message}, ERROR_EVENT) + b"\n")
            except _Gone:
                pass
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            try:
                self._put(_DONE)  # waits for room: a full queue must not lose the end
            except _Gone:
                pass

    def __iter__(self) -> "_DirectStream":
        return self

    def __next__(self) -> bytes:
        if self.opening is not None:
            chunk, self.opening = self.opening, None
            return chunk
        if self.finished or self.stopped.is_set():
            raise StopIteration
        try:
            item = self.queue.get(timeout=self.heartbeat)
        except queue.Empty:
            return _HEARTBEAT
        chunks: List[bytes] = []
        while item is not _DONE:
            chunks.append(item)
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
        if item is _DONE:
            self.finished = True
        if not chunks:
            raise StopIteration
        return b"".join(chunks)

    def close(self) -> None:
        self.stopped.set()
        unwatch(self.watcher, self.send_watch)
        self.watcher = self.send_watch = None
        if self.greenlet is not None:
            # Raises GreenletExit where the generator waits, so its ``finally`` runs now.
            self.greenlet.kill(block=True, timeout=self.heartbeat)


def direct_response(
    iterable: Iterable[Any],
    *,
    heartbeat: float,
    retry: int,
    headers: Optional[Mapping[str, str]],
    expose_errors: bool,
    queue_size: int,
    environ: Dict[str, Any],
    base_headers: Mapping[str, str],
    send_timeout: Optional[float] = None,
    send_buffer: Optional[int] = None,
    stats: Optional[Stats] = None,
) -> Response:
    """``sse.response(iterable)``. ``send_timeout`` and ``send_buffer`` are the channel
    streams' ``SSE_SEND_TIMEOUT`` and ``SSE_SEND_BUFFER_BYTES``; a cut counts in ``stats``.
    Under gunicorn's own HTTP/2 the answer is ``http2_refusal``'s 505 and ``iterable`` is
    closed unstarted: an endless response would hold up every later request of the browser."""
    refusal = http2_refusal(environ)
    if refusal is not None:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
        return refusal
    body = _DirectStream(
        iterable, heartbeat, retry, expose_errors, queue_size, environ, send_timeout, send_buffer, stats
    )
    return Response(body, mimetype="text/event-stream", headers={**base_headers, **(headers or {})})
