"""Compound cursors (``flask_sse_ext.cursor``): one ``Last-Event-ID`` for several channels."""

from __future__ import annotations

import re
from typing import List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_sse_ext.brokers.base import Position
from flask_sse_ext.cursor import decode_compound, encode_compound

#: The largest number a token's part holds: 13 base-36 digits.
#: The largest part of a position (64 bits, as in a Redis stream id): 13 base-36 digits.
MAX = 2**64 - 1
MAX_TOKEN = "3w5e11264sgsf"

_positions = st.lists(
    st.tuples(st.integers(min_value=0, max_value=MAX), st.integers(min_value=0, max_value=MAX)),
    min_size=1,
    max_size=20,
)


@pytest.mark.parametrize(
    ("positions", "text"),
    [
        pytest.param([(0, 0)], "~0", id="zero"),
        pytest.param([(1700000000000, 0)], "~loyw3v28", id="sequence-zero-left-out"),
        pytest.param([(1700000000000, 3)], "~loyw3v28-3", id="with-sequence"),
        pytest.param([(35, 36)], "~z-10", id="base-36"),
        pytest.param([(1, 0), (2, 5), (0, 0)], "~1.2-5.0", id="three-channels"),
        pytest.param([(MAX, MAX)], f"~{MAX_TOKEN}-{MAX_TOKEN}", id="largest"),
    ],
)
def test_encode_and_decode_known_values(positions: List[Position], text: str) -> None:
    assert encode_compound(positions) == text
    assert decode_compound(text, len(positions)) == positions


@given(positions=_positions)
def test_round_trip(positions: List[Position]) -> None:
    text = encode_compound(positions)
    assert decode_compound(text, len(positions)) == positions


@given(positions=_positions)
def test_cursor_is_short_and_safe_to_send_cross_origin(positions: List[Position]) -> None:
    """Letters, digits and ``~.-`` only (a CORS-safelisted header value), and within the length
    bound ``decode_compound`` allows: 28 characters a channel."""
    text = encode_compound(positions)
    assert re.fullmatch(r"~[0-9a-z.-]+", text)
    assert len(text) <= 28 * len(positions)


@given(positions=_positions, other=st.integers(min_value=0, max_value=25))
def test_wrong_channel_count_is_refused(positions: List[Position], other: int) -> None:
    if other == len(positions):
        other += 1
    assert decode_compound(encode_compound(positions), other) is None


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("~", id="no-token"),
        pytest.param("1.2", id="no-tilde"),
        pytest.param("1700000000000-0", id="a-plain-position"),
        pytest.param("~1..2", id="empty-token"),
        pytest.param("~1.", id="trailing-dot"),
        pytest.param("~.1", id="leading-dot"),
        pytest.param("~A", id="upper-case"),
        pytest.param("~1-", id="dash-without-sequence"),
        pytest.param("~-1", id="sequence-without-time"),
        pytest.param("~1-2-3", id="two-dashes"),
        pytest.param("~1 ", id="space"),
        pytest.param("~\u0661", id="non-ascii-digit"),
        pytest.param("~!!", id="punctuation"),
        pytest.param("~" + "1" * 14, id="too-many-digits"),
        pytest.param("~1-" + "1" * 14, id="too-many-sequence-digits"),
        # Regression: 13 base-36 digits reach past 64 bits, which Redis refused as a stream id
        # (a broker fault, so the client retried the same cursor for ever).
        pytest.param("~zzzzzzzzzzzzz", id="time-past-64-bits"),
        pytest.param("~1-3w5e11264sgsg", id="sequence-past-64-bits"),
    ],
)
def test_malformed_text_is_refused(text: str) -> None:
    assert decode_compound(text, 1) is None


def test_malformed_token_among_good_ones_is_refused() -> None:
    assert decode_compound("~1.2-3", 2) == [(1, 0), (2, 3)]
    assert decode_compound("~1.?-3", 2) is None


def test_length_bound() -> None:
    """Up to 28 characters a channel are read, more are refused before any parsing."""
    longest = "~" + ".".join([f"{MAX_TOKEN}-{MAX_TOKEN}"] * 3)
    assert len(longest) == 28 * 3
    assert decode_compound(longest, 3) == [(MAX, MAX)] * 3
    assert decode_compound(longest + "0", 3) is None
    assert decode_compound("~" + "0" * 100_000, 1) is None
