"""When direct writes pay, and when they do not.

A direct write (``push.DirectWrites``) costs one ``send`` per stream and event, made by the
greenlet that delivers the event. That is the cheapest way while the process keeps up. Past
that point (thousands of streams at tens of events a second on one core), writing each event
to each socket would leave the deliveries further and further behind: there, queueing is
cheaper, since a stream's greenlet sends everything waiting for it in one write, so the
further behind it is the fewer sends each event costs.
"""

from __future__ import annotations

__all__ = ["Pace"]

#: Seconds over which the share of time spent delivering is measured.
WINDOW = 0.25
#: Past this share of the time spent writing events directly, events queue instead...
BUSY = 0.5
#: ...for this many seconds; then direct writes are tried again.
RETRY = 5.0


class Pace:
    """Decides, from what deliveries cost, whether the hub writes events directly
    (``direct``). ``delivered(cost, now)`` reports one delivery: its CPU time
    (``time.thread_time``: time the process was not running does not count) and when it
    ended (``time.monotonic``)."""

    __slots__ = ("direct", "busy", "since", "retry_at")

    def __init__(self, now: float) -> None:
        self.direct = True
        #: CPU seconds spent delivering since ``since``, the start of the current window.
        self.busy = 0.0
        self.since = now
        #: While queueing: when to try direct writes again.
        self.retry_at = 0.0

    def delivered(self, cost: float, now: float) -> None:
        if not self.direct:
            if now >= self.retry_at:
                self.direct = True
                self.busy = 0.0
                self.since = now
            return
        self.busy += cost
        elapsed = now - self.since
        if elapsed >= WINDOW:
            if self.busy > BUSY * elapsed:
                self.direct = False
                self.retry_at = now + RETRY
            self.busy = 0.0
            self.since = now
