"""``Pace``: direct writes while delivering takes at most half the time, queueing past that,
with direct writes tried again ``RETRY`` seconds later. Times are given, not waited for."""

from __future__ import annotations

from flask_sse_ext.pace import BUSY, RETRY, WINDOW, Pace


def _deliveries(pace: Pace, start: float, share: float, seconds: float, every: float = 0.01) -> float:
    """A delivery every ``every`` seconds for ``seconds``, each costing ``share`` of that much
    CPU time; returns when the last one ended."""
    now = start
    while now < start + seconds:
        now += every
        pace.delivered(every * share, now)
    return now


def test_a_process_that_keeps_up_writes_directly() -> None:
    pace = Pace(0.0)
    _deliveries(pace, 0.0, share=BUSY * 0.8, seconds=10 * WINDOW)
    assert pace.direct


def test_a_process_past_half_its_time_delivering_queues_then_tries_again() -> None:
    pace = Pace(0.0)
    ended = _deliveries(pace, 0.0, share=BUSY * 1.2, seconds=WINDOW * 1.1)
    assert not pace.direct
    switched = pace.retry_at - RETRY
    assert 0 < switched <= ended
    # Queued deliveries are cheap and say nothing of what direct writes would cost: none of
    # them turns direct writes back on before the retry...
    ended = _deliveries(pace, ended, share=0.01, seconds=RETRY - (ended - switched) - 0.05)
    assert not pace.direct
    # ...which comes on time, and measures afresh: still too costly, queue again.
    ended = _deliveries(pace, ended, share=0.01, seconds=0.1)
    assert pace.direct
    _deliveries(pace, ended, share=BUSY * 1.2, seconds=WINDOW * 2.5)
    assert not pace.direct


def test_sparse_deliveries_never_stop_direct_writes() -> None:
    """One costly fan-out a minute is a small share of the time, however long it takes."""
    pace = Pace(0.0)
    for minute in range(1, 10):
        pace.delivered(0.2, 60.0 * minute)
    assert pace.direct
