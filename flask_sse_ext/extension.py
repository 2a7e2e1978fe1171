"""The Flask extension: ``SSE(app)``, its blueprint, and ``publish()``."""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any, Collection, Dict, Iterable, Mapping, Optional, Union

from flask import Blueprint, Flask, Response, current_app, request

from .auth import AuthError, Authorize, TokenLoader, identify, issue_token
from .brokers import require_extra
from .cli import cli
from .config import load_settings
from .direct import direct_response
from .endpoint import stream_view
from .jobs import Job
from .resumable import answer_response, job_response, resume_view
from .state import AppState, Hooks, get_state
from .stream import HEADERS
from .tickets import issue_ticket as issue_ticket_for

__all__ = ["SSE"]


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
        #: The hooks every app of this extension uses (``authorize``, ``token_loader``).
        self.hooks = Hooks(authorize, token_loader)
        if app is not None:
            self.init_app(app)

    def authorize(self, hook: Authorize) -> Authorize:
        """Decorator: ``hook(identity, channel) -> bool`` decides who reads which channel.

        ``identity`` is an ``Identity`` or ``None`` for an anonymous request. It is asked for
        every channel before a stream opens, and again before history is replayed.
        """
        self.hooks.authorize = hook
        return hook

    def token_loader(self, loader: TokenLoader) -> TokenLoader:
        """Decorator: ``loader(token) -> Identity`` verifies the app's own tokens (a JWT, say)
        instead of ``issue_token``'s; it raises ``AuthError`` for a bad one."""
        self.hooks.token_loader = loader
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
        self.state()
        return issue_token(current_app, identity, channels, expires_in)

    def issue_ticket(
        self,
        identity: Optional[str] = None,
        channels: Collection[str] = ("sse",),
        expires_in: Optional[float] = None,
        claims: Optional[Mapping[str, Any]] = None,
    ) -> str:
        """A stream ticket: good for opening one stream on (some of) ``channels`` as
        ``identity``, once, within ``expires_in`` seconds (default ``SSE_TICKET_TTL``); the
        page opens ``<stream URL>?channel=...&ticket=<ticket>``. ``identity`` defaults to the
        current request's (Bearer token or Flask-Login session), and a stream opened with the
        ticket ends when that request's token expires. ``claims`` (by default the request's,
        from the token loader) reach the ``authorize`` hook at the stream, with
        ``"ticket": True``. Raises ``AuthError`` when there is no identity, ``ValueError``
        for bad ``channels`` (a ``str``, a bad name, another identity's private channel) or
        claims that are not plain JSON. Needs an app (and, without ``identity``, a request)
        context."""
        state = self.state()
        stream_expires_at = None
        if identity is None:
            current = identify(current_app, request, state.hooks.token_loader)
            if current is None:
                raise AuthError("no identity: pass one, or call this in a request with credentials")
            identity, stream_expires_at = current.id, current.expires_at
            claims = current.claims if claims is None else claims
        ttl = state.settings.ticket_ttl if expires_in is None else expires_in
        return issue_ticket_for(current_app, identity, channels, ttl, stream_expires_at, claims)

    def init_app(self, app: Flask) -> None:
        """Read and validate the config, and register the ``sse`` blueprint.

        Raises ``RuntimeError`` if the app already has an ``SSE`` extension or the config needs
        an optional extra that is not installed (the message has the ``pip install`` line), and
        ``ValueError`` for a bad ``SSE_*`` value. Warns (``UserWarning``) when flask-sse's
        ``REDIS_URL`` is set but ``SSE_REDIS_URL`` is not.
        """
        if "sse" in app.extensions:
            raise RuntimeError(
                "This app is already registered with an 'SSE' instance. Call 'init_app' once "
                "per app, and use that instance (it is app.extensions['sse'].extension)."
            )
        if (
            app.config.get("REDIS_URL")
            and "SSE_REDIS_URL" not in app.config
            and "redis_url" not in self._options
        ):
            # flask-sse read REDIS_URL; silently ignoring it would leave a migrated app on the
            # in-process broker, where other processes' events never arrive.
            warnings.warn(
                "REDIS_URL is set but SSE_REDIS_URL is not, so flask-sse-ext uses its in-process "
                "broker: events published by other processes (workers, Celery, the CLI) will not "
                "reach these streams. Set app.config['SSE_REDIS_URL'] = app.config['REDIS_URL'] "
                "to use that Redis, or SSE_REDIS_URL = None to keep the in-process broker.",
                UserWarning,
                stacklevel=2,
            )
        settings = load_settings(app.config, self._options)
        if settings.redis_url is not None:
            require_extra("redis", "hiredis", extra="redis", needed_by="SSE_REDIS_URL")
        if settings.metrics_path is not None:
            require_extra("prometheus_client", extra="prometheus", needed_by="SSE_METRICS_PATH")
        app.extensions["sse"] = AppState(self, settings, self.hooks)
        app.register_blueprint(_blueprint(), url_prefix=settings.url_prefix)
        if settings.metrics_path is not None:
            from .metrics import metrics_view

            app.add_url_rule(settings.metrics_path, "sse_metrics", metrics_view)
        if settings.ticket_endpoint:
            from .ticket_view import ticket_view

            rule = settings.url_prefix.rstrip("/") + "/ticket"
            app.add_url_rule(rule, "sse_ticket", ticket_view, methods=["POST", "OPTIONS"])

    def state(self, app: Optional[Flask] = None) -> AppState:
        """This extension's state for ``app`` (default: the current app).

        Raises ``RuntimeError`` when the app is not registered with this instance.
        """
        state = get_state(app)
        if state.extension is not self:
            raise RuntimeError(
                "The current Flask app is not registered with this 'SSE' instance. "
                "Did you forget to call 'init_app'?"
            )
        return state

    def publish(
        self,
        data: Any,
        event: Optional[str] = None,
        id: Optional[str] = None,
        retry: Optional[int] = None,
        channel: str = "sse",
        *,
        type: Optional[str] = None,
        conflate: Optional[str] = None,
    ) -> str:
        """Send an event to every stream on ``channel`` and keep it in the channel's history.

        ``data`` is a ``str`` or any JSON-serializable value. ``type`` is an alias of
        ``event`` (as in flask-sse). ``conflate`` is a key (channel-name grammar): a client
        that falls behind, or asked for ``?max_rate=``, and a replay get only the newest
        event of each key (docs/compression.md). Returns the event id: ``id`` when given,
        else one the broker generates. Raises ``ValueError`` for a field that cannot be
        sent, and ``BrokerError`` when the broker cannot take the event. Needs an app context.
        """
        return self.state().publish(data, event, id, retry, channel, type, conflate)

    def response(
        self,
        iterable: Iterable[Any],
        *,
        heartbeat: Optional[float] = None,
        retry: Optional[int] = None,
        headers: Optional[Mapping[str, str]] = None,
        expose_errors: bool = False,
        resumable: bool = False,
    ) -> Response:
        """A streaming response of this request's own events, from any view and any method.

        Each item of ``iterable`` is an ``Event``, a ``str`` (sent as data) or any other
        JSON-serializable value. The headers and ``retry:`` go out at once; a heartbeat every
        ``heartbeat`` seconds (default ``SSE_HEARTBEAT_INTERVAL``) while the generator waits;
        ``event: sse.end`` when it is done. If it raises, the client gets ``event: sse.error``
        with ``{"error": "internal error"}`` (the exception text with ``expose_errors``). When
        the client leaves, the generator is stopped and its ``finally`` runs.

        With ``resumable=True`` the generator runs apart from the request and its events go to
        a log in the broker: the stream survives its connection. It opens with ``sse.stream``
        (``{"id", "url"}``), and any reconnect, to any worker, with the ``Last-Event-ID`` (to
        this view or to the ``url``) gets the rest without running the generator again. The
        stream is bound to the requester's identity (or Flask session). See docs/resumable.md.
        """
        if resumable:
            return answer_response(
                self.state(),
                iterable,
                heartbeat=heartbeat,
                retry=retry,
                headers=headers,
                expose_errors=expose_errors,
            )
        settings = self.state().settings
        return direct_response(
            iterable,
            heartbeat=settings.heartbeat_interval if heartbeat is None else heartbeat,
            retry=settings.retry if retry is None else retry,
            headers=headers,
            expose_errors=expose_errors,
            queue_size=settings.client_queue_size,
            environ=request.environ,
            base_headers=HEADERS,
            send_timeout=settings.send_timeout,
            send_buffer=settings.send_buffer_bytes,
            stats=self.state().stats,
        )

    def cancel(self, stream_id: str) -> bool:
        """Stop the resumable answer ``stream_id`` (its generator stops within a second, on
        whichever worker runs it; readers get ``sse.end`` with ``{"reason": "cancelled"}``).
        ``False`` when no such stream exists. Raises ``BrokerError``. Needs an app context."""
        state = self.state()
        if not stream_id.startswith("r.") or state.broker.log_meta(stream_id) is None:
            return False
        state.broker.log_signal(stream_id, "cancel", state.settings.resumable_ttl)
        return True

    def job(self, job_id: str) -> Job:
        """The progress log of ``job_id`` (created if new), to ``publish`` to and ``end``; as
        ``Publisher.job`` does without Flask. Raises ``ValueError`` for a bad id and
        ``BrokerError``. Needs an app context."""
        state = self.state()
        settings = state.settings
        return Job(state.broker, job_id, ttl=settings.resumable_ttl, max_event_bytes=settings.max_event_bytes)

    def job_response(self, job_id: str) -> Response:
        """A stream of ``job_id``'s progress: every event so far (or after the request's
        ``Last-Event-ID``), then live, until the job ends. 404 for a job never created (or
        expired). Decide in the view who may read it. Raises ``ValueError`` for a bad id."""
        return job_response(self.state(), job_id)

    def presence(self, channel: str) -> int:
        """How many streams are open on ``channel`` over every worker and host that share the
        broker (each reports every few seconds; a dead one drops out within 15 s). With the
        in-process broker, this process's count. Raises ``ValueError`` for a bad channel name
        and ``BrokerError`` when Redis does not answer. Needs an app context."""
        return self.state().presence(channel)

    def stats(self) -> Dict[str, int]:
        """Counters of this process: open ``streams``; ``channels`` with local streams and the
        broker's live ``subscriptions``; events ``published``, ``delivered`` live (of them
        ``pushed``: written to the socket directly, see ``SSE_DIRECT_WRITES``) and
        ``replayed`` from history; streams cut as ``lagged`` (queue full) or ``timed_out`` (sent
        data not drained within ``SSE_SEND_TIMEOUT``); ``broker_reconnects`` to Redis.
        Needs an app context."""
        return self.state().counters()


def _blueprint() -> Blueprint:
    # The JS client is served at <SSE_URL_PREFIX>/static/sse-client.js (url_for("sse.static", ...)).
    blueprint = Blueprint("sse", __name__, static_folder="static", cli_group=None)
    blueprint.cli.add_command(cli)
    blueprint.add_url_rule("", "stream", stream_view, methods=["GET", "OPTIONS"])
    blueprint.add_url_rule("/resume/<stream_id>", "resume", resume_view, methods=["GET", "DELETE"])
    return blueprint
