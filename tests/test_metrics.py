"""The Prometheus endpoint: one worker answers for all of them, through Redis."""

from __future__ import annotations

import time
from typing import Any, Dict, List

from conftest import Server
from sse_client import RawStream, request


def scrape(server: Server) -> Dict[str, float]:
    status, body = request(server.port, "GET", "/metrics")
    assert status == 200, body
    values = {}
    for line in body.decode().splitlines():  # type: ignore[union-attr]
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_sum_every_worker(start_server: Any, redis_server: Any, prefix: str) -> None:
    server: Server = start_server(
        config={"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix,
                "SSE_METRICS_PATH": "/metrics"},
        workers=3,
    )  # fmt: skip
    # A stream lands on whichever worker accepts first: open them ten at a time until at least
    # two workers hold some (a worker shares its counters from its first stream on).
    streams: List[RawStream] = []
    deadline = time.monotonic() + 20
    while len(streams) < 30 or scrape(server).get("sse_processes", 0) < 2:
        assert time.monotonic() < deadline and len(streams) < 300, "every stream went to one worker"
        first = len(streams)
        batch = [RawStream(server.port, f"/stream?channel=m{i % 3}") for i in range(first, first + 10)]
        for stream in batch:
            stream.opening()
        streams += batch
    for i in range(3):
        server.publish(data="x", channel=f"m{i}")
    for stream in streams:
        stream.events(1)
    total = len(streams)
    deadline = time.monotonic() + 20
    while True:  # each worker shares its counters every few seconds
        values = scrape(server)
        if values.get("sse_streams") == total and values.get("sse_delivered_total") == total:
            break
        assert time.monotonic() < deadline, values
        time.sleep(0.5)
    assert values["sse_published_total"] == 3
    assert values["sse_processes"] >= 2  # the streams landed on several workers
    for stream in streams:
        stream.close()


def test_metrics_with_the_in_process_broker(start_server: Any) -> None:
    server: Server = start_server(config={"SSE_METRICS_PATH": "/metrics"})
    stream = RawStream(server.port, "/stream?channel=a")
    stream.opening()
    server.publish(data="x", channel="a")
    stream.events(1)
    values = scrape(server)
    assert values["sse_streams"] == 1 and values["sse_delivered_total"] == 1
    assert values["sse_published_total"] == 1 and values["sse_processes"] == 1


def test_no_metrics_route_unless_configured(server: Server) -> None:
    assert request(server.port, "GET", "/metrics")[0] == 404
