"""The owner of a resumable answer: runs its generator into a log, apart from any request.

The generator runs in a greenlet of its own (a thread without gevent), owned by the worker:
it keeps going when its client leaves. Every ``BEAT`` seconds the owner renews its lease on
the log and looks for a cancel request, for a reader (readers keep a presence flag up for the
idle limit) and at its age; on any of them it ends the log and stops the generator (under
gevent at once, wherever it waits, so its ``finally`` closes the upstream call).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any, Callable, Iterable, Optional

from flask import copy_current_request_context, has_request_context

from .brokers.base import Broker, BrokerError
from .direct import END_EVENT, ERROR_EVENT
from .event import Event, encode_body
from .serving import gevent_active
from .state import AppState

__all__ = ["LEASE", "BEAT", "start_answer"]

logger = logging.getLogger(__name__)

#: Seconds an owner's lease lasts: a reader declares the owner dead this long after its last beat.
LEASE = 3.0
#: Seconds between two beats of an owner: how soon it sees a cancel request.
BEAT = 0.5


def _body(item: Any) -> bytes:
    # The log's positions are the ids: an Event's own id is not sent.
    if isinstance(item, Event):
        return encode_body(item.data, item.event, item.retry)
    return encode_body(item)


def _spawn(target: Callable[[], None], name: str) -> Any:
    """Run ``target`` apart from any request: a greenlet under gevent (it can be killed), else
    a daemon thread (``None``: it stops at its next check)."""
    if gevent_active():
        import gevent

        return gevent.spawn(target)
    threading.Thread(target=target, name=name, daemon=True).start()
    return None


class _Owner:
    """Runs one answer's generator into its log, and stops it on cancel, idleness or age."""

    def __init__(self, broker: Broker, log: str, state: AppState, expose_errors: bool) -> None:
        self.broker = broker
        self.log = log
        self.ttl = state.settings.resumable_ttl
        self.lifetime = state.settings.resumable_lifetime
        self.idle = state.settings.resumable_idle
        self.expose_errors = expose_errors
        self.stopped = False
        self.done = threading.Event()
        self.producer: Any = None

    def start(self, iterable: Any) -> None:
        produce: Callable[[], None] = lambda: self._produce(iterable)  # noqa: E731
        if has_request_context():
            produce = copy_current_request_context(produce)
        self.producer = _spawn(produce, "sse-resumable-producer")
        _spawn(self._watch, "sse-resumable-owner")

    def _append(self, body: bytes, final: bool = False) -> bool:
        return self.broker.log_append(self.log, body, self.ttl, final) is not None

    def _produce(self, iterable: Any) -> None:
        iterator = iter(iterable)
        try:
            for item in iterator:
                if self.stopped or not self._append(_body(item)):
                    return  # stopped, or ended from outside (a cancel, a reader's verdict)
            self._append(encode_body("", END_EVENT), final=True)
        except BrokerError as exc:
            # Nothing more can be written: the lease lapses, and a reader ends the stream.
            logger.warning("A resumable SSE stream lost its log: %s", exc)
        except Exception as exc:  # the app's generator failed: the log says so, and ends
            logger.exception("A resumable SSE stream's generator raised")
            message = f"{type(exc).__name__}: {exc}" if self.expose_errors else "internal error"
            self._end_quietly(encode_body({"error": message}, ERROR_EVENT))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            self.done.set()

    def _end_quietly(self, body: bytes) -> None:
        try:
            self._append(body, final=True)
        except BrokerError as exc:
            logger.warning("Could not end a resumable SSE stream: %s", exc)

    def _verdict(self, started: float) -> Optional[bytes]:
        """Why the generator must stop now, as the log's final event; ``None`` to go on."""
        try:
            flags = self.broker.log_signal(self.log, "owner", LEASE)
        except BrokerError as exc:
            logger.warning("A resumable SSE stream could not renew its lease: %s", exc)
            return None
        if not flags:
            return encode_body({"error": "the stream expired"}, ERROR_EVENT)
        if "cancel" in flags:
            return encode_body({"reason": "cancelled"}, END_EVENT)
        if "reader" not in flags:
            return encode_body({"error": f"no reader for {self.idle:g} s"}, ERROR_EVENT)
        if time.monotonic() - started > self.lifetime:
            return encode_body({"error": f"over the lifetime of {self.lifetime:g} s"}, ERROR_EVENT)
        return None

    def _watch(self) -> None:
        started = time.monotonic()
        while not self.done.wait(BEAT):
            final = self._verdict(started)
            if final is None:
                continue
            self.stopped = True
            self._end_quietly(final)
            if self.producer is not None:
                # GreenletExit where the generator waits: its ``finally`` closes the upstream call.
                self.producer.kill(block=True, timeout=5)
            return


def start_answer(state: AppState, iterable: Iterable[Any], owner: str, expose_errors: bool) -> str:
    """Create a log owned by ``owner`` and start the generator into it; the log's id.
    Raises ``BrokerError``."""
    broker = state.broker
    log = "r." + secrets.token_urlsafe(24)
    meta = {"owner": owner, "kind": "answer", "idle": repr(state.settings.resumable_idle)}
    broker.log_create(log, meta, state.settings.resumable_ttl)
    # Up before the first reader comes: the answer is not idle, and its owner is alive.
    broker.log_signal(log, "owner", LEASE)
    broker.log_signal(log, "reader", state.settings.resumable_idle)
    _Owner(broker, log, state, expose_errors).start(iterable)
    return log
