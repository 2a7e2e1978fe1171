"""``POST <SSE_URL_PREFIX>/ticket``: trade a session cookie or a Bearer token for a stream ticket.

Registered when ``SSE_TICKET_ENDPOINT`` is on. The channels come as ``?channel=`` (repeated)
or a JSON body ``{"channels": [...]}``; the answer is ``{"ticket": ..., "expires_in": ...}``.
The same checks as the stream run here, so a ticket exists only for channels its identity may
read: origin (403), channel names (400), credentials (401), channel rules (403), claims of the
token loader that cannot travel in a ticket (422).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from flask import Response, current_app, jsonify, request

from .auth import AuthError, identify
from .config import validate_channel
from .cors import cors_headers, origin_allowed, preflight_headers
from .endpoint import allowed
from .state import get_state
from .tickets import issue_ticket

__all__ = ["ticket_view"]


def _answer(status: int, message: str, headers: Mapping[str, str]) -> Response:
    return Response(message + "\n", status, {**headers, "Cache-Control": "no-store"}, mimetype="text/plain")


def _requested_channels() -> Optional[Any]:
    """The channel names asked for, unchecked: a list from the query or the JSON body."""
    names = request.args.getlist("channel")
    if names or not request.is_json:
        return names
    body = request.get_json(silent=True)
    return body.get("channels") if isinstance(body, dict) else None


def ticket_view() -> Response:
    state = get_state()
    settings = state.settings
    origin = request.headers.get("Origin")
    # A ticket is a credential: a page of an origin we do not allow never gets one, even if
    # the browser sends it the user's cookie (a cross-site form cannot read the answer, and
    # this keeps it from spending anything in the user's name).
    if not origin_allowed(origin, settings.cors_origins, request.host_url.rstrip("/")):
        return _answer(403, f"Origin {origin!r} is not allowed (SSE_CORS_ORIGINS)", {})
    cors = cors_headers(origin, settings.cors_origins)
    if request.method == "OPTIONS":
        headers = preflight_headers(origin or "", settings.cors_origins)
        headers["Access-Control-Allow-Methods"] = "POST"
        headers["Access-Control-Allow-Headers"] += ", Content-Type"
        return Response(status=204, headers=headers)
    names = _requested_channels()
    if not isinstance(names, list) or not names:
        return _answer(400, 'Name the channels: ?channel=<name> (repeated) or {"channels": [...]}', cors)
    limit = settings.max_channels_per_connection
    if len(names) > limit:
        return _answer(400, f"At most {limit} channels per stream (SSE_MAX_CHANNELS_PER_CONNECTION)", cors)
    try:
        channels = sorted({validate_channel(name) for name in names})
    except ValueError as exc:
        return _answer(400, str(exc), cors)
    challenge = {**cors, "WWW-Authenticate": 'Bearer realm="sse"'}
    try:
        identity = identify(current_app, request, state.hooks.token_loader)
    except AuthError as exc:
        return _answer(401, f"Invalid credentials: {exc}", challenge)
    if identity is None:
        return _answer(401, "A ticket needs a Bearer token or a logged-in session", challenge)
    for channel in channels:
        if not allowed(state, identity, channel):
            return _answer(403, f"Not allowed to read channel {channel!r}", cors)
    ttl = settings.ticket_ttl
    try:
        ticket = issue_ticket(current_app, identity.id, channels, ttl, identity.expires_at, identity.claims)
    except ValueError as exc:
        # The token loader's claims cannot travel in a ticket: the credential itself still
        # opens the stream (a Bearer header through the fetch client).
        return _answer(422, f"{exc}; open the stream with the credential instead", cors)
    response = jsonify(ticket=ticket, expires_in=ttl)
    response.headers.update({**cors, "Cache-Control": "no-store"})
    return response
