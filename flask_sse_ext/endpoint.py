"""The ``sse.stream`` view: every check a request passes before its stream opens.

In order: CORS origin (403), gunicorn's own HTTP/2 (505), channel names (400), credentials
(401), channel authorization (403), connection caps (429). Every refusal is a short plain-text answer that says why, with
the CORS headers that let a cross-origin page read it.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Dict, List, Optional, Tuple, Union

from flask import Response, current_app, request

from .auth import AuthError, Identity, identify, private_channel_allowed
from .brokers.base import UNKNOWN, BrokerError, Unknown, format_position
from .compression import GzipEncoder, accepts_gzip
from .config import Settings, validate_channel
from .cors import cors_headers, origin_allowed, preflight_headers
from .cursor import encode_compound
from .event import reauth, unavailable
from .serving import check_server, http2_refusal, warn_memory_broker
from .signals import stream_closed, stream_opened
from .state import AppState, get_state
from .stream import HEADERS, open_stream
from .tickets import TicketRefused, redeem_ticket

__all__ = ["stream_view"]

logger = logging.getLogger(__name__)


_TOKEN = re.compile(r"[A-Za-z0-9_\-]{16,64}")


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _channels(state: AppState) -> Tuple[str, ...]:
    names = request.args.getlist("channel") or ["sse"]
    limit = state.settings.max_channels_per_connection
    if len(names) > limit:
        raise _Refused(400, f"At most {limit} channels per stream (SSE_MAX_CHANNELS_PER_CONNECTION)")
    for name in names:
        try:
            validate_channel(name)
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
    return tuple(sorted(set(names)))


def _unauthorized(message: str, error: Optional[str] = None) -> _Refused:
    challenge = 'Bearer realm="sse"'
    if error is not None:
        challenge += f', error="{error}"'
    return _Refused(401, message, {"WWW-Authenticate": challenge})


def _identity(state: AppState, channels: Tuple[str, ...] = ()) -> Optional[Identity]:
    try:
        identity = identify(current_app, request, state.hooks.token_loader)
    except AuthError as exc:
        raise _unauthorized(f"Invalid credentials: {exc}", "invalid_token") from None
    ticket = request.args.get("ticket")
    if ticket is not None:
        try:
            identity = redeem_ticket(current_app, ticket, channels, identity, state.broker.claim_once)
        except TicketRefused as exc:
            if exc.status == 401:
                raise _unauthorized(f"Invalid ticket: {exc}", "invalid_token") from None
            raise _Refused(exc.status, f"Ticket refused: {exc}") from None
    elif identity is not None and _from_cookie() and not _cookie_origin_ok():
        raise _Refused(403, "A stream authenticated by cookie needs an allowed Origin (SSE_CORS_ORIGINS)")
    if identity is None and state.settings.require_auth:
        raise _unauthorized("Authentication required: send a Bearer token, ?token=, or log in")
    return identity


def _from_cookie() -> bool:
    """True when the identity came from the session cookie (no token in the request)."""
    header = request.headers.get("Authorization", "")
    return "token" not in request.args and not header.lower().startswith("bearer ")


def _cookie_origin_ok() -> bool:
    """A browser sends ``Origin`` with every cross-origin ``EventSource`` and ``fetch`` (the
    allowlist has judged it by now). Without one, a cookie-bearing request that the browser
    marks as coming from another site is a tag (``<img>``, ``<script>``) on a page we did not
    allow: it must not hold a stream, nor a connection slot, in the user's name."""
    if request.headers.get("Origin") is not None:
        return True
    return request.headers.get("Sec-Fetch-Site") not in ("cross-site", "same-site")


def allowed(state: AppState, identity: Optional[Identity], channel: str) -> bool:
    """The channel rules: a token's channel list, private channels, the app's hook."""
    if identity is not None and identity.channels is not None and channel not in identity.channels:
        return False
    if not private_channel_allowed(identity, channel):
        return False
    hook = state.hooks.authorize
    return hook is None or bool(hook(identity, channel))


def _authorize(state: AppState, identity: Optional[Identity], channels: Tuple[str, ...]) -> None:
    for channel in channels:
        if not allowed(state, identity, channel):
            if identity is None:
                raise _unauthorized(f"Channel {channel!r} needs credentials")
            raise _Refused(403, f"Not allowed to read channel {channel!r}")


def _caps(state: AppState, identity: Optional[Identity]) -> List[Tuple[str, int]]:
    settings = state.settings
    caps = []
    if settings.max_connections_per_client is not None:
        caps.append((f"addr:{request.remote_addr}", settings.max_connections_per_client))
    if settings.max_connections_per_user is not None and identity is not None:
        caps.append((f"user:{identity.id}", settings.max_connections_per_user))
    return caps


def _refusal(exc: _Refused, cors: Dict[str, str]) -> Response:
    headers = {**cors, **exc.headers, "Cache-Control": "no-store"}
    return Response(str(exc) + "\n", exc.status, headers, mimetype="text/plain")


def stream_view() -> Response:
    state = get_state()
    settings = state.settings
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, settings.cors_origins, request.host_url.rstrip("/")):
        return _refusal(_Refused(403, f"Origin {origin!r} is not allowed (SSE_CORS_ORIGINS)"), {})
    cors = cors_headers(origin, settings.cors_origins)
    if request.method == "OPTIONS":
        return Response(status=204, headers=preflight_headers(origin or "", settings.cors_origins))
    refusal = http2_refusal(request.environ, cors)
    if refusal is not None:
        return refusal
    try:
        channels = _channels(state)
        delivery = _delivery(state)
        identity = _identity(state, channels)
        _authorize(state, identity, channels)
        handle = _acquire(state, identity)
    except _Refused as exc:
        return _refusal(exc, cors)
    except BrokerError as exc:
        return _unavailable(state, exc)
    try:
        response = _open(state, identity, channels, handle, delivery)
    except BaseException:
        if handle is not None:
            state.limiter.release(handle)
        raise
    response.headers.update(cors)
    if state.settings.compression:
        response.vary.add("Accept-Encoding")  # after the CORS headers, which set Vary too
    return response


def _acquire(state: AppState, identity: Optional[Identity]) -> object:
    caps = _caps(state, identity)
    if not caps:
        return None
    handle = state.limiter.acquire(caps)
    if handle is None:
        raise _Refused(429, "Too many open streams; close one first", {"Retry-After": "5"})
    return handle


def _unavailable(state: AppState, exc: BrokerError) -> Response:
    logger.warning("Stream ended at once, the broker is unavailable: %s", exc)
    response = Response([unavailable(state.settings.retry)], mimetype="text/event-stream", headers=HEADERS)
    if state.settings.compression:
        response.vary.add("Accept-Encoding")  # as every stream answer, for shared caches
    return response


def _cursor() -> Union[str, Unknown, None]:
    """The client's ``Last-Event-ID`` (or ``?last_event_id=``); ``UNKNOWN`` for one that no
    broker issued, which the stream reports as missed history."""
    cursor = request.headers.get("Last-Event-ID")
    if cursor:
        try:  # browsers send the id as UTF-8; WSGI hands headers over as Latin-1
            cursor = cursor.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
    cursor = cursor or request.args.get("last_event_id") or None
    if cursor is not None and (len(cursor) > 1024 or not cursor.isprintable()):
        return UNKNOWN
    return cursor


def _encoder(settings: Settings) -> Optional[GzipEncoder]:
    if settings.compression and accepts_gzip(request.headers.get("Accept-Encoding")):
        return GzipEncoder(settings.compression_min_bytes)
    return None


class _Grant:
    """What an open stream was granted: its channels, its identity's rules, its connection
    slot (released when it closes)."""

    __slots__ = ("state", "identity", "channels", "handle", "app")

    def __init__(
        self, state: AppState, identity: Optional[Identity], channels: Tuple[str, ...], handle: object
    ) -> None:
        self.state = state
        self.identity = identity
        self.channels = channels
        self.handle = handle
        self.app = current_app._get_current_object()  # type: ignore[attr-defined]

    def allowed(self, channel: str) -> bool:
        return allowed(self.state, self.identity, channel)

    def closed(self, reason: Optional[str]) -> None:
        if self.handle is not None:
            self.state.limiter.release(self.handle)
        stream_closed.send(self.app, channels=self.channels, identity=self.identity, reason=reason)


def _delivery(state: AppState) -> Tuple[Optional[float], Optional[float]]:
    """``(max_rate, poll)`` from ``?max_rate=`` and ``?poll=`` (docs/compression.md)."""
    settings = state.settings
    max_rate = None
    text = request.args.get("max_rate")
    if text is not None:
        try:
            max_rate = float(text)
        except ValueError:
            max_rate = -1.0
        if not settings.max_rate_floor <= max_rate < float("inf"):
            raise _Refused(
                400,
                f"max_rate must be a number of writes per second of at least "
                f"{settings.max_rate_floor:g} (SSE_MAX_RATE_FLOOR), got {text!r}",
            )
    opening = request.args.get("opening")
    if opening is not None and _TOKEN.fullmatch(opening) is None:
        raise _Refused(400, "opening must be 16 to 64 letters, digits, - or _ (a random token)")
    poll = request.args.get("poll")
    if poll not in (None, "0", "1"):
        raise _Refused(400, f"poll must be 1 (a long poll) or 0 (a stream), got {poll!r}")
    return max_rate, settings.poll_timeout if poll == "1" else None


def _open(
    state: AppState,
    identity: Optional[Identity],
    channels: Tuple[str, ...],
    handle: object,
    delivery: Tuple[Optional[float], Optional[float]],
) -> Response:
    settings = state.settings
    cursor = _cursor()
    opening = request.args.get("opening")
    if cursor is None and opening is not None:
        cursor = _opening(state, channels, opening, delivery[1] is not None)
    environ = request.environ
    check_server(environ)
    if not state.broker.shared:
        warn_memory_broker(environ)
    max_age = settings.max_connection_age
    farewell = None
    if identity is not None and identity.expires_at is not None:
        left = identity.expires_at - time.time()
        if max_age is None or left <= max_age:
            farewell = reauth()  # the credential ends the stream: the client must renew it
        max_age = left if max_age is None else min(max_age, left)
    grant = _Grant(state, identity, channels, handle)
    # From here on the stream's body owns the connection slot: it releases it when it ends.
    response = open_stream(
        state.serve(),
        state.broker,
        channels,
        cursor,
        retry=settings.retry,
        max_age=max_age,
        queue_size=settings.client_queue_size,
        queue_bytes=settings.client_queue_bytes,
        send_buffer=settings.send_buffer_bytes,
        environ=environ,
        allowed=grant.allowed,
        on_close=grant.closed,
        farewell=farewell,
        encoder=_encoder(settings),
        max_rate=delivery[0],
        poll=delivery[1],
        direct_writes=settings.direct_writes,
    )
    stream_opened.send(grant.app, channels=channels, identity=identity)
    return response


#: How long the broker keeps where a stream with ``?opening=`` started: the client's first poll
#: follows within its ``pollAfter`` (4 s by default), so a short life bounds what a client that
#: opens stream after stream leaves in the broker.
OPENING_TTL = 30


def _opening(state: AppState, channels: Tuple[str, ...], token: str, poll: bool) -> Optional[str]:
    """``?opening=<token>`` without a cursor. A stream starts after the channels' newest
    events and keeps that cursor in the broker under ``token``: a proxy that holds the
    stream back holds its ids too, and the client's first poll (with the same token and
    still no cursor) resumes from where the stream started, so nothing published meanwhile
    is lost. A poll reads the cursor back (``None`` if unknown: it starts from now), and so
    does a stream that opens again with the token."""
    log = f"opening:{token}"  # the key stays short however many channels the stream has
    names = "\n".join(channels)
    try:
        if not poll:
            heads = [state.broker.replay(channel, None).head for channel in channels]
            cursor = format_position(heads[0]) if len(heads) == 1 else encode_compound(heads)
            meta = {"kind": "opening", "cursor": cursor, "channels": names}
            if state.broker.log_create(log, meta, OPENING_TTL):
                return cursor
        # A poll, or a stream opened again before its client had any id: from the first start.
        found = state.broker.log_meta(log)
    except BrokerError:
        return None  # the stream reports the broker's state itself
    if found is None or found.get("channels") != names:
        return None  # unknown, or another stream's token: from now
    return found.get("cursor")
