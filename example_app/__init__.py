"""The example app of flask-sse-ext: a live dashboard, per-user notifications, job progress and
token streaming, each a small use of one feature of the extension.

    gunicorn -c gunicorn.conf.py              # http://127.0.0.1:8000, in-process broker
    SSE_REDIS_URL=redis://127.0.0.1:6379/0 WEB_CONCURRENCY=4 gunicorn -c gunicorn.conf.py

Settings come from the environment: ``SECRET_KEY``, ``SSE_REDIS_URL`` (Redis, so that several
workers share events), ``SSE_RETRY`` (reconnection delay in ms) and ``METRICS_INTERVAL``
(seconds between two dashboard samples).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

from flask import Flask, Response, jsonify

from flask_sse_ext import BrokerError

from . import demo
from .extensions import login_manager, sse
from .views import bp


def config_from_env() -> Dict[str, Any]:
    env = os.environ
    config: Dict[str, Any] = {"SECRET_KEY": env.get("SECRET_KEY", "dev-only-change-me")}
    if env.get("SSE_REDIS_URL"):
        config["SSE_REDIS_URL"] = env["SSE_REDIS_URL"]
    if env.get("SSE_RETRY"):
        config["SSE_RETRY"] = int(env["SSE_RETRY"])
    if env.get("METRICS_INTERVAL"):
        config["METRICS_INTERVAL"] = float(env["METRICS_INTERVAL"])
    return config


def create_app(config: Optional[Dict[str, Any]] = None) -> Flask:
    app = Flask(__name__)
    app.config.update(METRICS_INTERVAL=1.0, SESSION_COOKIE_SAMESITE="Lax")
    app.config.update(config_from_env())
    app.config.update(config or {})
    sse.init_app(app)
    login_manager.init_app(app)
    app.register_blueprint(bp)
    app.register_error_handler(BrokerError, broker_unavailable)

    # The metrics publisher starts with the first request of each process, not at import: a
    # `flask` CLI command or a test that imports the app starts nothing, and each gunicorn
    # worker gets its own (the in-process broker reaches only the streams of its process).
    @app.before_request
    def start_metrics() -> None:
        demo.start_metrics(app)

    return app


def broker_unavailable(exc: BrokerError) -> Tuple[Response, int, Dict[str, str]]:
    """A publish while Redis is down: a 503 with the reason in JSON, which the pages show, and
    a hint to try again shortly (not an HTML 500 with a traceback)."""
    body = jsonify(error="the event broker is unavailable, try again shortly", reason=str(exc))
    return body, 503, {"Retry-After": "5"}


app = create_app()
