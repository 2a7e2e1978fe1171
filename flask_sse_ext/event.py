"""The SSE wire format: the only module that writes ``data:``, ``event:``, ``id:`` and ``retry:``.

An event is encoded in two parts. The *body* (``event``, ``retry`` and ``data`` lines) is
encoded once, when the event is published, and travels through the broker as bytes. The *frame*
that a client receives is the body plus an ``id:`` line and the blank line that dispatches it;
it is built once per event for every single-channel stream, or per client where the id is a
multi-channel cursor.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional, Sequence

__all__ = [
    "MISSED_EVENT",
    "REAUTH_EVENT",
    "missed_event",
    "reauth",
    "unavailable",
    "CURSOR_COMMENT",
    "Event",
    "encode_body",
    "frame",
    "comment",
    "cursor_comment",
    "retry_line",
    "validate_field",
]

#: Sent when history after the client's ``Last-Event-ID`` is no longer known.
MISSED_EVENT = "sse.missed"

#: Sent, without an id, as the last event of a stream whose credential expired.
REAUTH_EVENT = "sse.reauth"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN = ("\r", "\n", "\0")


def validate_field(name: str, value: str) -> str:
    """Return ``value`` if it may stand in an ``event:`` or ``id:`` line, else raise ``ValueError``.

    CR and LF would end the line early and let the value inject fields of its own; the spec
    makes a browser ignore an ``id`` that contains NUL.
    """
    if not isinstance(value, str):
        raise ValueError(f"SSE {name!r} must be a str, got {type(value).__name__}")
    for bad in _FORBIDDEN:
        if bad in value:
            raise ValueError(f"SSE {name!r} must not contain CR, LF or NUL characters, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"SSE {name!r} is not valid Unicode text: {exc.reason}") from None
    return value


def _data_text(data: Any) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError("SSE data must be a str or a JSON-serializable value, not bytes")
    try:
        # allow_nan=False: NaN and Infinity are not JSON, and JSON.parse rejects them.
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise ValueError(
                "SSE data contains NaN or Infinity, which JSON cannot represent (JSON.parse "
                "rejects it): send null, a number or a string instead"
            ) from None
        raise ValueError(f"SSE data is neither a str nor JSON-serializable: {exc}") from None
    except TypeError as exc:
        raise ValueError(f"SSE data is neither a str nor JSON-serializable: {exc}") from None


def encode_body(data: Any, event: Optional[str] = None, retry: Optional[int] = None) -> bytes:
    """Encode the ``event``, ``retry`` and ``data`` lines of one event.

    ``data`` that is not a ``str`` is JSON-encoded compactly, keeping non-ASCII text as UTF-8.
    A string is split on CR, LF and CRLF into one ``data: `` line each, so empty lines, a
    leading space and a trailing line break arrive as sent (a browser turns every line break
    into LF, as the spec requires). Raises ``ValueError`` for a bad ``event`` or ``retry``.
    """
    parts = []
    if event is not None:
        parts.append("event: " + validate_field("event", event) + "\n")
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ValueError(f"SSE 'retry' must be a non-negative int (milliseconds), got {retry!r}")
        parts.append(f"retry: {retry}\n")
    for line in _LINE_BREAK.split(_data_text(data)):
        parts.append("data: " + line + "\n")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"SSE data is not valid Unicode text: {exc.reason}") from None


def frame(body: bytes, event_id: str) -> bytes:
    """A complete event: ``body``, its ``id:`` line and the blank line that dispatches it."""
    return body + b"id: " + event_id.encode("utf-8") + b"\n\n"


# Outside an event the server writes no blank line: the spec dispatches nothing on a blank line
# with no data, but httpx-sse and @microsoft/fetch-event-source yield an empty event for it
# (httpx-sse once the stream has had an id). A lone comment or ``retry:`` line needs none.


def comment(text: str = "") -> bytes:
    """A comment line (ignored by every client; used for heartbeats), with no blank line."""
    validate_field("comment", text)
    return b":" + text.encode("utf-8") + b"\n"


#: The comment a multi-channel stream opens with: ``:cursor <id>``. sse-client.js takes it as its
#: ``Last-Event-ID``; every other client ignores it, so it yields no event (an id-only dispatch
#: would: httpx-sse and fetch-event-source turn it into an empty event).
CURSOR_COMMENT = "cursor "


def cursor_comment(cursor: str) -> bytes:
    """The opening cursor of a multi-channel stream, as a comment (see ``CURSOR_COMMENT``)."""
    return comment(CURSOR_COMMENT + cursor)


def retry_line(milliseconds: int) -> bytes:
    """A lone ``retry:`` field, sent when a stream opens: a client applies it as it reads the
    line, so it needs no blank line (which some clients would turn into an empty event)."""
    return b"retry: %d\n" % milliseconds


class Event:
    """One server-sent event, for direct use and for tests.

    >>> Event("hello", event="greeting", id="1").encode()
    b'event: greeting\\ndata: hello\\nid: 1\\n\\n'
    """

    __slots__ = ("data", "event", "id", "retry")

    def __init__(
        self,
        data: Any = "",
        event: Optional[str] = None,
        id: Optional[str] = None,
        retry: Optional[int] = None,
    ) -> None:
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry

    def encode(self) -> bytes:
        """The event on the wire. Raises ``ValueError`` for a field that cannot be sent."""
        body = encode_body(self.data, self.event, self.retry)
        if self.id is None:
            return body + b"\n"
        return frame(body, validate_field("id", self.id))

    def __repr__(self) -> str:
        return f"Event(data={self.data!r}, event={self.event!r}, id={self.id!r}, retry={self.retry!r})"


def unavailable(retry: int) -> bytes:
    """A whole response body for when the broker is down. A non-200 answer would make
    EventSource give up for good; this one ends at once, and the browser tries again after
    ``retry`` milliseconds."""
    return retry_line(retry) + comment("broker unavailable, retry later")


def reauth() -> bytes:
    """The event that ends a stream whose credential expired. It carries no id, so the
    client's ``Last-Event-ID`` still resumes after the last event it got."""
    return encode_body({"reason": "credential expired"}, REAUTH_EVENT) + b"\n"


def missed_event(channels: Sequence[str], cursor_id: str) -> bytes:
    """The event that tells a stream the history of ``channels`` after its cursor is gone."""
    body = encode_body({"channels": list(channels)}, MISSED_EVENT)
    return frame(body, cursor_id)
