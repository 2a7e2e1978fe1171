"""What the demo pages watch: metric samples, jobs that report progress, a token generator.

Background work runs in ``threading.Thread``: under gunicorn's gevent worker (which patches
``threading``) that is a greenlet, under ``flask run`` a real thread. Each one publishes inside
``with app.app_context():``, as any background job would.
"""

from __future__ import annotations

import logging
import os
import random
import re
import secrets
import socket
import threading
import time
from typing import Iterator, Tuple

from flask import Flask

from flask_sse_ext import BrokerError, Event

from .extensions import sse

logger = logging.getLogger(__name__)

METRICS = "metrics"
_lock = threading.Lock()


def start_metrics(app: Flask) -> None:
    """Start the metrics publisher of this process, once (it is called on every request)."""
    pid = os.getpid()
    if app.extensions.get("demo.metrics") == pid:
        return
    with _lock:
        if app.extensions.get("demo.metrics") != pid:
            app.extensions["demo.metrics"] = pid
            thread = threading.Thread(target=_publish_metrics, args=(app,), name="demo-metrics")
            thread.daemon = True
            thread.start()


def _publish_metrics(app: Flask) -> None:
    """Publish a sample of a (simulated) load every METRICS_INTERVAL seconds, forever."""
    interval = float(app.config["METRICS_INTERVAL"])
    turn = _Turn(app, interval) if app.config.get("SSE_REDIS_URL") else None
    load = 50.0
    while True:
        load = min(100.0, max(0.0, load + (50 - load) * 0.1 + random.gauss(0, 6)))
        if turn is None or turn.mine():
            with app.app_context():
                sample = {
                    "t": int(time.time() * 1000),
                    "load": round(load, 1),
                    "streams": sse.stats()["streams"],
                    "worker": os.getpid(),
                }
                try:
                    sse.publish(sample, event="metric", channel=METRICS)
                except BrokerError as exc:
                    logger.warning("metric sample not published: %s", exc)
        time.sleep(interval)


class _Turn:
    """With Redis, several workers (and hosts) run a publisher: the one that holds a short
    lease in Redis publishes, so the chart gets one sample per interval, not one per worker."""

    def __init__(self, app: Flask, interval: float) -> None:
        import redis

        self.errors = redis.RedisError
        self.client = redis.Redis.from_url(app.config["SSE_REDIS_URL"])
        self.key = app.config.get("SSE_REDIS_PREFIX", "sse") + ":example:metrics-publisher"
        self.token = f"{socket.gethostname()}:{os.getpid()}".encode()
        self.ttl_ms = int(interval * 3000)

    def mine(self) -> bool:
        try:
            if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
                return True
            if self.client.get(self.key) == self.token:
                self.client.pexpire(self.key, self.ttl_ms)
                return True
        except self.errors:
            pass
        return False


def start_job(app: Flask, step_seconds: float = 0.15) -> Tuple[str, str]:
    """Start a job that reports ``progress`` events on a channel of its own.

    Returns the channel and the id of the job's first event: the page opens its stream with
    ``?last_event_id=`` that id, so it gets every later event even if the job runs ahead of it.
    """
    channel = "job:" + secrets.token_hex(4)
    first = sse.publish({"percent": 0, "state": "queued"}, event="progress", channel=channel)
    thread = threading.Thread(target=_run_job, args=(app, channel, step_seconds), name=channel)
    thread.daemon = True
    thread.start()
    return channel, first


def _run_job(app: Flask, channel: str, step_seconds: float) -> None:
    with app.app_context():
        for percent in range(5, 101, 5):
            time.sleep(step_seconds)  # the "work"
            state = "done" if percent == 100 else "running"
            sse.publish({"percent": percent, "state": state}, event="progress", channel=channel)


REPLY = (
    "You asked: \u201c{prompt}\u201d. I am not a language model, only a Python generator, but "
    "I answer the way one would: token by token. Each token is yielded by the view's generator "
    "and sent at once as its own event by sse.response(), and the page reads the response of "
    "its POST with fetch() and a stream reader, so you see the text grow as it is produced. "
    "When the generator is done, an sse.end event tells the page that the answer is complete."
)


def chat_reply(prompt: str) -> Iterator[Event]:
    """A canned answer, one ``token`` event per word, at the pace of a slow model."""
    for token in re.findall(r"\S+\s*", REPLY.format(prompt=prompt)):
        time.sleep(random.uniform(0.02, 0.06))
        yield Event(token, event="token")
