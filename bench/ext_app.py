"""flask_sse_ext as a user deploys it, for the bench: ``gunicorn -k gevent -w 1 ext_app:app``.

With ``BENCH_REDIS_URL`` set it uses the Redis broker (target ``ext-redis``; the bench
publishes with ``flask_sse_ext.Publisher`` straight into Redis), else the in-process broker
(target ``ext-memory``; the bench publishes through ``POST /publish``). Everything else is
the extension's defaults.
"""

import os

from flask import Flask, jsonify, request

from flask_sse_ext import SSE

app = Flask(__name__)
if os.environ.get("BENCH_REDIS_URL"):
    app.config["SSE_REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
sse = SSE(app)


@app.post("/publish")
def publish():  # type: ignore[no-untyped-def]
    body = request.get_json()
    event_id = sse.publish(body["data"], channel=body.get("channel", "sse"))
    return jsonify(id=event_id)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return jsonify(pid=os.getpid())
