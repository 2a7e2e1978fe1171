"""A small live app: a page that listens to a channel and a form that publishes to it.

Run it with ``gunicorn -c gunicorn.conf.py`` (in-process broker, one gevent worker) or set
``SSE_REDIS_URL`` to use Redis.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from flask import Flask, jsonify, render_template, request

from flask_sse_ext import SSE

sse = SSE()


def create_app(config: Optional[Dict[str, Any]] = None) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev-only-change-me")
    if os.environ.get("SSE_REDIS_URL"):
        app.config["SSE_REDIS_URL"] = os.environ["SSE_REDIS_URL"]
    app.config.update(config or {})
    sse.init_app(app)

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    @app.post("/publish")
    def publish() -> Any:
        payload = request.get_json(silent=True) or request.form
        message = str(payload.get("message", ""))
        channel = str(payload.get("channel", "sse"))
        try:
            event_id = sse.publish({"message": message}, event="message", channel=channel)
        except ValueError as exc:
            return jsonify(error=str(exc)), 400
        return jsonify(id=event_id)

    return app


app = create_app()
