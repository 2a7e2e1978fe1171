"""Testing an app that streams, with Flask's test client and pytest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask

from flask_sse_ext import SSE, private_channel
from flask_sse_ext.signals import event_published

sse = SSE()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="change me", **(config or {}))
    sse.init_app(app)

    @app.post("/orders/<int:order_id>/ship")
    def ship(order_id: int) -> dict[str, bool]:
        sse.publish({"order": order_id, "status": "shipped"}, event="order", channel="orders")
        return {"ok": True}

    @app.post("/count")
    def count() -> Any:
        return sse.response(str(n) for n in range(3))

    return app


@pytest.fixture
def app() -> Flask:
    # The in-process broker (no SSE_REDIS_URL): nothing to start. A short heartbeat interval
    # bounds how long reading a quiet stream can block.
    return create_app({"TESTING": True, "SSE_HEARTBEAT_INTERVAL": 1})


def parse(body: bytes) -> list[dict[str, str]]:
    """The events in ``body``, each as a dict of its fields; comments and hints skipped."""
    events = []
    for block in body.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name in ("event", "id"):
                fields[name] = value
            elif name == "data":
                fields["data"] = fields["data"] + "\n" + value if "data" in fields else value
        if "data" in fields:
            events.append(fields)
    return events


def test_a_stream_receives_what_a_view_publishes(app: Flask) -> None:
    client = app.test_client()
    # buffered=False: the response is read as it streams, instead of waiting for its end.
    response = client.get("/stream?channel=orders", buffered=False)
    try:
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        chunks = iter(response.response)
        assert next(chunks) == b"retry: 3000\n"  # sent at once: the stream is open
        client.post("/orders/7/ship")
        (event,) = parse(next(chunks))
        assert event["event"] == "order"
        assert json.loads(event["data"]) == {"order": 7, "status": "shipped"}
    finally:
        response.close()  # ends the stream and frees its subscription


def test_what_was_published_without_opening_a_stream(app: Flask) -> None:
    published: list[dict[str, Any]] = []

    def record(sender: Flask, **fields: Any) -> None:
        published.append(fields)

    with event_published.connected_to(record, app):
        app.test_client().post("/orders/7/ship")
    assert [p["channel"] for p in published] == ["orders"]


def test_a_direct_stream_is_read_whole(app: Flask) -> None:
    # A direct stream ends (with sse.end), so the ordinary buffered client reads all of it.
    body = app.test_client().post("/count").get_data()
    assert [(e.get("event"), e["data"]) for e in parse(body)] == [
        (None, "0"),
        (None, "1"),
        (None, "2"),
        ("sse.end", ""),
    ]


def test_a_private_channel_needs_its_user(app: Flask) -> None:
    client = app.test_client()
    channel = private_channel("alice")
    assert client.get(f"/stream?channel={channel}").status_code == 401
    with app.app_context():
        token = sse.issue_token("alice")
    response = client.get(
        f"/stream?channel={channel}", headers={"Authorization": f"Bearer {token}"}, buffered=False
    )
    try:
        assert response.status_code == 200
    finally:
        response.close()
