"""flask_sse_ext as a user deploys it, for the bench: ``gunicorn -k gevent -w 1 ext_app:app``.

With ``BENCH_REDIS_URL`` set it uses the Redis broker (target ``ext-redis``; the bench
publishes with ``flask_sse_ext.Publisher`` straight into Redis), else the in-process broker
(target ``ext-memory``), which only code in the worker can reach: the bench hands the worker
a schedule (``POST /series``) and a background greenlet publishes it, as an app's own job
would. ``BENCH_REDIS_CLUSTER=1`` adds ``SSE_REDIS_CLUSTER = True`` (the ``multihost``
scenario: ``BENCH_REDIS_URL`` is then a seed node of a Redis Cluster). ``BENCH_SSE_CONFIG``
(JSON) sets ``SSE_*`` keys (``stalled.py --config``); everything else is the extension's
defaults.
"""

import json
import os
import threading
import time

from flask import Flask, jsonify, request

from flask_sse_ext import SSE

app = Flask(__name__)
if os.environ.get("BENCH_REDIS_URL"):
    app.config["SSE_REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
    if os.environ.get("BENCH_REDIS_CLUSTER"):
        app.config["SSE_REDIS_CLUSTER"] = True
app.config.update(json.loads(os.environ.get("BENCH_SSE_CONFIG", "{}")))
sse = SSE(app)
_series = {"done": threading.Event(), "calls": [], "errors": {}}


@app.post("/publish")
def publish():  # type: ignore[no-untyped-def]
    body = request.get_json()
    event_id = sse.publish(body["data"], channel=body.get("channel", "sse"))
    return jsonify(id=event_id)


@app.post("/series")
def start_series():  # type: ignore[no-untyped-def]
    """Publish ``schedule`` (``[[seconds from now, channel, seq], ...]``) from a background
    greenlet; each event's data is ``E<seq> <time.time()> <pad>`` (with ``pads``, a list, the
    pad of event ``seq`` is ``pads[seq % len(pads)]``: payloads that differ, as real ones do)."""
    body = request.get_json()
    _series.update(done=threading.Event(), calls=[], errors={})
    pads = body.get("pads") or [body["pad"]]
    threading.Thread(target=_publish_series, args=(body["schedule"], pads), daemon=True).start()
    return jsonify(started=True)


@app.get("/series")
def series_result():  # type: ignore[no-untyped-def]
    """Wait until the series is published; its publish call durations (seconds) and errors."""
    _series["done"].wait(float(request.args.get("timeout", "600")))
    return jsonify(done=_series["done"].is_set(), calls=_series["calls"], errors=_series["errors"])


def _publish_series(schedule, pads):  # type: ignore[no-untyped-def]
    calls, errors = _series["calls"], _series["errors"]
    with app.app_context():
        t0 = time.monotonic()
        for offset, channel, seq in schedule:
            # Events already due go out back to back, as a job that fell behind sends them;
            # the streams run while it sleeps.
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            data = "E%d %.6f %s" % (seq, time.time(), pads[seq % len(pads)])
            t = time.perf_counter()
            try:
                sse.publish(data, channel=channel)
            except Exception as exc:  # counted and reported, as the bench does for the others
                kind = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[kind] = errors.get(kind, 0) + 1
            calls.append(time.perf_counter() - t)
    _series["done"].set()


@app.get("/stats")
def stats():  # type: ignore[no-untyped-def]
    return jsonify(sse.stats())


@app.get("/memory")
def memory():  # type: ignore[no-untyped-def]
    """``idle_memory.py``: save a tracemalloc snapshot (``BENCH_TRACEMALLOC=1`` starts tracing
    in the worker) to ``?path=``, and answer the count of live objects by type."""
    import collections
    import gc
    import tracemalloc

    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(request.args["path"])
    return jsonify(collections.Counter(type(o).__name__ for o in gc.get_objects()))


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return jsonify(pid=os.getpid())
