"""The one Flask app factory of the suite: in-process apps, and the app gunicorn serves.

``create_app(config)`` is a bare app for in-process tests (``app.test_client()``); pass
``sse=`` to register an extension. With ``views=True`` it also gets the views the tests drive
over HTTP (below), which is what gunicorn serves: ``served()`` is that app, configured from the
``SSE_TEST_CONFIG`` environment variable (JSON), as ``support.server.start_gunicorn`` sets it.

The views: ``/publish`` (JSON body: ``sse.publish``'s arguments), ``/stats`` (``sse.stats()``
with the worker's greenlets, file descriptors and pid), ``/token``, the direct streams
``/chat`` (POST), ``/slow``, ``/probe/<name>`` and ``/flood/<name>`` (with ``/finally/<name>``)
and ``/fail``,
``/login`` (POST ``?user=``: a Flask-Login session cookie), ``/resync/<channel>`` (POST: ends the
channel's streams, so that their clients reconnect), for the browser client ``/`` (a page that
imports ``sse-client.js``), ``/flaky/<name>``, ``/gone`` and ``/forbidden``; resumable answers
``/answer/<name>`` (any method), ``/cancel/<stream id>`` (``sse.cancel``) and jobs
``/job/<job id>`` (GET: the stream; POST: publish). Every response carries the worker's pid as
``X-Pid``. With ``record_requests=True`` the app records every request but the bookkeeping ones
(path, query, time, method, the headers a client must send), which ``/requests`` and
``/seen-ids`` return, so a test can count reconnections on the server side.
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional

import greenlet  # type: ignore[import-untyped]  # greenlet ships no type information
from flask import Flask, Response, jsonify, request
from flask_login import LoginManager, UserMixin, login_user

from flask_sse_ext import SSE, BrokerError, Event, Identity

__all__ = ["create_app", "served", "served_behind_middleware", "authorize", "PAGE"]

#: The page the browser tests load: it imports the client from the extension's static route.
PAGE = """<!doctype html><meta charset="utf-8"><title>sse-client.js</title>
<script type="module">
  import {connect, createParser} from "/stream/static/sse-client.js";
  window.connect = connect;
  window.createParser = createParser;
  window.ready = true;
</script>"""

#: Requests that are the test's own bookkeeping, never recorded.
_BOOKKEEPING = ("/requests", "/seen-ids", "/stats")


def authorize(identity: Optional[Identity], channel: str) -> bool:
    """The served app's rule: channels named admin* are for the identity "root" only, and the
    channel "secret" for "alice" only; every other channel is open."""
    name = identity.id if identity is not None else None
    if channel.startswith("admin"):
        return name == "root"
    if channel == "secret":
        return name == "alice"
    return True


def _header_text(value: Optional[str]) -> Optional[str]:
    """A header as the client meant it: clients send UTF-8, WSGI hands it over as Latin-1."""
    try:
        return None if value is None else value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def create_app(
    config: Optional[Mapping[str, Any]] = None,
    *,
    sse: Optional[SSE] = None,
    views: bool = False,
    record_requests: bool = False,
) -> Flask:
    """A Flask app for a test.

    ``config`` goes over the defaults (``TESTING``, a ``SECRET_KEY``) before ``sse``, if given,
    is registered with ``init_app``. ``views`` adds the test views (``sse`` defaults to an
    ``SSE`` with ``authorize`` then); ``record_requests`` also records what they receive.
    """
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="test-secret")
    app.config.update(config or {})
    if views and sse is None:
        sse = SSE(authorize=authorize)
    if sse is not None:
        sse.init_app(app)
    if views:
        assert sse is not None
        _add_views(app, sse, record_requests)
    return app


def served(record_requests: bool = False) -> Flask:
    """The app gunicorn serves (``support.app:served()``): the test views, configured from the
    ``SSE_TEST_CONFIG`` environment variable (JSON)."""
    config = {"TESTING": False, **json.loads(os.environ.get("SSE_TEST_CONFIG", "{}"))}
    return create_app(config, views=True, record_requests=record_requests)


def served_behind_middleware() -> Flask:
    """``served()`` behind a WSGI middleware that wraps every response body in a generator of
    its own, as error trackers and body-rewriting middleware do."""
    app = served()
    inner = app.wsgi_app

    def wrapped(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
        yield from inner(environ, start_response)

    app.wsgi_app = wrapped  # type: ignore[method-assign]
    return app


class _User(UserMixin):  # type: ignore[misc]  # Flask-Login ships no type information
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def _add_views(app: Flask, sse: SSE, record_requests: bool) -> None:
    login_manager = LoginManager(app)
    login_manager.user_loader(_User)

    @app.post("/login")
    def login() -> Any:
        login_user(_User(request.args["user"]))
        return "logged in"

    #: When each /probe generator's ``finally`` ran (epoch seconds), by name.
    finally_at: Dict[str, float] = {}
    #: How many requests each /flaky stream got.
    flaky_calls: Dict[str, int] = {}

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

    @app.get("/token")
    def token() -> Any:
        return sse.issue_token(
            request.args["identity"],
            channels=request.args.getlist("channel") or None,
            expires_in=float(request.args.get("expires", 3600)),
        )

    @app.post("/chat")
    def chat() -> Any:
        prompt = request.get_json()["prompt"]

        def reply() -> Iterator[Event]:
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
                finally_at[name] = time.time()

        return sse.response(forever(), heartbeat=5)

    @app.get("/flood/<name>")
    def flood(name: str) -> Any:
        """16 KB events as fast as the client takes them (``?size=`` bytes instead)."""
        data = "x" * int(request.args.get("size", 16 * 1024))

        def events() -> Iterator[str]:
            try:
                while True:
                    yield data
            finally:
                finally_at[name] = time.time()

        return sse.response(events())

    @app.get("/finally/<name>")
    def probe_finally(name: str) -> Any:
        return jsonify(at=finally_at.get(name))

    @app.get("/fail")
    def fail() -> Any:
        def items() -> Iterator[str]:
            yield "ok"
            raise RuntimeError("upstream exploded with a secret")

        return sse.response(items(), expose_errors=request.args.get("expose") == "1")

    @app.after_request
    def pid_header(response: Response) -> Response:
        response.headers["X-Pid"] = str(os.getpid())
        return response

    @app.route("/answer/<name>", methods=["GET", "POST"])
    def answer(name: str) -> Any:
        """A resumable answer of ``count`` tokens ``{"n", "pid"}``, one every ``pace`` s (raising
        instead of token ``fail``; with ``pad`` characters more in ``"pad"``). With
        ``TEST_JOURNAL`` (a directory) set, its generator notes ``start <pid>`` and
        ``stop <epoch>`` in the file ``name`` there."""
        count = int(request.args.get("count", "40"))
        pace = float(request.args.get("pace", "0.1"))
        fail = int(request.args.get("fail", "0"))
        pad = {"pad": "x" * int(request.args["pad"])} if "pad" in request.args else {}
        folder = app.config.get("TEST_JOURNAL")
        journal = None if folder is None else os.path.join(folder, name)

        def note(line: str) -> None:
            if journal is not None:
                with open(journal, "a") as out:
                    out.write(line + "\n")

        def tokens() -> Iterator[Event]:
            note(f"start {os.getpid()}")
            try:
                for n in range(1, count + 1):
                    time.sleep(pace)
                    if n == fail:
                        raise RuntimeError("the model failed")
                    yield Event({"n": n, "pid": os.getpid(), **pad}, event="token")
            finally:
                note(f"stop {time.time()}")

        return sse.response(tokens(), resumable=True, heartbeat=float(request.args.get("heartbeat", "1")))

    @app.post("/cancel/<stream_id>")
    def cancel(stream_id: str) -> Any:
        return jsonify(cancelled=sse.cancel(stream_id), at=time.time())

    @app.get("/job/<job_id>")
    def job_stream(job_id: str) -> Any:
        return sse.job_response(job_id)

    @app.post("/job/<job_id>")
    def job_publish(job_id: str) -> Any:
        """``{"data", "event"}`` to publish to the job, ``{"end": true}`` to end it."""
        fields = request.get_json()
        job = sse.job(job_id)
        if fields.get("end"):
            return jsonify(id=job.end())
        return jsonify(id=job.publish(fields["data"], event=fields.get("event")))

    @app.post("/resync/<channel>")
    def resync(channel: str) -> Any:
        """End this worker's streams of ``channel``, as when the broker loses track of it: each
        client reconnects with its ``Last-Event-ID``."""
        sse.state().serve().resync(channel)
        return jsonify(ended=channel)

    @app.get("/")
    def index() -> Any:
        return Response(PAGE, mimetype="text/html")

    @app.get("/flaky/<name>")
    def flaky(name: str) -> Any:
        """The first request opens a stream that sends ``retry:`` and ends; later ones get 503."""
        flaky_calls[name] = flaky_calls.get(name, 0) + 1
        if flaky_calls[name] == 1:
            retry = int(request.args.get("retry", "300"))
            return Response(f"retry: {retry}\n\n", mimetype="text/event-stream")
        return Response("down for a while\n", 503, mimetype="text/plain")

    @app.get("/gone")
    def gone() -> Any:
        return Response(status=204)

    @app.get("/forbidden")
    def forbidden() -> Any:
        return Response("no\n", 403, mimetype="text/plain")

    if not record_requests:
        return
    recorded: List[Dict[str, Any]] = []

    @app.before_request
    def record() -> None:
        if request.path not in _BOOKKEEPING:
            recorded.append(
                {
                    "path": request.path,
                    "method": request.method,
                    "last_event_id": _header_text(request.headers.get("Last-Event-ID")),
                    "accept": request.headers.get("Accept"),
                    "cache_control": request.headers.get("Cache-Control"),
                    "accept_encoding": request.headers.get("Accept-Encoding"),
                    "query": request.query_string.decode("latin-1"),
                    "at": time.time(),
                }
            )

    @app.get("/requests")
    def requests() -> Any:
        path = request.args.get("path")
        return jsonify([r for r in recorded if path is None or r["path"] == path])

    @app.get("/seen-ids")
    def seen_ids() -> Any:
        """The ``Last-Event-ID`` of every /stream request this process got (None: absent)."""
        return jsonify([r["last_event_id"] for r in recorded if r["path"] == "/stream"])
