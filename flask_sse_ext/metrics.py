"""Prometheus metrics (``pip install "flask-sse-ext[prometheus]"``), correct across workers.

Every process counts for itself (``SSE.stats()``). With the Redis broker, each process also
shares its counters in one Redis hash every few seconds, and the metrics view sums every live
process's latest counters, so any worker answers for all of them. With the in-process broker
there is one process, and it answers for itself.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Iterator

from flask import Response

from .serving import process_name
from .state import SHARE_INTERVAL, AppState, get_state

__all__ = ["metrics_view"]

_GAUGES = {
    "streams": "Open streams",
    "channels": "Channels with at least one local stream",
    "subscriptions": "Live broker subscriptions",
}
_COUNTERS = {
    "published": "Events published",
    "delivered": "Events written to streams live",
    "pushed": "Of those, events written to the socket by the delivering greenlet (no switch)",
    "replayed": "Events written to streams from history",
    "lagged": "Streams cut because their client could not keep up",
    "timed_out": "Streams cut because their sent data did not drain within SSE_SEND_TIMEOUT",
    "broker_reconnects": "Reconnections to the broker",
}

#: Why a stream was cut (the ``reason`` label of ``sse_cuts_total``), each also a counter above.
_CUT_REASONS = ("lagged", "timed_out")


def _totals(state: AppState) -> Dict[str, float]:
    """Gauges summed over live processes; counters over every process seen in the last day,
    live or not, so that a worker that exits does not make a counter go back."""
    totals: Dict[str, float] = {key: float(value) for key, value in state.counters().items()}
    processes = 1
    now = time.time()
    for name, raw in state.broker.shared_stats().items():
        snapshot = json.loads(raw)
        at = snapshot.get("at", 0)
        if name == process_name() or at < now - 86400:
            continue
        live = at >= now - 3 * SHARE_INTERVAL
        processes += live
        for key in _COUNTERS if not live else totals:
            totals[key] += float(snapshot.get(key, 0))
    totals["processes"] = processes
    return totals


def metrics_view() -> Response:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    state = get_state()
    state.serve()  # a scrape before any stream: this process shares its counters from now on
    totals = _totals(state)

    class Collector:
        def collect(self) -> Iterator[Any]:
            for key, text in _GAUGES.items():
                yield GaugeMetricFamily(f"sse_{key}", text, value=totals[key])
            for key, text in _COUNTERS.items():
                yield CounterMetricFamily(f"sse_{key}", text, value=totals[key])
            yield GaugeMetricFamily("sse_processes", "Processes counted", value=totals["processes"])
            cuts = CounterMetricFamily("sse_cuts", "Streams cut, by reason", labels=["reason"])
            for reason in _CUT_REASONS:
                cuts.add_metric([reason], totals[reason])
            yield cuts

    registry = CollectorRegistry()
    registry.register(Collector())
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
