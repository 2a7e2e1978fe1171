"""``flask sse publish|token|stats`` through Flask's CLI runner, against real Redis."""

from __future__ import annotations

import json
import socket
from typing import Any, Dict, Optional

from flask import Flask

from flask_sse_ext import SSE
from flask_sse_ext.state import get_state
from support.app import create_app
from support.client import RawStream
from support.redis import RedisServer
from support.server import StartServer
from support.waiting import wait_until


def make(redis_url: Optional[str] = None, prefix: str = "sse") -> Flask:
    config: Dict[str, Any] = {"SSE_REDIS_PREFIX": prefix}
    if redis_url:
        config["SSE_REDIS_URL"] = redis_url
    return create_app(config, sse=SSE())


def test_publish_prints_the_id_and_stores_the_event(redis_server: RedisServer, prefix: str) -> None:
    app = make(redis_server.url, prefix)
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["sse", "publish", "news", '{"a": [1, 2]}', "--json", "--event", "update", "--id", "n-1"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "n-1"
    with app.app_context():
        [message] = get_state(app).broker.replay("news", "0-0").messages
    assert message.frame == b'event: update\ndata: {"a":[1,2]}\nid: n-1\n\n'
    get_state(app).broker.close()


def test_publish_errors_are_helpful() -> None:
    runner = make().test_cli_runner()
    bad_channel = runner.invoke(args=["sse", "publish", "no spaces", "x"])
    assert bad_channel.exit_code == 2 and "Invalid SSE channel name" in bad_channel.output
    bad_json = runner.invoke(args=["sse", "publish", "news", "{nope", "--json"])
    assert bad_json.exit_code == 2 and "not JSON" in bad_json.output
    bad_retry = runner.invoke(args=["sse", "publish", "news", "x", "--retry", "-5"])
    assert bad_retry.exit_code == 2
    local = runner.invoke(args=["sse", "publish", "news", "x"])
    assert local.exit_code == 0 and "reached no stream" in local.stderr


def test_publish_when_redis_is_down_fails_clearly() -> None:
    result = make("redis://127.0.0.1:1/0").test_cli_runner().invoke(args=["sse", "publish", "news", "x"])
    assert result.exit_code == 1 and "Redis did not take the event" in result.stderr


def test_token_is_accepted_by_the_stream() -> None:
    app = make()
    result = app.test_cli_runner().invoke(
        args=["sse", "token", "alice", "--channel", "news", "--expires", "60"]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    response = app.test_client().get(f"/stream?channel=news&token={token}", buffered=False)
    assert response.status_code == 200
    response.close()
    assert app.test_client().get(f"/stream?channel=other&token={token}").status_code == 403
    bad = app.test_cli_runner().invoke(args=["sse", "token", "alice", "--channel", "bad name"])
    assert bad.exit_code == 2 and "Invalid SSE channel name" in bad.output


def test_stats_reports_every_server_process_counters_from_redis(
    redis_server: RedisServer, prefix: str, start_server: StartServer
) -> None:
    """Regression: ``flask sse stats`` printed the CLI process's own zero counters, not the
    servers', and counted the CLI's connection as a server process."""
    app = make(redis_server.url, prefix)

    def stats() -> Dict[str, Any]:
        result = app.test_cli_runner().invoke(args=["sse", "stats"])
        assert result.exit_code == 0, result.output
        value: Dict[str, Any] = json.loads(result.stdout)
        return value

    try:
        first = stats()
        assert first["processes"] == 0 and first["per_process"] == {}
        assert first["streams"] == 0 and first["published"] == 0
        server = start_server(
            config={"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix}, workers=2
        )
        streams = [RawStream(server.port, "/stream?channel=lobby") for _ in range(3)]
        for stream in streams:
            stream.opening()
        for n in range(4):
            server.publish(data=n, channel="lobby")

        def counted() -> bool:
            now = stats()
            return bool(now["processes"] == 2 and now["streams"] == 3 and now["published"] == 4)

        wait_until(counted, timeout=15, message=stats)
        now = stats()
        assert sorted(now["per_process"]) == sorted(
            f"{socket.gethostname()}:{pid}" for pid in server.children()
        )
        assert sum(p["streams"] for p in now["per_process"].values()) == 3
        assert now["delivered"] == 12  # every event to every stream, whichever worker holds it
    finally:
        get_state(app).broker.close()


def test_stats_with_the_in_process_broker_says_where_the_counters_are() -> None:
    result = make().test_cli_runner().invoke(args=["sse", "stats"])
    assert result.exit_code == 1 and result.stdout == ""
    assert "counters in the server process" in result.stderr and "SSE_REDIS_URL" in result.stderr


def test_presence_counts_the_streams_of_every_process(
    redis_server: RedisServer, prefix: str, start_server: StartServer
) -> None:
    app = make(redis_server.url, prefix)
    server = start_server(config={"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix})
    streams = [RawStream(server.port, "/stream?channel=lobby") for _ in range(2)]
    for stream in streams:
        stream.opening()

    def presence() -> str:
        result = app.test_cli_runner().invoke(args=["sse", "presence", "lobby"])
        assert result.exit_code == 0, result.output
        return str(result.stdout.strip())

    try:
        wait_until(lambda: presence() == "2", timeout=10, message=presence)
        result = app.test_cli_runner().invoke(args=["sse", "presence", "bad channel"])
        assert result.exit_code != 0 and "Invalid SSE channel name" in result.output
    finally:
        get_state(app).broker.close()
