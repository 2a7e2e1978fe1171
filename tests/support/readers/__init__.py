"""Small programs that read an event stream with a real third-party client, one per client.

Each takes the stream's URL, prints one JSON line per thing its client reports (``{"open":
true}`` when a connection opens, ``{"type", "data", "id", "retry"}`` per event, exactly as the
client yields it) and exits after the event of type ``done``. A client that does not reconnect
by itself is reconnected as its documentation says, with the last event id it reported and
the ``retry`` it reported. ``support.matrix`` runs them; ``tests/node`` holds the Node ones.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

__all__ = ["emit", "emit_event"]


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit_event(type: str, data: str, id: Optional[str], retry: Optional[int]) -> None:
    emit(type=type, data=data, id=id, retry=retry)
