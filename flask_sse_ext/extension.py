"""The Flask extension: ``SSE(app)``, its blueprint, and ``publish()``."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Dict, Optional, Tuple

from flask import Blueprint, Flask, Response, abort, current_app, request

from .brokers.base import Broker, BrokerError
from .brokers.memory import MemoryBroker
from .config import Settings, load_settings, validate_channel
from .publisher import prepare_event
from .hub import Hub
from .serving import check_server, warn_memory_broker
from .event import comment, retry_line
from .stream import HEADERS, open_stream

__all__ = ["SSE"]

logger = logging.getLogger(__name__)

class _State:
    """Per-app state, kept in ``app.extensions["sse"]``. Broker and hub are per process."""

    def __init__(self, sse: SSE, settings: Settings) -> None:
        self.sse = sse
        self.settings = settings
        self._lock = threading.Lock()
        self._pid = -1
        self._broker: Optional[Broker] = None
        self._hub: Optional[Hub] = None

    def _new_broker(self) -> Broker:
        settings = self.settings
        if settings.redis_url is None:
            return MemoryBroker(settings.history_size)
        from .brokers.redis import RedisBroker

        return RedisBroker.from_url(
            settings.redis_url, cluster=settings.redis_cluster, prefix=settings.redis_prefix,
            history_size=settings.history_size, history_ttl=settings.history_ttl,
        )  # fmt: skip

    @property
    def broker(self) -> Broker:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # A forked worker must not share its parent's connections or history.
                    self._broker = self._new_broker()
                    self._hub = None
                    self._pid = os.getpid()
        assert self._broker is not None
        return self._broker

    @property
    def hub(self) -> Hub:
        broker = self.broker
        if self._hub is None:
            with self._lock:
                if self._hub is None:
                    self._hub = Hub(broker)
        return self._hub


class SSE:
    """Server-Sent Events for a Flask app.

    ``SSE(app)`` or ``sse = SSE()`` then ``sse.init_app(app)``. ``options`` give defaults for
    the ``SSE_*`` config keys, by lower-case name without the prefix (``heartbeat_interval=5``);
    the app's config wins over them.
    """

    def __init__(self, app: Optional[Flask] = None, **options: Any) -> None:
        load_settings({}, options)  # an unknown or bad option fails here, not at init_app
        self._options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read and validate the config, and register the ``sse`` blueprint.

        Raises ``RuntimeError`` if the app already has an ``SSE`` extension, and
        ``ValueError`` for a bad ``SSE_*`` value.
        """
        if "sse" in app.extensions:
            raise RuntimeError(
                "This app is already registered with an 'SSE' instance. Call 'init_app' once "
                "per app, and use that instance (it is app.extensions['sse'].sse)."
            )
        settings = load_settings(app.config, self._options)
        app.extensions["sse"] = _State(self, settings)
        app.register_blueprint(_blueprint(), url_prefix=settings.url_prefix)

    def _state(self) -> _State:
        state = current_app.extensions.get("sse")
        if state is None or state.sse is not self:
            raise RuntimeError(
                "The current Flask app is not registered with this 'SSE' instance. "
                "Did you forget to call 'init_app'?"
            )
        return state  # type: ignore[no-any-return]

    def publish(
        self,
        data: Any,
        event: Optional[str] = None,
        id: Optional[str] = None,
        retry: Optional[int] = None,
        channel: str = "sse",
        *,
        type: Optional[str] = None,
    ) -> str:
        """Send an event to every stream on ``channel`` and keep it in the channel's history.

        ``data`` is a ``str`` or any JSON-serializable value. ``type`` is an alias of
        ``event`` (as in flask-sse). Returns the event id: ``id`` when given, else one the
        broker generates. Raises ``ValueError`` for a field that cannot be sent, and
        ``BrokerError`` when the broker cannot take the event. Needs an app context.
        """
        state = self._state()
        body = prepare_event(data, event, id, retry, channel, type, state.settings.max_event_bytes)
        return state.broker.publish(channel, body, id).id


    def stats(self) -> Dict[str, int]:
        """Counters of this process: open ``streams``, ``channels`` with local streams, and the
        broker's live ``subscriptions``. Needs an app context."""
        state = self._state()
        hub = state.hub
        return {
            "streams": hub.client_count,
            "channels": hub.channel_count,
            "subscriptions": state.broker.subscriptions,
        }


def _channels() -> Tuple[str, ...]:
    state: _State = current_app.extensions["sse"]
    names = request.args.getlist("channel") or ["sse"]
    if len(names) > state.settings.max_channels_per_connection:
        abort(400, f"At most {state.settings.max_channels_per_connection} channels per stream")
    for name in names:
        try:
            validate_channel(name)
        except ValueError as exc:
            abort(400, str(exc))
    return tuple(sorted(set(names)))


def _stream_view() -> Response:
    state: _State = current_app.extensions["sse"]
    settings = state.settings
    channels = _channels()
    cursor = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or None
    if cursor is not None and (len(cursor) > 1024 or not cursor.isprintable()):
        cursor = "~"  # not an id anyone issued: reported to the client as missed history
    environ = request.environ
    check_server(environ)
    if isinstance(state.broker, MemoryBroker):
        warn_memory_broker(environ)
    try:
        return open_stream(
            state.hub,
            state.broker,
            channels,
            cursor,
            retry=settings.retry,
            heartbeat=settings.heartbeat_interval,
            max_age=settings.max_connection_age,
            queue_size=settings.client_queue_size,
            environ=environ,
        )
    except BrokerError as exc:
        # A non-200 answer would make EventSource give up for good: answer with the retry
        # hint and end, so the browser tries again once the broker is back.
        logger.warning("Stream ended at once, the broker is unavailable: %s", exc)
        return Response(
            [retry_line(settings.retry), comment("broker unavailable, retry later")],
            mimetype="text/event-stream",
            headers=HEADERS,
        )


def _blueprint() -> Blueprint:
    blueprint = Blueprint("sse", __name__)
    blueprint.add_url_rule("", "stream", _stream_view, methods=["GET"])
    return blueprint
