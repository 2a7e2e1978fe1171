"""Blinker signals, sent with the Flask app as sender.

- ``stream_opened(app, channels=(...), identity=Identity | None)``: a stream passed its checks.
- ``stream_closed(app, channels=(...), identity=..., reason=str | None)``: a stream ended;
  ``reason`` is ``"lagged"`` (too slow), ``"gone"`` (client left), ``"shutdown"`` (worker
  stopping), ``"resync"`` (broker lost track), ``"expired"`` (age limit or token expiry), or
  ``None`` (the server ended it, e.g. a failed write).
- ``event_published(app, channel=str, id=str)``: ``sse.publish`` stored an event.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = ["stream_opened", "stream_closed", "event_published"]

_signals = Namespace()

#: A stream passed its checks: ``channels`` (a tuple), ``identity`` (``Identity`` or ``None``).
stream_opened = _signals.signal("sse-stream-opened")
#: A stream ended: ``channels``, ``identity`` and ``reason`` (see the module docstring).
stream_closed = _signals.signal("sse-stream-closed")
#: ``sse.publish`` stored an event: ``channel`` and ``id``.
event_published = _signals.signal("sse-event-published")
