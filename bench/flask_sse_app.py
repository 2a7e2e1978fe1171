"""The PyPI package ``flask-sse`` used as its README shows: ``gunicorn -k gevent -w 1 flask_sse_app:app``.

Every stream opens its own Redis pub/sub connection (that is how flask-sse works). The bench
publishes with ``flask_sse.sse.publish`` in an app context of its own process (straight into
Redis, as the README's view would); ``POST /publish`` does the same from inside the worker.
"""

import os

from flask import Flask, jsonify, request
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")


@app.route("/publish", methods=["POST"])
def publish():  # type: ignore[no-untyped-def]
    body = request.get_json()
    receivers = sse.publish(body["data"], channel=body.get("channel", "sse"))
    return jsonify(receivers=receivers)


@app.route("/ping")
def ping():  # type: ignore[no-untyped-def]
    return jsonify(pid=os.getpid())
