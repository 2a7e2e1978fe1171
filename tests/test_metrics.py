"""The Prometheus endpoint: one worker answers for all of them, through Redis."""

from __future__ import annotations

import http.client
import json
from typing import Dict, List, Optional

from support.client import RawStream, request
from support.redis import RedisServer
from support.server import Server, StartServer
from support.waiting import wait_until


def scrape(server: Server) -> Dict[str, float]:
    status, body = request(server.port, "GET", "/metrics")
    assert status == 200, body
    values: Dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def publish_on_a_sharing_worker(server: Server, **fields: object) -> None:
    """``server.publish``, on a worker that holds a stream: without the ``post_worker_init``
    hook a worker shares its counters from its first stream on, so a publish on a worker that
    never had one would count nowhere. (A keep-alive connection stays with one worker.)"""

    def attempt() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            conn.request("GET", "/stats")
            if not json.loads(conn.getresponse().read())["streams"]:
                return False
            conn.request("POST", "/publish", json.dumps(fields), {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200, response.read()
            return True
        finally:
            conn.close()

    wait_until(attempt, message="no worker with streams answered", interval=0)


def test_metrics_sum_every_worker(start_server: StartServer, redis_server: RedisServer, prefix: str) -> None:
    config = {"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix, "SSE_METRICS_PATH": "/metrics"}
    server = start_server(config=config, workers=3)
    # A stream lands on whichever worker accepts first: open them ten at a time until at least
    # two workers hold some (a worker shares its counters from its first stream on).
    streams: List[RawStream] = []

    def spread() -> bool:
        if len(streams) >= 30 and scrape(server).get("sse_processes", 0) >= 2:
            return True
        assert len(streams) < 300, "every stream went to one worker"
        first = len(streams)
        batch = [RawStream(server.port, f"/stream?channel=m{i % 3}") for i in range(first, first + 10)]
        for stream in batch:
            stream.opening()
        streams.extend(batch)
        return False

    wait_until(spread, timeout=20, message="every stream went to one worker", interval=0)
    for i in range(3):
        publish_on_a_sharing_worker(server, data="x", channel=f"m{i}")
    for stream in streams:
        stream.events(1)
    total = len(streams)

    def summed() -> Optional[Dict[str, float]]:
        values = scrape(server)
        if values.get("sse_streams") == total and values.get("sse_delivered_total") == total:
            return values
        return None

    # Each worker shares its counters every few seconds.
    values = wait_until(summed, timeout=20, message=lambda: f"{scrape(server)}", interval=0.5)
    assert values["sse_published_total"] == 3
    assert values["sse_processes"] >= 2  # the streams landed on several workers
    for stream in streams:
        stream.close()


def test_metrics_with_the_in_process_broker(start_server: StartServer) -> None:
    server = start_server(config={"SSE_METRICS_PATH": "/metrics"})
    stream = RawStream(server.port, "/stream?channel=a")
    stream.opening()
    server.publish(data="x", channel="a")
    stream.events(1)
    values = scrape(server)
    assert values["sse_streams"] == 1 and values["sse_delivered_total"] == 1
    assert values["sse_published_total"] == 1 and values["sse_processes"] == 1


def test_no_metrics_route_unless_configured(server: Server) -> None:
    assert request(server.port, "GET", "/metrics")[0] == 404
