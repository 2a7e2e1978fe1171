"""A test-only event-stream parser written from the WHATWG HTML Living Standard.

It follows section 9.2.6, "Interpreting an event stream" (and 9.2.5, the stream's
grammar), as a browser's ``EventSource`` does. The tests use it to check what a
client actually receives from the encoder in ``flask_sse_ext.event``; its own tests, on the
spec's examples and rules, are in ``tests/test_sse_parser.py``.

Spec behaviour it keeps:

* The stream is decoded as UTF-8. Invalid bytes become U+FFFD, and one leading
  U+FEFF BYTE ORDER MARK is ignored.
* A line ends at CRLF, at a lone CR or at a lone LF. A CR at the end of one chunk
  followed by an LF at the start of the next is a single line end.
* An empty line dispatches the event. A line starting with ``:`` is a comment.
  Otherwise the field name ends at the first ``:`` and one leading space is removed
  from the value. A line with no colon is a field name with an empty value.
* ``event`` sets the event type buffer. ``data`` appends the value and an LF to
  the data buffer. ``id`` sets the last event ID buffer, unless the value contains
  NUL. ``retry`` sets the reconnection time, but only if the value is one or more
  ASCII digits (an empty value is ignored, as browsers do). Any other field is ignored.
* On dispatch the last event ID string is always updated. If the data buffer is
  empty, no event is fired. Otherwise one trailing LF is removed from the data and
  the type defaults to ``"message"``. The data and event type buffers are then
  cleared.
* At the end of the input, an event that is not yet complete is discarded.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["ParsedEvent", "SSEParser", "parse"]

_BOM = "\ufeff"
_ASCII_DIGITS = frozenset("0123456789")


@dataclass
class ParsedEvent:
    """One dispatched event, as a ``MessageEvent`` would present it."""

    type: str = "message"
    data: str = ""
    last_event_id: str = ""


class SSEParser:
    """Incremental parser: feed it bytes in chunks of any size and collect the events it fires."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bom_checked = False
        self._buffer = ""  # decoded text that does not yet end in a line break
        self._skip_lf = False  # the previous chunk ended in CR: an LF now is its CRLF's tail
        self._data = ""  # the data buffer
        self._event_type = ""  # the event type buffer
        self._last_event_id_buffer = ""
        self.last_event_id: str = ""  # the source's last event ID string
        self.retry: int | None = None  # the reconnection time in milliseconds, if ever set
        self.comments: list[str] = []  # comment lines, without their leading colon

    def feed(self, chunk: bytes) -> list[ParsedEvent]:
        """Parse one chunk and return the events that it completes, in order."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._bom_checked:
            self._bom_checked = True
            if text.startswith(_BOM):
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        self._buffer += text
        return self._process_lines()

    def _process_lines(self) -> list[ParsedEvent]:
        events: list[ParsedEvent] = []
        buf = self._buffer
        pos = 0
        length = len(buf)
        while pos < length:
            cr = buf.find("\r", pos)
            lf = buf.find("\n", pos)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                line, pos = buf[pos:lf], lf + 1
            elif cr + 1 < length:
                line = buf[pos:cr]
                pos = cr + 2 if buf[cr + 1] == "\n" else cr + 1
            else:
                # The CR is the last character so far: it ends the line, and an LF
                # arriving at the start of the next chunk belongs to it.
                line, pos = buf[pos:cr], cr + 1
                self._skip_lf = True
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        self._buffer = buf[pos:]
        return events

    def _process_line(self, line: str) -> ParsedEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:])
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._process_field(name, value)
        return None

    def _process_field(self, name: str, value: str) -> None:
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                self._last_event_id_buffer = value
        elif name == "retry":
            if value and all(c in _ASCII_DIGITS for c in value):
                self.retry = int(value, 10)
        # Any other field name is ignored.

    def _dispatch(self) -> ParsedEvent | None:
        self.last_event_id = self._last_event_id_buffer
        if self._data == "":
            self._event_type = ""
            return None
        data = self._data[:-1] if self._data.endswith("\n") else self._data
        event = ParsedEvent(
            type=self._event_type or "message",
            data=data,
            last_event_id=self.last_event_id,
        )
        self._data = ""
        self._event_type = ""
        return event


def parse(stream: bytes) -> list[ParsedEvent]:
    """Parse a whole stream. An incomplete event at its end is not dispatched."""
    return SSEParser().feed(stream)
