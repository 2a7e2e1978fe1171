"""The extension's API: init, config, publish, factories, several apps."""

from __future__ import annotations

import gc
import threading
from typing import Any, Dict, List, Optional

import pytest
from flask import Flask, Response, url_for
from werkzeug.test import TestResponse

from flask_sse_ext import SSE, Event
from flask_sse_ext.brokers.base import Message
from flask_sse_ext.state import AppState, get_state
from support.app import create_app
from support.waiting import wait_until


def mark(app: Flask, channel: str) -> str:
    """Publish a marker straight to the app's broker (no signal, no counter): ``history`` after
    it is what the test publishes from then on."""
    return get_state(app).broker.publish(channel, b"data: marker\n").id


def history(app: Flask, channel: str, marker: str) -> List[Message]:
    """Every message the app's broker keeps for ``channel`` after ``marker``."""
    replay = get_state(app).broker.replay(channel, marker)
    assert not replay.missed, "the marker is no longer in the history"
    return replay.messages


def test_state_lives_in_app_extensions(app: Flask, sse: SSE) -> None:
    state = get_state(app)
    assert isinstance(state, AppState) and app.extensions["sse"] is state
    assert state.extension is sse
    assert not hasattr(sse, "app")
    with app.app_context():
        assert get_state() is state


def test_get_state_of_an_app_without_the_extension_says_what_to_do(app: Flask) -> None:
    with pytest.raises(RuntimeError, match="Did you forget to call 'init_app'"):
        get_state(app)


def test_url_for_stream(app: Flask, sse: SSE) -> None:
    with app.test_request_context():
        assert url_for("sse.stream", channel="news") == "/stream?channel=news"


def test_url_prefix_from_config(app: Flask) -> None:
    app.config["SSE_URL_PREFIX"] = "/events/"
    SSE(app)
    with app.test_request_context():
        assert url_for("sse.stream") == "/events"


def test_factory_and_two_apps_in_one_process() -> None:
    sse = SSE()
    apps = [create_app({"SSE_URL_PREFIX": prefix}, sse=sse) for prefix in ("/a", "/b")]
    markers = [mark(app, "c") for app in apps]
    with apps[0].app_context():
        sse.publish("only in a", channel="c")
    for app, marker, expected in zip(apps, markers, [1, 0]):
        with app.app_context():
            assert len(history(app, "c", marker)) == expected
    client = apps[1].test_client()
    assert client.get("/b?channel=c", buffered=False).status_code == 200
    assert client.get("/a?channel=c").status_code == 404


def test_registering_twice_is_a_clear_error(app: Flask, sse: SSE) -> None:
    with pytest.raises(RuntimeError, match="already registered"):
        sse.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        SSE(app)


def test_publish_on_unregistered_app_says_what_to_do(app: Flask) -> None:
    sse = SSE()
    with app.app_context(), pytest.raises(RuntimeError, match="Did you forget to call 'init_app'"):
        sse.publish("x")


@pytest.mark.parametrize(
    "key,value",
    [
        ("SSE_RETRY", -1),
        ("SSE_RETRY", "3000"),
        ("SSE_HEARTBEAT_INTERVAL", 0),
        ("SSE_HEARTBEAT_INTERVAL", True),
        ("SSE_HISTORY_SIZE", 1.5),
        ("SSE_CLIENT_QUEUE_SIZE", 0),
        ("SSE_MAX_EVENT_BYTES", None),
        ("SSE_URL_PREFIX", "stream"),
        ("SSE_REDIS_URL", "http://localhost"),
        ("SSE_MAX_CONNECTION_AGE", -5),
    ],
)
def test_bad_config_value_names_the_key(app: Flask, key: str, value: object) -> None:
    app.config[key] = value
    with pytest.raises(ValueError, match=key):
        SSE(app)


def test_constructor_options_are_defaults_under_config() -> None:
    app = create_app({"SSE_RETRY": 500})
    SSE(app, retry=100, heartbeat_interval=2)
    settings = get_state(app).settings
    assert (settings.retry, settings.heartbeat_interval) == (500, 2.0)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="heartbeat"):
        SSE(heartbeat=5)


def test_publish_returns_id_and_type_alias(app: Flask, sse: SSE) -> None:
    marker = mark(app, "news")
    with app.app_context():
        generated = sse.publish({"a": 1}, type="update", channel="news")
        given = sse.publish("hi", event="greeting", id="g-1", retry=10, channel="news")
        messages = history(app, "news", marker)
    assert given == "g-1"
    assert [m.id for m in messages] == [generated, "g-1"]
    assert messages[0].frame == b'event: update\ndata: {"a":1}\nid: ' + generated.encode() + b"\n\n"
    assert messages[1].frame == Event("hi", event="greeting", id="g-1", retry=10).encode()


def test_generated_ids_increase(app: Flask, sse: SSE) -> None:
    with app.app_context():
        ids = [sse.publish(i) for i in range(50)]
    positions = [tuple(map(int, i.split("-"))) for i in ids]
    assert positions == sorted(positions) and len(set(positions)) == 50


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"event": "a", "type": "b"}, "not both"),
        ({"channel": "bad channel"}, "Invalid SSE channel name"),
        ({"channel": ""}, "Invalid SSE channel name"),
        ({"id": ""}, "'id' must be 1 to 256"),
        ({"id": "x" * 257}, "'id' must be 1 to 256"),
        ({"id": "a\nb"}, "'id' must not contain CR, LF or NUL"),
        ({"event": "a\rb"}, "'event' must not contain CR, LF or NUL"),
        ({"retry": -1}, "'retry' must be a non-negative int"),
        ({"data": b"raw"}, "not bytes"),
        ({"data": "x" * 2000}, r"over the limit of 1000 \(SSE_MAX_EVENT_BYTES\)"),
    ],
)
def test_publish_bad_input_is_value_error(app: Flask, kwargs: Dict[str, Any], match: str) -> None:
    app.config["SSE_MAX_EVENT_BYTES"] = 1000
    sse = SSE(app)
    kwargs.setdefault("data", "x")
    marker = mark(app, "sse")
    with app.app_context():
        with pytest.raises(ValueError, match=match):
            sse.publish(**kwargs)
        # Nothing was stored.
        assert history(app, "sse", marker) == []


def test_publish_from_cli_command_and_background_thread(app: Flask, sse: SSE) -> None:
    marker = mark(app, "ops")

    @app.cli.command("announce")
    def announce() -> None:
        print(sse.publish("from cli", channel="ops"))

    result = app.test_cli_runner().invoke(args=["announce"])
    assert result.exit_code == 0, result.output

    def job() -> None:
        with app.app_context():
            sse.publish("from job", channel="ops")

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    with app.app_context():
        messages = history(app, "ops", marker)
    assert [m.id for m in messages][0] == result.output.strip()
    assert [m.body for m in messages] == [b"data: from cli\n", b"data: from job\n"]


ZERO = {
    "streams": 0,
    "channels": 0,
    "subscriptions": 0,
    "published": 0,
    "delivered": 0,
    "pushed": 0,
    "replayed": 0,
    "lagged": 0,
    "broker_reconnects": 0,
    "timed_out": 0,
}


def test_stats_and_signals(app: Flask, sse: SSE) -> None:
    from flask_sse_ext.signals import event_published, stream_closed, stream_opened

    seen = []
    for signal in (stream_opened, stream_closed, event_published):
        signal.connect(lambda sender, name=signal.name, **kw: seen.append((name, sender, kw)), weak=False)
    client = app.test_client()
    with app.app_context():
        assert sse.stats() == ZERO
        first = sse.publish("before", channel="a")
    response = client.get("/stream?channel=a&channel=b", headers={"Last-Event-ID": "~0.0"}, buffered=False)
    with app.app_context():
        assert sse.stats() == {**ZERO, "streams": 1, "channels": 2, "subscriptions": 2, "published": 1}
    response.close()
    with app.app_context():
        assert sse.stats() == {**ZERO, "published": 1}
    assert [(name, sender) for name, sender, _ in seen] == [
        ("sse-event-published", app),
        ("sse-stream-opened", app),
        ("sse-stream-closed", app),
    ]
    assert seen[0][2] == {"channel": "a", "id": first}
    assert seen[1][2] == {"channels": ("a", "b"), "identity": None}
    assert seen[2][2] == {"channels": ("a", "b"), "identity": None, "reason": None}
    for signal in (stream_opened, stream_closed, event_published):
        signal.receivers.clear()


def test_delivered_replayed_and_lagged_counters(app: Flask) -> None:
    app.config["SSE_CLIENT_QUEUE_SIZE"] = 2
    sse = SSE(app)
    with app.app_context():
        first = sse.publish("one", channel="c")
        sse.publish("two", channel="c")
    replaying = app.test_client().get("/stream?channel=c", headers={"Last-Event-ID": first}, buffered=False)
    live = app.test_client().get("/stream?channel=c", buffered=False)
    chunks = iter(live.response)
    next(chunks)
    with app.app_context():
        sse.publish("three", channel="c")
    next(chunks)
    with app.app_context():
        for i in range(2):  # the replaying client reads nothing: its queue of 2 overflows
            sse.publish(str(i), channel="c")
        wait_until(lambda: sse.stats()["lagged"], message="the dispatcher did not cut the client")
        stats = sse.stats()
    assert (stats["replayed"], stats["delivered"], stats["lagged"]) == (1, 1, 1)
    replaying.close()
    live.close()


def test_stream_works_in_flask_test_client_threaded_mode(app: Flask, sse: SSE) -> None:
    """Under `flask run` (threads, no gevent) a publish wakes a waiting stream."""
    app.config["SSE_HEARTBEAT_INTERVAL"] = 30
    response = app.test_client().get("/stream?channel=t", buffered=False)
    chunks = iter(response.response)
    assert next(chunks) == b"retry: 3000\n"
    got = []
    reader = threading.Thread(target=lambda: got.append(next(chunks)))
    reader.start()
    with app.app_context():
        event_id = sse.publish("wake", channel="t")
    reader.join(5)
    response.close()
    assert got == [b"data: wake\nid: " + event_id.encode() + b"\n\n"]


def test_dropped_response_releases_its_stream_and_slot(app: Flask) -> None:
    """Regression: an after_request hook that raised left a subscribed stream and a used
    connection slot behind for good."""
    app.config["SSE_MAX_CONNECTIONS_PER_CLIENT"] = 1
    sse = SSE(app)
    fail = [True]

    @app.after_request
    def explode(response: Response) -> Response:
        if fail[0]:
            raise RuntimeError("after_request failed")
        return response

    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.logger.disabled = True  # captured log records would keep the failed responses alive
    for _ in range(2):
        assert app.test_client().get("/stream?channel=c").status_code == 500
    fail[0] = False
    gc.collect()  # the failed responses sit in reference cycles with their tracebacks
    with app.app_context():
        wait_until(lambda: sse.stats()["streams"] == sse.stats()["subscriptions"] == 0, message=sse.stats)
        assert sse.stats()["streams"] == 0 and sse.stats()["subscriptions"] == 0

    def reopened() -> Optional[TestResponse]:
        response = app.test_client().get("/stream?channel=c", buffered=False)
        if response.status_code == 429:  # not yet: the hub's ticker releases dropped streams
            response.close()
            return None
        return response

    response = wait_until(reopened, message="the slot was not given back")
    assert response.status_code == 200
    response.close()


def test_publisher_ids_shaped_like_generated_ids_are_refused(app: Flask, sse: SSE) -> None:
    with app.app_context(), pytest.raises(ValueError, match="reserved"):
        sse.publish("x", id="1700000000000-0")


def test_shutdown_sends_what_is_queued_then_ends(app: Flask, sse: SSE) -> None:
    """Regression: a stream with events queued at shutdown waited for graceful_timeout."""
    response = app.test_client().get("/stream?channel=c", buffered=False)
    chunks = iter(response.response)
    next(chunks)
    with app.app_context():
        sse.publish("one", channel="c")
        sse.publish("two", channel="c")
    hub = get_state(app).hub
    assert hub is not None  # the stream started it
    hub.shutdown()
    rest = list(chunks)
    assert len(rest) == 1 and rest[0].count(b"data: ") == 2
    response.close()
