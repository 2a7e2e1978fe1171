"""The app the streaming tests serve under a real gunicorn gevent worker.

Config comes from the ``SSE_TEST_CONFIG`` environment variable (JSON), so one module serves
every configuration the tests need.
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any, Dict, Iterator, Optional

import greenlet
from flask import Flask, jsonify, request

from flask_sse_ext import SSE, BrokerError, Event, Identity

sse = SSE()
#: When each /probe generator's ``finally`` ran (epoch seconds), by name.
FINALLY: Dict[str, float] = {}


@sse.authorize
def authorize(identity: Optional[Identity], channel: str) -> bool:
    """Channels named admin* are for the identity "root" only."""
    return not channel.startswith("admin") or (identity is not None and identity.id == "root")


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "stream-app-test-secret"
    app.config.update(json.loads(os.environ.get("SSE_TEST_CONFIG", "{}")))
    sse.init_app(app)

    @app.post("/chat")
    def chat() -> Any:
        prompt = request.get_json()["prompt"]

        def reply() -> Iterator[Any]:
            for word in f"You said: {prompt}".split(" "):
                yield Event(word, event="token")
                time.sleep(0.05)

        return sse.response(reply())

    @app.get("/slow")
    def slow() -> Any:
        pause = float(request.args["pause"])

        def items() -> Iterator[str]:
            yield "first"
            time.sleep(pause)
            yield "second"

        return sse.response(items(), heartbeat=float(request.args.get("heartbeat", 0.5)))

    @app.get("/probe/<name>")
    def probe(name: str) -> Any:
        def forever() -> Iterator[str]:
            try:
                while True:
                    yield "tick"
                    time.sleep(30)  # an upstream call that takes long
            finally:
                FINALLY[name] = time.time()

        return sse.response(forever(), heartbeat=5)

    @app.get("/finally/<name>")
    def finally_at(name: str) -> Any:
        return jsonify(at=FINALLY.get(name))

    @app.get("/fail")
    def fail() -> Any:
        def items() -> Iterator[str]:
            yield "ok"
            raise RuntimeError("upstream exploded with a secret")

        return sse.response(items(), expose_errors=request.args.get("expose") == "1")

    @app.get("/token")
    def token() -> Any:
        return sse.issue_token(
            request.args["identity"],
            channels=request.args.getlist("channel") or None,
            expires_in=float(request.args.get("expires", 3600)),
        )

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
        greenlets = sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet))
        fds = len(os.listdir("/proc/self/fd"))
        return jsonify({**sse.stats(), "greenlets": greenlets, "fds": fds, "pid": os.getpid()})

    return app


app = create_app()
