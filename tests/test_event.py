"""Tests for the SSE wire format in ``flask_sse_ext.event``.

Exact-bytes tables pin down the encoder. Property tests check that a parser written
from the WHATWG spec (``support.parser``) reads back what was sent; that parser's own
tests (``test_sse_parser.py``) check it against the spec, so a wrong parser cannot make
the property tests pass.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_sse_ext import SSE
from flask_sse_ext.event import Event, comment, encode_body, frame, retry_line
from support.app import create_app
from support.parser import ParsedEvent, SSEParser, parse

# --------------------------------------------------------------------------------------
# Exact bytes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param("hello", b"data: hello\n", id="plain"),
        pytest.param(" lead", b"data:  lead\n", id="leading-space"),
        pytest.param("tail\n", b"data: tail\ndata: \n", id="trailing-newline"),
        pytest.param("", b"data: \n", id="empty-string"),
        pytest.param("\n", b"data: \ndata: \n", id="one-newline"),
        pytest.param("\n\n", b"data: \ndata: \ndata: \n", id="only-newlines"),
        pytest.param("a\r\nb", b"data: a\ndata: b\n", id="crlf"),
        pytest.param("a\rb", b"data: a\ndata: b\n", id="lone-cr"),
        pytest.param("a\r\r\nb", b"data: a\ndata: \ndata: b\n", id="cr-cr-lf"),
        pytest.param(
            "a\nb\r\nc\rd\n\re",
            b"data: a\ndata: b\ndata: c\ndata: d\ndata: \ndata: e\n",
            id="mixed",
        ),
        pytest.param("h\u00e9llo \u2713", "data: h\u00e9llo \u2713\n".encode("utf-8"), id="non-ascii"),
        pytest.param("\U0001f600", b"data: \xf0\x9f\x98\x80\n", id="emoji"),
        pytest.param("a\0b", b"data: a\x00b\n", id="nul-in-data"),
        pytest.param("a:b", b"data: a:b\n", id="colon-in-data"),
        pytest.param("a\u2028b\x85c", "data: a\u2028b\x85c\n".encode("utf-8"), id="unicode-separators-kept"),
        pytest.param({"a": "\u00e9"}, 'data: {"a":"\u00e9"}\n'.encode("utf-8"), id="dict-compact-utf8"),
        pytest.param([1, "x", None, True], b'data: [1,"x",null,true]\n', id="list"),
        pytest.param({"t": "a\nb"}, b'data: {"t":"a\\nb"}\n', id="json-escaped-newline"),
        pytest.param("x\ny", b"data: x\ndata: y\n", id="str-newline-not-json"),
        pytest.param(42, b"data: 42\n", id="int"),
        pytest.param(None, b"data: null\n", id="none"),
    ],
)
def test_encode_body_data(data: Any, expected: bytes) -> None:
    assert encode_body(data) == expected


@pytest.mark.parametrize(
    ("event", "retry", "expected"),
    [
        pytest.param("update", None, b"event: update\ndata: x\n", id="event"),
        pytest.param(None, 3000, b"retry: 3000\ndata: x\n", id="retry"),
        pytest.param(None, 0, b"retry: 0\ndata: x\n", id="retry-zero"),
        pytest.param("update", 5, b"event: update\nretry: 5\ndata: x\n", id="event-then-retry"),
        pytest.param(" sp", None, b"event:  sp\ndata: x\n", id="event-leading-space"),
        pytest.param("\u00e9v", None, "event: \u00e9v\ndata: x\n".encode("utf-8"), id="event-non-ascii"),
    ],
)
def test_encode_body_event_and_retry(event: Optional[str], retry: Optional[int], expected: bytes) -> None:
    assert encode_body("x", event=event, retry=retry) == expected


@pytest.mark.parametrize(
    ("body", "event_id", "expected"),
    [
        pytest.param(b"data: x\n", "1", b"data: x\nid: 1\n\n", id="simple"),
        pytest.param(b"data: x\n", "", b"data: x\nid: \n\n", id="empty-id"),
        pytest.param(b"data: x\n", "ch:7-0", b"data: x\nid: ch:7-0\n\n", id="cursor"),
        pytest.param(b"data: x\n", "\u00e9", "data: x\nid: \u00e9\n\n".encode("utf-8"), id="non-ascii"),
        pytest.param(b"event: e\ndata: \n", "9", b"event: e\ndata: \nid: 9\n\n", id="event-body"),
    ],
)
def test_frame(body: bytes, event_id: str, expected: bytes) -> None:
    assert frame(body, event_id) == expected


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(Event("hello"), b"data: hello\n\n", id="data-only"),
        pytest.param(Event(), b"data: \n\n", id="default-empty"),
        pytest.param(Event("hi", id="1"), b"data: hi\nid: 1\n\n", id="with-id"),
        pytest.param(
            Event("hello", event="greeting", id="1"),
            b"event: greeting\ndata: hello\nid: 1\n\n",
            id="event-and-id",
        ),
        pytest.param(
            Event("a\nb", event="e", id="7", retry=1500),
            b"event: e\nretry: 1500\ndata: a\ndata: b\nid: 7\n\n",
            id="all-fields-order",
        ),
        pytest.param(Event({"k": [1, 2]}), b'data: {"k":[1,2]}\n\n', id="json"),
        pytest.param(Event("x", id=""), b"data: x\nid: \n\n", id="empty-id"),
    ],
)
def test_event_encode(event: Event, expected: bytes) -> None:
    assert event.encode() == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(None, b":\n", id="default"),
        pytest.param("", b":\n", id="empty"),
        pytest.param("ping", b":ping\n", id="ping"),
        pytest.param(" ping", b": ping\n", id="leading-space"),
        pytest.param("\u00e9", ":\u00e9\n".encode("utf-8"), id="non-ascii"),
    ],
)
def test_comment(text: Optional[str], expected: bytes) -> None:
    assert (comment() if text is None else comment(text)) == expected


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        pytest.param(0, b"retry: 0\n", id="zero"),
        pytest.param(3000, b"retry: 3000\n", id="3000"),
        pytest.param(10**12, b"retry: 1000000000000\n", id="large"),
    ],
)
def test_retry_line(ms: int, expected: bytes) -> None:
    assert retry_line(ms) == expected


def test_comment_and_retry_line_as_parsed() -> None:
    parser = SSEParser()
    assert parser.feed(retry_line(2500) + comment("hb") + comment()) == []
    assert parser.retry == 2500
    assert parser.comments == ["hb", ""]


# --------------------------------------------------------------------------------------
# Rejected input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\0b", "\r", "\n", "end\r\n"])
def test_event_name_with_line_break_or_nul_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match=r"'event'"):
        encode_body("x", event=bad)


@pytest.mark.parametrize("bad", ["1\r2", "1\n2", "1\x002", "\r\n"])
def test_id_with_line_break_or_nul_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match=r"'id'"):
        Event("x", id=bad).encode()


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(-1, id="negative"),
        pytest.param(1.5, id="float"),
        pytest.param(10.0, id="integral-float"),
        pytest.param(True, id="bool-true"),
        pytest.param(False, id="bool-false"),
        pytest.param("10", id="str"),
    ],
)
def test_bad_retry_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"'retry'"):
        encode_body("x", retry=bad)
    with pytest.raises(ValueError, match=r"'retry'"):
        Event("x", retry=bad).encode()


@pytest.mark.parametrize("bad", [b"raw", bytearray(b"raw"), memoryview(b"raw")])
def test_bytes_data_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"data"):
        encode_body(bad)


@pytest.mark.parametrize("bad", [object(), {"k": object()}, {1j}])
def test_non_json_data_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"data"):
        encode_body(bad)


@pytest.mark.parametrize("bad", ["\ud800", "ok\udfffok", {"k": "\ud800"}])
def test_lone_surrogate_in_data_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"data"):
        encode_body(bad)


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "\r\n"])
def test_comment_with_line_break_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match=r"'comment'"):
        comment(bad)


@pytest.mark.parametrize("field", ["event", "id"])
def test_lone_surrogate_in_event_or_id_names_the_field(field: str) -> None:
    event = Event("x", event="\ud800") if field == "event" else Event("x", id="\ud800")
    with pytest.raises(ValueError, match=f"'{field}' is not valid Unicode"):
        event.encode()


# --------------------------------------------------------------------------------------
# Properties: what a spec-conforming client receives
# --------------------------------------------------------------------------------------

# Every character except lone surrogates, which cannot be encoded as UTF-8.
_any_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]))
# A value allowed in an ``event:`` or ``id:`` line.
_field_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\0"),
    min_size=1,
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _any_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_any_text, children, max_size=5),
    max_leaves=20,
)


def _spec_normalized(text: str) -> str:
    # The spec's parser ends a line at CRLF, at a lone CR or at a lone LF, and the
    # data buffer joins lines with LF. A client therefore receives every line
    # break as LF, and the encoder cannot (and need not) do better.
    return re.sub(r"\r\n|\r", "\n", text)


def _one_event(stream: bytes) -> ParsedEvent:
    events = parse(stream)
    assert len(events) == 1, events
    return events[0]


@given(data=_any_text, event=st.none() | _field_text, event_id=st.none() | _field_text)
def test_text_round_trips_through_spec_parser(
    data: str, event: Optional[str], event_id: Optional[str]
) -> None:
    parsed = _one_event(Event(data, event=event, id=event_id).encode())
    assert parsed.data == _spec_normalized(data)
    assert parsed.type == (event if event is not None else "message")
    assert parsed.last_event_id == (event_id if event_id is not None else "")


@given(
    data=_any_text,
    event=st.none() | _field_text,
    event_id=st.none() | _field_text,
    retry=st.none() | st.integers(min_value=0, max_value=2**63),
    split=st.integers(min_value=0),
)
def test_split_feed_matches_whole_feed(
    data: str, event: Optional[str], event_id: Optional[str], retry: Optional[int], split: int
) -> None:
    stream = Event(data, event=event, id=event_id, retry=retry).encode()
    cut = split % (len(stream) + 1)
    whole = SSEParser()
    expected = whole.feed(stream)
    parser = SSEParser()
    got = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
    assert got == expected
    assert len(got) == 1
    assert parser.retry == whole.retry == retry
    assert parser.last_event_id == whole.last_event_id


# A top-level str is sent as text, not JSON, so it is left out here.
@given(value=_json_values.filter(lambda v: not isinstance(v, str)), event_id=st.none() | _field_text)
def test_json_round_trips_on_one_line(value: Any, event_id: Optional[str]) -> None:
    stream = Event(value, id=event_id).encode()
    assert b"\r" not in stream
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    data_lines = [line for line in stream.split(b"\n") if line.startswith(b"data:")]
    assert data_lines == [b"data: " + compact.encode("utf-8")]
    parsed = _one_event(stream)
    assert json.loads(parsed.data) == value


@given(texts=st.lists(_any_text, min_size=1, max_size=5), ids=st.data())
def test_consecutive_events_and_id_persistence(texts: list[str], ids: st.DataObject) -> None:
    stream = b""
    expected: list[ParsedEvent] = []
    last = ""
    for text in texts:
        event_id = ids.draw(st.none() | _field_text)
        if event_id is not None:
            last = event_id
        stream += Event(text, id=event_id).encode()
        expected.append(ParsedEvent("message", _spec_normalized(text), last))
    assert parse(stream) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="infinity"),
        pytest.param({"load": [1.0, float("-inf")]}, id="nested-minus-infinity"),
    ],
)
def test_nan_and_infinity_are_refused(value: Any) -> None:
    """Regression: ``publish(float("nan"))`` sent ``data: NaN``, which ``JSON.parse`` rejects."""
    with pytest.raises(ValueError, match="NaN or Infinity"):
        encode_body(value)
    app = create_app()
    sse = SSE(app)
    with app.app_context(), pytest.raises(ValueError, match="NaN or Infinity"):
        sse.publish(value, channel="news")


def test_no_blank_line_outside_an_event() -> None:
    """Regression: the opening ``retry:`` line and every heartbeat ended with a blank line,
    which httpx-sse and @microsoft/fetch-event-source turn into an empty event."""
    for line in (retry_line(3000), comment(), comment("broker unavailable")):
        assert line.endswith(b"\n") and b"\n\n" not in line
