"""Stream tickets: short-lived, single-use credentials that are only good for opening a stream.

A page that holds a session cookie or a Bearer token trades it for a ticket (``POST
<prefix>/ticket``, or ``sse.issue_ticket`` in the app's own view) and opens its stream with
``?ticket=``. A ticket that leaks from a URL (a proxy's log, the browser's history) is worth
nothing: it is spent by the first request that presents it and expires within seconds.

A ticket is signed with the app's ``SECRET_KEY`` under a salt of its own, so it is never
accepted as a token, nor a token as a ticket. Its single use is kept by the broker
(``claim_once``), so it holds over every worker and host that share one Redis.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Callable, Collection, Dict, Mapping, Optional, Sequence

from flask import Flask
from itsdangerous import BadData, URLSafeSerializer

from .auth import PRIVATE_PREFIX, Identity
from .config import validate_channel

__all__ = ["TicketRefused", "issue_ticket", "redeem_ticket"]

_SALT = "flask-sse-ext.ticket"

#: The longest ticket ``redeem_ticket`` reads: it travels in a URL.
MAX_TICKET_LENGTH = 4096

#: Claims the nonce of a ticket: ``True`` the first time, ``False`` after (``Broker.claim_once``).
Claim = Callable[[str, float], bool]


class TicketRefused(Exception):
    """A ticket that does not open this stream: ``status`` is 401 (invalid, expired, spent)
    or 403 (another identity, another channel)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _serializer(app: Flask) -> URLSafeSerializer:
    if not app.secret_key:
        raise RuntimeError("Stream tickets need the app's SECRET_KEY to be set")
    return URLSafeSerializer(app.secret_key, salt=_SALT)


def issue_ticket(
    app: Flask,
    identity: str,
    channels: Collection[str],
    expires_in: float,
    stream_expires_at: Optional[float] = None,
    claims: Optional[Mapping[str, Any]] = None,
) -> str:
    """A ticket for ``identity`` to open one stream on (some of) ``channels`` within
    ``expires_in`` seconds; the stream it opens ends at ``stream_expires_at`` (epoch seconds),
    when the credential it was traded for expires. ``claims`` (the token loader's, for the
    ``authorize`` hook) travel signed inside the ticket. Raises ``ValueError`` for an empty
    identity, a ``str`` or empty ``channels``, a bad channel name, another identity's private
    channel, or claims that JSON does not carry unchanged (or that make the ticket too long)."""
    if not isinstance(identity, str) or not identity:
        raise ValueError(f"A ticket needs a non-empty identity, got {identity!r}")
    if isinstance(channels, str):
        raise ValueError(f"channels must be a list of channel names, not the str {channels!r}")
    names = sorted({validate_channel(c) for c in channels})
    if not names:
        raise ValueError("A ticket needs at least one channel")
    for name in names:
        if name.startswith(PRIVATE_PREFIX) and name != PRIVATE_PREFIX + identity:
            raise ValueError(f"{name!r} is another identity's private channel")
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
        raise ValueError(f"expires_in must be a positive number of seconds, got {expires_in!r}")
    payload: Dict[str, Any] = {
        "sub": identity,
        "ch": names,
        "exp": round(time.time() + expires_in, 3),
        # The nonce makes every ticket unique, so its single use can be recorded.
        "n": secrets.token_urlsafe(12),
    }
    if stream_expires_at is not None:
        payload["until"] = round(stream_expires_at, 3)
    if claims:
        payload["cl"] = _portable(claims)
    ticket = str(_serializer(app).dumps(payload))
    if len(ticket) > MAX_TICKET_LENGTH:
        raise ValueError(
            f"The identity's claims make the ticket {len(ticket)} characters long, over "
            f"{MAX_TICKET_LENGTH}: keep the token loader's claims small"
        )
    return ticket


def _portable(claims: Mapping[str, Any]) -> Dict[str, Any]:
    """``claims`` as they come back out of the ticket, or ``ValueError``: the ``authorize``
    hook must see at the stream exactly what it saw when the ticket was issued."""
    plain = dict(claims)
    try:
        # allow_nan=False: NaN and Infinity are no JSON.
        restored = json.loads(json.dumps(plain, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"The identity's claims cannot go into a ticket: they must be JSON ({exc})"
        ) from None
    if restored != plain:
        raise ValueError(
            "The identity's claims cannot go into a ticket: JSON does not carry them unchanged "
            "(use str keys, lists rather than tuples or sets)"
        )
    return plain


def redeem_ticket(
    app: Flask,
    ticket: str,
    channels: Sequence[str],
    other: Optional[Identity],
    claim: Claim,
) -> Identity:
    """The identity a ticket opens ``channels`` as, spending the ticket: its ``claims`` are
    those of the credential it was traded for, plus ``"ticket": True`` for the ``authorize``
    hook. ``other`` is the
    identity of any other credential the request carries (a session cookie): it must be the
    ticket's. Raises ``TicketRefused``; raises ``BrokerError`` when the broker cannot tell
    whether the ticket was spent."""
    if len(ticket) > MAX_TICKET_LENGTH:
        raise TicketRefused(401, "invalid ticket")
    try:
        payload = _serializer(app).loads(ticket)
    except BadData:
        raise TicketRefused(401, "invalid ticket") from None
    if not isinstance(payload, dict):
        raise TicketRefused(401, "invalid ticket")
    identity, expires_at, allowed, nonce = (payload.get(k) for k in ("sub", "exp", "ch", "n"))
    claims = payload.get("cl", {})
    if not (
        isinstance(identity, str)
        and isinstance(expires_at, (int, float))
        and isinstance(allowed, list)
        and isinstance(nonce, str)
        and isinstance(claims, dict)
    ):
        raise TicketRefused(401, "invalid ticket")
    left = expires_at - time.time()
    if left <= 0:
        raise TicketRefused(401, "ticket expired")
    if other is not None and other.id != identity:
        raise TicketRefused(403, "the ticket was issued to another identity")
    for channel in channels:
        if channel not in allowed:
            raise TicketRefused(403, f"the ticket does not cover channel {channel!r}")
    # Checked last: a ticket refused above is not spent. Kept a second past its expiry, so
    # that no clock step lets it be used twice.
    if not claim("ticket:" + nonce, left + 1.0):
        raise TicketRefused(401, "ticket already used")
    return Identity(identity, allowed, payload.get("until"), {**claims, "ticket": True})
