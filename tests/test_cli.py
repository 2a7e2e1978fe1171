"""``flask sse publish|token|stats`` through Flask's CLI runner, against real Redis."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask

from flask_sse_ext import SSE


def make(redis_url: Any = None, prefix: str = "sse") -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="cli-tests", SSE_REDIS_PREFIX=prefix)
    if redis_url:
        app.config["SSE_REDIS_URL"] = redis_url
    SSE(app)
    return app


def test_publish_prints_the_id_and_stores_the_event(redis_server: Any, prefix: str) -> None:
    app = make(redis_server.url, prefix)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["sse", "publish", "news", '{"a": [1, 2]}', "--json", "--event", "update", "--id", "n-1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "n-1"
    with app.app_context():
        [message] = app.extensions["sse"].broker.replay("news", "0-0").messages
    assert message.frame == b'event: update\ndata: {"a":[1,2]}\nid: n-1\n\n'
    app.extensions["sse"].broker.close()


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
    result = app.test_cli_runner().invoke(args=["sse", "token", "alice", "--channel", "news", "--expires", "60"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    response = app.test_client().get(f"/stream?channel=news&token={token}", buffered=False)
    assert response.status_code == 200
    response.close()
    assert app.test_client().get(f"/stream?channel=other&token={token}").status_code == 403
    bad = app.test_cli_runner().invoke(args=["sse", "token", "alice", "--channel", "bad name"])
    assert bad.exit_code == 2 and "Invalid SSE channel name" in bad.output


def test_stats_prints_json(redis_server: Any, prefix: str) -> None:
    app = make(redis_server.url, prefix)
    result = app.test_cli_runner().invoke(args=["sse", "stats"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["streams"] == 0 and stats["published"] == 0
    assert stats["redis_processes"] >= 1  # this process's own connection at least
    app.extensions["sse"].broker.close()
