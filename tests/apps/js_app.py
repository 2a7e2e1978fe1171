"""The app the JS client tests (tests/test_js_client.py) serve under a real gunicorn gevent worker.

It serves a page that imports ``sse-client.js`` from the extension's static route, and records
every request it gets (path, method, ``Last-Event-ID``) so a test can count reconnections.
Config comes from the ``SSE_TEST_CONFIG`` environment variable (JSON).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional

from flask import Flask, Response, jsonify, request

from flask_sse_ext import SSE, BrokerError, Event, Identity

sse = SSE()

#: Every request but the bookkeeping ones, in order, with the headers the client must send.
REQUESTS: List[Dict[str, Optional[str]]] = []
_BOOKKEEPING = ("/requests", "/seen-ids", "/stats")

PAGE = """<!doctype html><meta charset="utf-8"><title>sse-client.js</title>
<script type="module">
  import {connect, createParser} from "/stream/static/sse-client.js";
  window.connect = connect;
  window.createParser = createParser;
  window.ready = true;
</script>"""


@sse.authorize
def authorize(identity: Optional[Identity], channel: str) -> bool:
    """Channel "secret" is for the identity "alice" only."""
    return channel != "secret" or (identity is not None and identity.id == "alice")


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "js-app-test-secret"
    app.config.update(json.loads(os.environ.get("SSE_TEST_CONFIG", "{}")))
    sse.init_app(app)

    @app.before_request
    def record() -> None:
        if request.path not in _BOOKKEEPING:
            REQUESTS.append(
                {
                    "path": request.path,
                    "method": request.method,
                    "last_event_id": request.headers.get("Last-Event-ID"),
                    "accept": request.headers.get("Accept"),
                    "cache_control": request.headers.get("Cache-Control"),
                }
            )

    @app.get("/")
    def index() -> Any:
        return Response(PAGE, mimetype="text/html")

    @app.get("/requests")
    def requests() -> Any:
        path = request.args.get("path")
        return jsonify([r for r in REQUESTS if path is None or r["path"] == path])

    @app.get("/seen-ids")
    def seen_ids() -> Any:
        """The ``Last-Event-ID`` of every /stream request this process got (None: absent)."""
        return jsonify([r["last_event_id"] for r in REQUESTS if r["path"] == "/stream"])

    @app.post("/chat")
    def chat() -> Any:
        prompt = request.get_json()["prompt"]

        def reply() -> Iterator[Any]:
            for word in f"You said: {prompt}".split(" "):
                yield Event(word, event="token")
                time.sleep(0.05)

        return sse.response(reply())

    @app.get("/flaky/<name>")
    def flaky(name: str) -> Any:
        """The first request opens a stream that sends ``retry:`` and ends; later ones get 503."""
        if sum(1 for r in REQUESTS if r["path"] == request.path) == 1:
            retry = int(request.args.get("retry", "300"))
            return Response(f"retry: {retry}\n\n", mimetype="text/event-stream")
        return Response("down for a while\n", 503, mimetype="text/plain")

    @app.get("/gone")
    def gone() -> Any:
        return Response(status=204)

    @app.get("/forbidden")
    def forbidden() -> Any:
        return Response("no\n", 403, mimetype="text/plain")

    @app.get("/token")
    def token() -> Any:
        return sse.issue_token(request.args["identity"])

    @app.post("/publish")
    def publish() -> Any:
        try:
            event_id = sse.publish(**request.get_json())
        except ValueError as exc:
            return jsonify(error=str(exc)), 400
        except BrokerError as exc:
            return jsonify(error=str(exc)), 503
        return jsonify(id=event_id)

    @app.get("/stats")
    def stats() -> Any:
        return jsonify({**sse.stats(), "pid": os.getpid()})

    return app


app = create_app()
