"""What docs/migrating.md tells a flask-sse user to do works as it says."""

from __future__ import annotations

from flask import Flask, abort, request

from flask_sse_ext import SSE, Event


def test_flask_sse_publish_call_keeps_working() -> None:
    app = Flask(__name__)
    sse = SSE(app)
    client = app.test_client()
    response = client.get("/stream?channel=users.social", buffered=False)
    try:
        chunks = iter(response.response)
        next(chunks)  # the retry hint
        with app.app_context():
            event_id = sse.publish(
                {"user": "alice"}, type="status", id="42", retry=500, channel="users.social"
            )
        assert event_id == "42"  # the id, where flask-sse returned Redis's subscriber count
        expected = Event({"user": "alice"}, event="status", id="42", retry=500).encode()
        assert next(chunks) == expected
    finally:
        response.close()


def test_an_app_before_request_hook_on_the_stream_endpoint_replaces_sse_before_request() -> None:
    app = Flask(__name__)
    SSE(app)
    seen = []

    @app.before_request
    def before_stream() -> None:
        if request.endpoint == "sse.stream":
            seen.append(request.args.get("channel"))
            if request.args.get("channel") == "analytics":
                abort(403)

    client = app.test_client()
    assert client.get("/stream?channel=analytics").status_code == 403
    response = client.get("/stream?channel=news", buffered=False)
    try:
        assert response.status_code == 200
    finally:
        response.close()
    assert seen == ["analytics", "news"]


def test_anonymous_refusal_by_the_authorize_hook_is_401_not_403() -> None:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test"
    sse = SSE(app, authorize=lambda identity, channel: identity is not None)
    client = app.test_client()
    anonymous = client.get("/stream?channel=analytics")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    with app.app_context():
        token = sse.issue_token("alice", channels=["news"])
    refused = client.get("/stream?channel=analytics", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 403
