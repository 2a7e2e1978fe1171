"""Prometheus metrics (``pip install "flask-sse-ext[prometheus]"``), correct across workers.

Every process counts for itself (``SSE.stats()``). With the Redis broker, each process also
shares its counters in one Redis hash every few seconds, and the metrics view sums every live
process's latest counters, so any worker answers for all of them. With the in-process broker
there is one process, and it answers for itself.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator

from flask import Response, current_app

if TYPE_CHECKING:
    from .extension import _State

__all__ = ["metrics_view", "start_sharing", "SHARE_INTERVAL"]

#: Seconds between two shares of a process's counters; older than 3 intervals counts as gone.
SHARE_INTERVAL = 5.0

_GAUGES = {
    "streams": "Open streams",
    "channels": "Channels with at least one local stream",
    "subscriptions": "Live broker subscriptions",
}
_COUNTERS = {
    "published": "Events published",
    "delivered": "Events written to streams live",
    "replayed": "Events written to streams from history",
    "lagged": "Streams cut because their client could not keep up",
    "broker_reconnects": "Reconnections to the broker",
}


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def start_sharing(stats: Callable[[], Dict[str, int]], share: Callable[[str, str], None]) -> None:
    """Share this process's counters every ``SHARE_INTERVAL`` seconds, from a daemon thread."""

    def loop() -> None:
        while True:
            try:
                share(_me(), json.dumps({"at": time.time(), **stats()}))
            except Exception:  # Redis may be down: the next share will do
                pass
            time.sleep(SHARE_INTERVAL)

    threading.Thread(target=loop, name="sse-metrics-share", daemon=True).start()


def _totals(state: _State) -> Dict[str, float]:
    """Gauges summed over live processes; counters over every process seen in the last day,
    live or not, so that a worker that exits does not make a counter go back."""
    totals: Dict[str, float] = {key: float(value) for key, value in state.sse.stats().items()}
    processes = 1
    now = time.time()
    for name, raw in state.broker.shared_stats().items():
        snapshot = json.loads(raw)
        at = snapshot.get("at", 0)
        if name == _me() or at < now - 86400:
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

    state: _State = current_app.extensions["sse"]
    totals = _totals(state)

    class Collector:
        def collect(self) -> Iterator[Any]:
            for key, text in _GAUGES.items():
                yield GaugeMetricFamily(f"sse_{key}", text, value=totals[key])
            for key, text in _COUNTERS.items():
                yield CounterMetricFamily(f"sse_{key}", text, value=totals[key])
            yield GaugeMetricFamily("sse_processes", "Processes counted", value=totals["processes"])

    registry = CollectorRegistry()
    registry.register(Collector())
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
