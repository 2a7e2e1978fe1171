"""The suite's event-stream parser (``support.parser``) against the WHATWG spec.

These test the test tool, not the package: ``test_event.py`` trusts this parser to read back
what the encoder sends, so it must follow HTML Living Standard 9.2.6 on the spec's own
examples and rules.
"""

from __future__ import annotations

from typing import Optional

import pytest

from support.parser import ParsedEvent, SSEParser, parse


def test_parser_spec_example_multiline_data() -> None:
    assert parse(b"data: YHOO\ndata: +2\ndata: 10\n\n") == [ParsedEvent("message", "YHOO\n+2\n10", "")]


def test_parser_spec_example_ids_and_comment() -> None:
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
    parser = SSEParser()
    assert parser.feed(stream) == [
        ParsedEvent("message", "first event", "1"),
        ParsedEvent("message", "second event", ""),
        ParsedEvent("message", " third event", ""),
    ]
    assert parser.comments == [" test stream"]


def test_parser_spec_example_data_without_colon() -> None:
    # Blocks: "data" -> ""; "data\ndata" -> "\n"; the last block is never completed.
    assert parse(b"data\n\ndata\ndata\n\ndata:") == [
        ParsedEvent("message", "", ""),
        ParsedEvent("message", "\n", ""),
    ]


def test_parser_spec_example_space_after_colon_optional() -> None:
    assert parse(b"data:test\n\ndata: test\n\n") == [
        ParsedEvent("message", "test", ""),
        ParsedEvent("message", "test", ""),
    ]


def test_parser_removes_only_one_space() -> None:
    assert parse(b"data:   x \n\n") == [ParsedEvent("message", "  x ", "")]


def test_parser_splits_field_at_first_colon() -> None:
    assert parse(b"data: a: b:c\n\n") == [ParsedEvent("message", "a: b:c", "")]


def test_parser_comments_ignored_and_collected() -> None:
    parser = SSEParser()
    assert parser.feed(b":\n: ping\ndata: x\n:mid\n\n") == [ParsedEvent("message", "x", "")]
    assert parser.comments == ["", " ping", "mid"]


def test_parser_unknown_fields_ignored() -> None:
    assert parse(b"foo: bar\nDATA: no\ndata : no\ndata: yes\n\n") == [ParsedEvent("message", "yes", "")]


def test_parser_event_type() -> None:
    assert parse(b"event: add\ndata: 1\n\ndata: 2\n\nevent\ndata: 3\n\n") == [
        ParsedEvent("add", "1", ""),
        ParsedEvent("message", "2", ""),  # the event type buffer is cleared on dispatch
        ParsedEvent("message", "3", ""),  # an empty type means "message"
    ]


def test_parser_event_without_data_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: add\n\n") == []
    # The event type buffer was cleared by the empty dispatch.
    assert parser.feed(b"data: x\n\n") == [ParsedEvent("message", "x", "")]


def test_parser_id_set_even_without_data() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 5\n\n") == []
    assert parser.last_event_id == "5"
    assert parser.feed(b"data: x\n\n") == [ParsedEvent("message", "x", "5")]


def test_parser_id_persists_and_resets() -> None:
    assert parse(b"id: 1\ndata: a\n\ndata: b\n\nid:\ndata: c\n\n") == [
        ParsedEvent("message", "a", "1"),
        ParsedEvent("message", "b", "1"),
        ParsedEvent("message", "c", ""),
    ]


def test_parser_id_with_nul_ignored() -> None:
    assert parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n") == [
        ParsedEvent("message", "a", "1"),
        ParsedEvent("message", "b", "1"),
    ]


def test_parser_nul_in_data_kept() -> None:
    assert parse(b"data: a\x00b\n\n") == [ParsedEvent("message", "a\0b", "")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(b"1000", 1000, id="digits"),
        pytest.param(b"0", 0, id="zero"),
        pytest.param(b"007", 7, id="leading-zeros"),
        pytest.param(b"10a", None, id="trailing-letter"),
        pytest.param(b"-1", None, id="negative"),
        pytest.param(b"+1", None, id="plus"),
        pytest.param(b"1.5", None, id="decimal"),
        pytest.param(b" 1", None, id="second-space"),
        pytest.param(b"1 ", None, id="trailing-space"),
        pytest.param(b"", None, id="empty"),
        pytest.param("\u0661\u0662".encode("utf-8"), None, id="non-ascii-digits"),
        pytest.param("\uff11".encode("utf-8"), None, id="fullwidth-digit"),
    ],
)
def test_parser_retry_only_ascii_digits(value: bytes, expected: Optional[int]) -> None:
    parser = SSEParser()
    assert parser.feed(b"retry: " + value + b"\n\n") == []
    assert parser.retry == expected


def test_parser_retry_ignored_value_keeps_previous() -> None:
    parser = SSEParser()
    parser.feed(b"retry: 100\n\nretry: x\n\n")
    assert parser.retry == 100


def test_parser_incomplete_final_event_not_dispatched() -> None:
    assert parse(b"data: a\n\ndata: b\n") == [ParsedEvent("message", "a", "")]
    assert parse(b"data: a") == []
    parser = SSEParser()
    assert parser.feed(b"data: b\n") == []
    assert parser.feed(b"\n") == [ParsedEvent("message", "b", "")]


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"data: a\r\ndata: b\r\n\r\n", id="crlf"),
        pytest.param(b"data: a\rdata: b\r\r", id="cr"),
        pytest.param(b"data: a\ndata: b\n\n", id="lf"),
        pytest.param(b"data: a\r\ndata: b\r\r\n", id="mixed"),
    ],
)
def test_parser_line_endings(stream: bytes) -> None:
    assert parse(stream) == [ParsedEvent("message", "a\nb", "")]


def test_parser_cr_cr_lf_is_two_line_ends() -> None:
    assert parse(b"data: a\r\r\ndata: b\n\n") == [
        ParsedEvent("message", "a", ""),
        ParsedEvent("message", "b", ""),
    ]


def test_parser_crlf_split_across_chunks_counted_once() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # Counting the LF as a second line end would dispatch "a" on its own.
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r\n") == [ParsedEvent("message", "a\nb", "")]


def test_parser_cr_then_empty_chunk_then_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\ndata: b\n\n") == [ParsedEvent("message", "a\nb", "")]


def test_parser_cr_then_cr_across_chunks() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [ParsedEvent("message", "a", "")]


def test_parser_utf8_split_inside_sequence() -> None:
    stream = "data: h\u00e9 \u2713 \U0001f600\n\n".encode("utf-8")
    parser = SSEParser()
    events: list[ParsedEvent] = []
    for i in range(len(stream)):
        events += parser.feed(stream[i : i + 1])
    assert events == [ParsedEvent("message", "h\u00e9 \u2713 \U0001f600", "")]


def test_parser_invalid_utf8_replaced() -> None:
    assert parse(b"data: a\xffb\n\n") == [ParsedEvent("message", "a\ufffdb", "")]


def test_parser_unicode_line_separators_are_not_line_ends() -> None:
    stream = "data: a\u2028b\x85c\x0bd\x0ce\x1cf\n\n".encode("utf-8")
    assert parse(stream) == [ParsedEvent("message", "a\u2028b\x85c\x0bd\x0ce\x1cf", "")]


def test_parser_bom_stripped_once() -> None:
    assert parse(b"\xef\xbb\xbfdata: x\n\n") == [ParsedEvent("message", "x", "")]
    # A second BOM is part of the first line's field name, so the field is unknown.
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []
    # A BOM anywhere but the start of the stream is kept.
    assert parse(b"data: \xef\xbb\xbfx\n\n") == [ParsedEvent("message", "\ufeffx", "")]


def test_parser_bom_split_across_chunks() -> None:
    parser = SSEParser()
    assert parser.feed(b"\xef") == []
    assert parser.feed(b"\xbb") == []
    assert parser.feed(b"\xbfdata: x\n\n") == [ParsedEvent("message", "x", "")]
    # Only the stream's start may carry one: a later BOM is data.
    assert parser.feed(b"\xef\xbb\xbfdata: y\n\n") == []
