"""The Flask extension: ``SSE(app)``, its blueprint, and ``publish()``."""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from functools import partial
from typing import Any, Collection, Dict, Iterable, Mapping, Optional, Union

from flask import Blueprint, Flask, Response, current_app, request

from .auth import Authorize, TokenLoader, issue_token
from .brokers.base import Broker
from .brokers.memory import MemoryBroker
from .config import Settings, load_settings
from .cli import cli
from .direct import direct_response
from .endpoint import stream_view
from .hub import Hub, Stats
from .limits import Limiter
from .publisher import prepare_event
from .signals import event_published
from .stream import HEADERS

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
        self._limiter: Optional[Limiter] = None
        self._stats = Stats()

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
        return self._for_this_process()

    def _for_this_process(self) -> Broker:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # A forked worker must not share its parent's connections or history.
                    self._broker = self._new_broker()
                    self._hub = None
                    self._limiter = None
                    self._stats = Stats()
                    self._pid = os.getpid()
        assert self._broker is not None
        return self._broker

    @property
    def stats(self) -> Stats:
        self._for_this_process()  # a forked process starts with counters of its own
        return self._stats

    @property
    def limiter(self) -> Limiter:
        broker = self.broker
        if self._limiter is None:
            self._limiter = broker.limiter()
        return self._limiter

    @property
    def hub(self) -> Hub:
        broker = self.broker
        if self._hub is None:
            with self._lock:
                if self._hub is None:
                    self._hub = Hub(broker, self._stats, self.settings.heartbeat_interval)
                    if self.settings.metrics_path is not None:
                        from .metrics import start_sharing

                        app = current_app._get_current_object()  # type: ignore[attr-defined]
                        start_sharing(partial(_stats_of, app, self.sse), broker.share_stats)
        return self._hub


class SSE:
    """Server-Sent Events for a Flask app.

    ``SSE(app)`` or ``sse = SSE()`` then ``sse.init_app(app)``. ``options`` give defaults for
    the ``SSE_*`` config keys, by lower-case name without the prefix (``heartbeat_interval=5``);
    the app's config wins over them.
    """

    def __init__(
        self,
        app: Optional[Flask] = None,
        *,
        authorize: Optional[Authorize] = None,
        token_loader: Optional[TokenLoader] = None,
        **options: Any,
    ) -> None:
        load_settings({}, options)  # an unknown or bad option fails here, not at init_app
        self._options = options
        self._authorize = authorize
        self._token_loader = token_loader
        if app is not None:
            self.init_app(app)

    def authorize(self, hook: Authorize) -> Authorize:
        """Decorator: ``hook(identity, channel) -> bool`` decides who reads which channel.

        ``identity`` is an ``Identity`` or ``None`` for an anonymous request. It is asked for
        every channel before a stream opens, and again before history is replayed.
        """
        self._authorize = hook
        return hook

    def token_loader(self, loader: TokenLoader) -> TokenLoader:
        """Decorator: ``loader(token) -> Identity`` verifies the app's own tokens (a JWT, say)
        instead of ``issue_token``'s; it raises ``AuthError`` for a bad one."""
        self._token_loader = loader
        return loader

    def issue_token(
        self,
        identity: str,
        channels: Optional[Collection[str]] = None,
        expires_in: Union[int, float, timedelta] = 3600,
    ) -> str:
        """A signed token (with the app's ``SECRET_KEY``) for ``identity``, valid for
        ``expires_in`` seconds and, with ``channels``, only for those channels. A stream opened
        with it ends when it expires. Needs an app context."""
        self._state()
        return issue_token(current_app, identity, channels, expires_in)

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
        if settings.metrics_path is not None:
            from .metrics import metrics_view

            app.add_url_rule(settings.metrics_path, "sse_metrics", metrics_view)

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
        event_id = state.broker.publish(channel, body, id).id
        state.stats.published += 1
        event_published.send(current_app._get_current_object(), channel=channel, id=event_id)  # type: ignore[attr-defined]
        return event_id


    def response(
        self,
        iterable: Iterable[Any],
        *,
        heartbeat: Optional[float] = None,
        retry: Optional[int] = None,
        headers: Optional[Mapping[str, str]] = None,
        expose_errors: bool = False,
    ) -> Response:
        """A streaming response of this request's own events, from any view and any method.

        Each item of ``iterable`` is an ``Event``, a ``str`` (sent as data) or any other
        JSON-serializable value. The headers and ``retry:`` go out at once; a heartbeat every
        ``heartbeat`` seconds (default ``SSE_HEARTBEAT_INTERVAL``) while the generator waits;
        ``event: sse.end`` when it is done. If it raises, the client gets ``event: sse.error``
        with ``{"error": "internal error"}`` (the exception text with ``expose_errors``). When
        the client leaves, the generator is stopped and its ``finally`` runs.
        """
        settings = self._state().settings
        return direct_response(
            iterable,
            heartbeat=settings.heartbeat_interval if heartbeat is None else heartbeat,
            retry=settings.retry if retry is None else retry,
            headers=headers,
            expose_errors=expose_errors,
            queue_size=settings.client_queue_size,
            environ=request.environ,
            base_headers=HEADERS,
        )

    def stats(self) -> Dict[str, int]:
        """Counters of this process: open ``streams``; ``channels`` with local streams and the
        broker's live ``subscriptions``; events ``published``, ``delivered`` live and
        ``replayed`` from history; streams cut as ``lagged``; ``broker_reconnects`` to Redis.
        Needs an app context."""
        state = self._state()
        counters = state.stats
        hub = state._hub if state._pid == os.getpid() else None
        return {
            "streams": hub.client_count if hub is not None else 0,
            "channels": hub.channel_count if hub is not None else 0,
            "subscriptions": state.broker.subscriptions,
            "published": counters.published,
            "delivered": counters.delivered,
            "replayed": counters.replayed,
            "lagged": counters.lagged,
            "broker_reconnects": state.broker.reconnects,
        }


def _stats_of(app: Flask, sse: SSE) -> Dict[str, int]:
    with app.app_context():
        return sse.stats()


def _blueprint() -> Blueprint:
    # The JS client is served at <SSE_URL_PREFIX>/static/sse-client.js (url_for("sse.static", ...)).
    blueprint = Blueprint("sse", __name__, static_folder="static", cli_group=None)
    blueprint.cli.add_command(cli)
    blueprint.add_url_rule("", "stream", stream_view, methods=["GET", "OPTIONS"])
    return blueprint
