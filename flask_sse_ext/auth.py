"""Who is asking and what they may read: signed tokens, Flask-Login sessions, channel rules."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Callable, Collection, Dict, FrozenSet, Mapping, Optional, Union

from flask import Flask, Request
from itsdangerous import BadData, URLSafeSerializer

from .config import validate_channel

__all__ = [
    "Identity",
    "AuthError",
    "TokenLoader",
    "Authorize",
    "issue_token",
    "verify_token",
    "identify",
    "PRIVATE_PREFIX",
    "private_channel",
    "private_channel_allowed",
]

_SALT = "flask-sse-ext.token"

#: Channels named ``private:<identity id>`` are readable only by that identity.
PRIVATE_PREFIX = "private:"


class Identity:
    """Who opened a stream.

    ``channels`` limits the stream to those channels (from a token that carries them);
    ``expires_at`` (epoch seconds) ends the stream when the credential expires; ``claims`` keeps
    whatever the app's token loader wants the ``authorize`` hook to see.
    """

    __slots__ = ("id", "channels", "expires_at", "claims")

    def __init__(
        self,
        id: str,
        channels: Optional[Collection[str]] = None,
        expires_at: Optional[float] = None,
        claims: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.id = str(id)
        self.channels: Optional[FrozenSet[str]] = None if channels is None else frozenset(channels)
        self.expires_at = expires_at
        self.claims: Mapping[str, Any] = claims or {}

    def __repr__(self) -> str:
        return f"Identity({self.id!r}, channels={self.channels!r}, expires_at={self.expires_at!r})"


class AuthError(Exception):
    """A credential was given but is not valid (HTTP 401)."""


#: Verifies an app's own token (a JWT, say): returns the identity, or raises ``AuthError``.
TokenLoader = Callable[[str], Identity]
#: Decides whether ``identity`` (``None`` when anonymous) may read ``channel``.
Authorize = Callable[[Optional[Identity], str], bool]


def _serializer(app: Flask) -> URLSafeSerializer:
    secret = app.secret_key
    if not secret:
        raise RuntimeError("Signed SSE tokens need the app's SECRET_KEY to be set")
    return URLSafeSerializer(secret, salt=_SALT)


def issue_token(
    app: Flask,
    identity: str,
    channels: Optional[Collection[str]] = None,
    expires_in: Union[int, float, timedelta] = 3600,
) -> str:
    """A signed token for ``identity``, valid for ``expires_in`` seconds, optionally limited to
    ``channels`` (a collection of names). Raises ``ValueError`` for an empty identity, a bad
    channel name, a single ``str`` as ``channels``, another identity's private channel, or a
    non-positive lifetime."""
    seconds = expires_in.total_seconds() if isinstance(expires_in, timedelta) else expires_in
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ValueError(f"expires_in must be a positive number of seconds, got {expires_in!r}")
    subject = str(identity)
    if not subject.strip():
        raise ValueError("identity must not be empty: a token names who it is for")
    payload: Dict[str, Any] = {"sub": subject, "exp": round(time.time() + seconds, 3)}
    if channels is not None:
        payload["ch"] = sorted(_token_channel(subject, c) for c in _names(channels))
    return str(_serializer(app).dumps(payload))


def _names(channels: Collection[str]) -> Collection[str]:
    # A str is a collection of one-letter names: "news" would make a token for n, e, w and s.
    if isinstance(channels, (str, bytes)):
        raise ValueError(f"channels must be a collection of channel names, e.g. [{channels!r}], not a str")
    return channels


def _token_channel(identity: str, channel: str) -> str:
    validate_channel(channel)
    if channel.startswith(PRIVATE_PREFIX) and channel != PRIVATE_PREFIX + identity:
        # The stream would refuse it (private_channel_allowed): the token could never be used.
        raise ValueError(
            f"channel {channel!r} is another identity's private channel; a token for "
            f"{identity!r} may carry only its own, {PRIVATE_PREFIX + identity!r}"
        )
    return channel


def verify_token(app: Flask, token: str) -> Identity:
    """The identity in a token from ``issue_token``. Raises ``AuthError`` if it is tampered
    with, truncated or expired."""
    try:
        payload = _serializer(app).loads(token)
    except BadData:
        raise AuthError("invalid token") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("sub"), str):
        raise AuthError("invalid token")
    expires_at = payload.get("exp")
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or expires_at <= time.time():
        raise AuthError("token expired")
    channels = payload.get("ch")
    return Identity(payload["sub"], channels, expires_at)


def _bearer(request: Request) -> Optional[str]:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None  # another scheme (Basic auth in front of a staging site) is not ours
    if not token.strip():
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _session_identity(app: Flask) -> Optional[Identity]:
    if getattr(app, "login_manager", None) is None:
        return None
    from flask_login import current_user

    if current_user.is_authenticated:
        return Identity(current_user.get_id())
    return None


def identify(app: Flask, request: Request, loader: Optional[TokenLoader]) -> Optional[Identity]:
    """The identity of a request: a Bearer token first, then ``?token=``, then the Flask-Login
    session; ``None`` when anonymous. Raises ``AuthError`` for a bad credential."""
    token = _bearer(request)
    if token is None:
        token = request.args.get("token")
    if token is not None:
        if len(token) > 4096:
            raise AuthError("token too long")
        return loader(token) if loader is not None else verify_token(app, token)
    return _session_identity(app)


def private_channel(identity: str) -> str:
    """The private channel of ``identity``: only a stream opened as that identity reads it."""
    return validate_channel(PRIVATE_PREFIX + str(identity))


def private_channel_allowed(identity: Optional[Identity], channel: str) -> bool:
    if not channel.startswith(PRIVATE_PREFIX):
        return True
    return identity is not None and channel == PRIVATE_PREFIX + identity.id
