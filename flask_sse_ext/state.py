"""Per-app state: validated settings, the app's hooks, and this process's broker and hub.

``app.extensions["sse"]`` holds an ``AppState``; ``get_state()`` finds it with a clear error
when the app has no extension. The broker, hub, limiter and counters belong to one process: a
forked worker gets its own (``AppState.process``), so it never shares its parent's
connections. Nothing here imports the view, the CLI or the extension class, so every module
can import this one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from typing import Any, Dict, Optional

from flask import Flask, current_app

from .auth import Authorize, TokenLoader
from .brokers import open_broker
from .brokers.base import Broker
from .client import Stats
from .config import Settings, validate_channel
from .hub import Hub
from .limits import Limiter
from .publisher import prepare_event
from .serving import process_name
from .signals import event_published

__all__ = ["AppState", "Hooks", "ProcessState", "get_state", "serve_all", "SHARE_INTERVAL"]

logger = logging.getLogger(__name__)

#: Seconds between two shares of a process's counters (on Redis, or with ``SSE_METRICS_PATH``).
SHARE_INTERVAL = 5.0

#: Every app state of this process, for ``serve_all``.
_states: "weakref.WeakSet[AppState]" = weakref.WeakSet()


class Hooks:
    """The app's hooks, set by the ``SSE`` decorators (before or after ``init_app``)."""

    __slots__ = ("authorize", "token_loader")

    def __init__(self, authorize: Optional[Authorize], token_loader: Optional[TokenLoader]) -> None:
        self.authorize = authorize
        self.token_loader = token_loader


class ProcessState:
    """What one app holds in one process: its broker, counters, and, once the process serves
    streams, its hub and connection limiter."""

    def __init__(self, settings: Settings) -> None:
        self.pid = os.getpid()
        self.settings = settings
        self.broker = _new_broker(settings)
        self.stats = Stats()
        self.hub: Optional[Hub] = None
        self._limiter: Optional[Limiter] = None
        self._lock = threading.Lock()

    @property
    def limiter(self) -> Limiter:
        if self._limiter is None:
            self._limiter = self.broker.limiter()
        return self._limiter

    def serve(self) -> Hub:
        """The hub, started on first use: the broker's listener, and counters shared every
        ``SHARE_INTERVAL`` seconds with a shared broker or when metrics are on."""
        hub = self.hub
        if hub is None:
            with self._lock:
                hub = self.hub
                if hub is None:
                    settings = self.settings
                    hub = self.hub = Hub(
                        self.broker, self.stats, settings.heartbeat_interval, settings.send_timeout
                    )
                    # With Redis, always: `flask sse stats` reads every server's counters.
                    if self.settings.metrics_path is not None or self.broker.shared:
                        _start_sharing(self)
        return hub

    def counters(self) -> Dict[str, int]:
        """This process's counters (``SSE.stats()``)."""
        hub, stats, broker = self.hub, self.stats, self.broker
        return {
            "streams": hub.client_count if hub is not None else 0,
            "channels": hub.channel_count if hub is not None else 0,
            "subscriptions": broker.subscriptions,
            "published": stats.published,
            "delivered": stats.delivered,
            "pushed": stats.pushed,
            "replayed": stats.replayed,
            "lagged": stats.lagged,
            "timed_out": stats.timed_out,
            "broker_reconnects": broker.reconnects,
        }


class AppState:
    """The extension's state for one app, in ``app.extensions["sse"]``.

    ``extension`` is the ``SSE`` object that registered it; ``settings`` and ``hooks`` are
    shared by every process; ``broker``, ``stats``, ``limiter`` and ``hub`` are this process's.
    """

    def __init__(self, extension: object, settings: Settings, hooks: Hooks) -> None:
        self.extension = extension
        self.settings = settings
        self.hooks = hooks
        self._lock = threading.Lock()
        self._process: Optional[ProcessState] = None
        _states.add(self)

    def process(self) -> ProcessState:
        """This process's part, made anew in a forked child (a gunicorn worker must not share
        its parent's connections, history or counters)."""
        process = self._process
        if process is None or process.pid != os.getpid():
            with self._lock:
                process = self._process
                if process is None or process.pid != os.getpid():
                    process = self._process = ProcessState(self.settings)
        return process

    @property
    def broker(self) -> Broker:
        return self.process().broker

    @property
    def stats(self) -> Stats:
        return self.process().stats

    @property
    def limiter(self) -> Limiter:
        return self.process().limiter

    @property
    def hub(self) -> Optional[Hub]:
        """This process's hub, or ``None`` until it serves a stream (``serve``)."""
        process = self._process
        return process.hub if process is not None and process.pid == os.getpid() else None

    def serve(self) -> Hub:
        """Start serving streams in this process (idempotent) and return the hub."""
        return self.process().serve()

    def counters(self) -> Dict[str, int]:
        return self.process().counters()

    def presence(self, channel: str) -> int:
        """Open streams on ``channel`` over every process and host that shares the broker
        (reported every few seconds), or in this process with the in-process broker."""
        validate_channel(channel)
        process = self.process()
        total = process.broker.presence(channel)
        if total is not None:
            return total
        return process.hub.channel_streams(channel) if process.hub is not None else 0

    def publish(
        self,
        data: Any,
        event: Optional[str],
        id: Optional[str],
        retry: Optional[int],
        channel: str,
        type: Optional[str] = None,
        conflate: Optional[str] = None,
    ) -> str:
        """Validate, encode and publish one event; see ``SSE.publish``."""
        body = prepare_event(data, event, id, retry, channel, type, self.settings.max_event_bytes, conflate)
        process = self.process()
        event_id = process.broker.publish(channel, body, id, conflate).id
        process.stats.published += 1
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        event_published.send(app, channel=channel, id=event_id)
        return event_id


def get_state(app: Optional[Flask] = None) -> AppState:
    """The ``AppState`` of ``app`` (default: the current app).

    Raises ``RuntimeError`` when the app has no ``SSE`` extension.
    """
    state = (current_app if app is None else app).extensions.get("sse")
    if not isinstance(state, AppState):
        raise RuntimeError(
            "The current Flask app is not registered with an 'SSE' instance. "
            "Did you forget to call 'init_app'?"
        )
    return state


def serve_all() -> None:
    """Start serving in this process for every app with the extension (a gunicorn worker
    calls it once it has loaded the app, so its counters are shared from the start)."""
    for state in list(_states):
        state.serve()


def _new_broker(settings: Settings) -> Broker:
    return open_broker(
        settings.redis_url,
        cluster=settings.redis_cluster,
        prefix=settings.redis_prefix,
        history_size=settings.history_size,
        history_ttl=settings.history_ttl,
        min_replicas=settings.redis_min_replicas,
        replica_timeout=settings.redis_replica_timeout,
    )


def _start_sharing(process: ProcessState) -> None:
    """Share ``process``'s counters every ``SHARE_INTERVAL`` seconds, from a daemon thread."""

    def loop() -> None:
        while True:
            try:
                snapshot = json.dumps({"at": time.time(), **process.counters()})
                process.broker.share_stats(process_name(), snapshot)
            except Exception as exc:  # Redis may be down: the next share will do
                logger.debug("Could not share counters: %r", exc)
            time.sleep(SHARE_INTERVAL)

    threading.Thread(target=loop, name="sse-metrics-share", daemon=True).start()
