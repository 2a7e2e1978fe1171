"""Streams that outlive their request: a generated answer, or a job's progress, kept in a log.

A resumable answer's generator runs in a greenlet of its own (a thread without gevent), owned
by the worker and not by the request: it appends each event to a broker log under an
unguessable id and keeps going when its client leaves. Every response, the first and any
resume on any worker or host, streams from that log. Event ids are ``<log>.<position>``, so a
``Last-Event-ID`` alone says which stream and where to go on.

The owner renews a lease on the log every ``BEAT`` seconds and, at the same time, looks for a
cancel request and for a reader (each reader keeps a presence flag up for the idle limit). A
reader that finds the lease lapsed before the log ended writes the end itself, ``sse.error``:
a worker killed mid-answer never leaves a stream that hangs. A reader whose client stops
reading is reset after the send timeout, as on a channel stream; the owner goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from typing import Any, Dict, Iterable, Mapping, Optional

from flask import (
    Response,
    current_app,
    request,
    session,
    url_for,
)

from .auth import AuthError, identify
from .brokers.base import Broker, BrokerError, Position
from .client import Stats
from .direct import ERROR_EVENT
from .event import comment, encode_body, frame, retry_line
from .jobs import ANSWER_LOG, event_id, job_log, parse_event_id
from .producer import start_answer
from .serving import check_server, guard, http2_refusal, unwatch
from .state import AppState, get_state
from .stream import HEADERS

__all__ = [
    "STREAM_EVENT",
    "owner_of",
    "log_response",
    "resume_view",
    "answer_response",
    "job_response",
    "not_found",
]

logger = logging.getLogger(__name__)

#: The first event of a new resumable answer: ``{"id": <stream id>, "url": <resume URL>}``.
STREAM_EVENT = "sse.stream"

_HEARTBEAT = comment()
_SESSION_KEY = "_sse_owner"


def owner_of(state: AppState, create: bool = True) -> str:
    """A digest of who asks: the app's identity (a token, Flask-Login), else this browser
    session's own random key (made on first use when ``create``; else a key no stream has).
    Raises ``AuthError`` for a bad credential and ``RuntimeError`` when an anonymous request
    has no session (no ``SECRET_KEY``)."""
    identity = identify(current_app, request, state.hooks.token_loader)
    if identity is not None:
        who = "identity:" + identity.id
    else:
        key = session.get(_SESSION_KEY)
        if not isinstance(key, str):
            key = secrets.token_urlsafe(18)
            if create:
                if not current_app.secret_key:
                    raise RuntimeError(
                        "A resumable SSE stream of an anonymous request is bound to the Flask "
                        "session: set the app's SECRET_KEY (or authenticate the request)"
                    )
                session[_SESSION_KEY] = key
        who = "session:" + key
    return hashlib.sha256(who.encode("utf-8")).hexdigest()


def not_found() -> Response:
    """The one answer for a stream that does not exist and for someone else's stream."""
    return Response("No such stream\n", 404, {"Cache-Control": "no-store"}, mimetype="text/plain")


class _LogStream:
    """A response body that streams a log from a position to its end."""

    def __init__(
        self,
        broker: Broker,
        log: str,
        after: Position,
        meta: Dict[str, str],
        *,
        heartbeat: float,
        ttl: int,
        opening: bytes,
        max_age: Optional[float],
        environ: Dict[str, Any],
        send_timeout: Optional[float] = None,
        send_buffer: Optional[int] = None,
        stats: Optional[Stats] = None,
    ) -> None:
        self.broker = broker
        self.log = log
        self.after = after
        self.ttl = ttl
        # Only an answer has an owner to watch and an idle limit to keep off.
        self.idle = float(meta["idle"]) if meta.get("kind") == "answer" else None
        # The presence flag lives ``idle`` seconds: renew it well before it lapses.
        self.renew = 1.0 if self.idle is None else min(1.0, self.idle / 4)
        self.heartbeat = heartbeat
        self.opening: Optional[bytes] = opening
        self.finished = False
        self.gone = False
        self.next_signal = 0.0
        self.last_write = time.monotonic()
        # Past SSE_MAX_CONNECTION_AGE the response ends; the client resumes where it was.
        self.deadline = None if max_age is None else self.last_write + max_age
        self.stats = stats
        self.watcher, self.send_watch = guard(environ, self._gone, self._timed_out, send_timeout, send_buffer)

    def _gone(self) -> None:
        self.gone = True

    def _timed_out(self) -> None:
        # The connection is reset already, which fails the stuck write: this reader ends.
        self.send_watch = None
        if self.stats is not None:
            self.stats.timed_out += 1
        self.gone = True

    def __iter__(self) -> "_LogStream":
        return self

    def _keep_alive(self) -> None:
        """Say a reader is here; end the log if its owner died before ending it."""
        if self.idle is None or time.monotonic() < self.next_signal:
            return
        self.next_signal = time.monotonic() + self.renew
        flags = self.broker.log_signal(self.log, "reader", self.idle)
        if flags and "owner" not in flags:
            # Refused when the log has ended meanwhile: then the reader finds that end.
            body = encode_body({"error": "the worker running this stream stopped"}, ERROR_EVENT)
            self.broker.log_append(self.log, body, self.ttl, final=True)

    def __next__(self) -> bytes:
        if self.opening is not None:
            chunk, self.opening = self.opening, None
            return chunk
        while not (self.finished or self.gone):
            if self.deadline is not None and time.monotonic() >= self.deadline:
                break
            try:
                self._keep_alive()
                wait = self.last_write + self.heartbeat - time.monotonic()
                entries = self.broker.log_read(self.log, self.after, max(0.05, min(self.renew, wait)))
            except BrokerError as exc:
                # The client reconnects with its Last-Event-ID and goes on from there.
                logger.warning("A resumable SSE stream lost its log: %s", exc)
                break
            if entries is None:
                self.finished = True
                return encode_body({"error": "the stream expired"}, ERROR_EVENT) + b"\n"
            if entries:
                self.after = entries[-1].position
                self.finished = entries[-1].final
                self.last_write = time.monotonic()
                return b"".join(frame(e.body, event_id(self.log, e.position)) for e in entries)
            if time.monotonic() - self.last_write >= self.heartbeat:
                self.last_write = time.monotonic()
                return _HEARTBEAT
        raise StopIteration

    def close(self) -> None:
        self.gone = True
        unwatch(self.watcher, self.send_watch)
        self.watcher = self.send_watch = None


def log_response(
    state: AppState,
    log: str,
    after: Position,
    meta: Dict[str, str],
    *,
    heartbeat: Optional[float] = None,
    retry: Optional[int] = None,
    first: Optional[Dict[str, str]] = None,
    headers: Optional[Mapping[str, str]] = None,
) -> Response:
    """Stream ``log`` after ``after``. ``first`` (a new answer's id and URL) goes out first, as
    ``sse.stream`` with the id of the log's start, so a reconnect before any token resumes.
    Under gunicorn's own HTTP/2, ``http2_refusal``'s 505 instead."""
    refusal = http2_refusal(request.environ)
    if refusal is not None:
        return refusal
    settings = state.settings
    check_server(request.environ)
    opening = retry_line(settings.retry if retry is None else retry)
    if first is not None:
        opening += frame(encode_body(first, STREAM_EVENT), event_id(log, (0, 0)))
    body = _LogStream(
        state.broker,
        log,
        after,
        meta,
        heartbeat=settings.heartbeat_interval if heartbeat is None else heartbeat,
        ttl=settings.resumable_ttl,
        opening=opening,
        max_age=settings.max_connection_age,
        environ=request.environ,
        send_timeout=settings.send_timeout,
        send_buffer=settings.send_buffer_bytes,
        stats=state.stats,
    )
    sent = {**HEADERS, "X-SSE-Stream": log, **(headers or {})}
    return Response(body, mimetype="text/event-stream", headers=sent)


def owned_meta(state: AppState, log: str) -> Optional[Dict[str, str]]:
    """``log``'s metadata if it is an answer that the requester started, else ``None``.
    Raises ``AuthError`` and ``BrokerError``."""
    # Who asks is looked up first, whatever the id: a response must not differ (a session
    # touched, a ``Vary: Cookie``) between an unknown stream and someone else's.
    owner = owner_of(state, create=False)
    if ANSWER_LOG.fullmatch(log) is None:
        return None
    meta = state.broker.log_meta(log)
    if meta is None or meta.get("kind") != "answer":
        return None
    return meta if hmac.compare_digest(meta.get("owner", ""), owner) else None


def resume_position(log: str) -> Position:
    """Where a resume of ``log`` goes on: after the ``Last-Event-ID`` (or ``?last_event_id=``)
    when it names this log, else from the start."""
    parsed = parse_event_id(request.headers.get("Last-Event-ID") or request.args.get("last_event_id"))
    return parsed[1] if parsed is not None and parsed[0] == log else (0, 0)


def _refused(status: int, message: str, **headers: str) -> Response:
    return Response(f"{message}\n", status, {"Cache-Control": "no-store", **headers}, mimetype="text/plain")


def _unavailable(exc: BrokerError) -> Response:
    logger.warning("A resumable SSE stream could not be served: %s", exc)
    return _refused(503, "The stream store is unavailable; try again", **{"Retry-After": "5"})


def resume_view(stream_id: str) -> Response:
    """``GET <prefix>/resume/<id>``: the rest of an answer; ``DELETE``: cancel it (204).
    Anyone but the identity (or session) that started it gets the answer for an unknown id."""
    state = get_state()
    try:
        meta = owned_meta(state, stream_id)
        if meta is None:
            return not_found()
        if request.method == "DELETE":
            state.broker.log_signal(stream_id, "cancel", state.settings.resumable_ttl)
            return Response(status=204)
    except AuthError as exc:
        return _refused(401, str(exc))
    except BrokerError as exc:
        return _unavailable(exc)
    return log_response(state, stream_id, resume_position(stream_id), meta)


def answer_response(
    state: AppState,
    iterable: Iterable[Any],
    *,
    heartbeat: Optional[float],
    retry: Optional[int],
    headers: Optional[Mapping[str, str]],
    expose_errors: bool,
) -> Response:
    """``sse.response(..., resumable=True)``: a ``Last-Event-ID`` of one of the requester's
    answers resumes it (``iterable`` is closed unstarted); else a new answer starts. Under
    gunicorn's own HTTP/2, ``http2_refusal``'s 505, and ``iterable`` is closed unstarted."""
    refusal = http2_refusal(request.environ)
    parsed = parse_event_id(request.headers.get("Last-Event-ID"))
    resume = parsed if parsed is not None and ANSWER_LOG.fullmatch(parsed[0]) else None
    if refusal is not None or resume is not None:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    if refusal is not None:
        return refusal
    extra = dict(headers or {})
    try:
        if resume is not None:
            meta = owned_meta(state, resume[0])
            if meta is None:
                return not_found()
            return log_response(
                state, resume[0], resume[1], meta, heartbeat=heartbeat, retry=retry, headers=extra
            )
        log = start_answer(state, iterable, owner_of(state), expose_errors)
        meta = {"kind": "answer", "idle": repr(state.settings.resumable_idle)}
    except AuthError as exc:
        return _refused(401, str(exc))
    except BrokerError as exc:
        return _unavailable(exc)
    first = {"id": log, "url": resume_url(log)}
    return log_response(
        state, log, (0, 0), meta, heartbeat=heartbeat, retry=retry, first=first, headers=extra
    )


def job_response(state: AppState, job_id: str) -> Response:
    """The progress of ``job_id`` from its start (or after its ``Last-Event-ID``), then live;
    404 for a job that was never created or expired; under gunicorn's own HTTP/2,
    ``http2_refusal``'s 505. Raises ``ValueError`` for a bad id."""
    log = job_log(job_id)
    refusal = http2_refusal(request.environ)
    if refusal is not None:
        return refusal
    try:
        meta = state.broker.log_meta(log)
    except BrokerError as exc:
        return _unavailable(exc)
    if meta is None or meta.get("kind") != "job":
        return not_found()
    return log_response(state, log, resume_position(log), meta)


def resume_url(log: str) -> str:
    return url_for("sse.resume", stream_id=log)
