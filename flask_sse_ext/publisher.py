"""Publishing without Flask: the same events from a Celery or RQ worker, or a plain script."""

from __future__ import annotations

from typing import Any, Optional

from .brokers import open_broker
from .brokers.base import Broker, parse_position
from .config import CHANNEL_PATTERN, DEFAULTS, validate_channel
from .event import encode_body, validate_field
from .jobs import Job

__all__ = ["Publisher", "prepare_event", "MAX_ID_LENGTH"]

#: Longest ``id`` a publisher may set (it comes back as the ``Last-Event-ID`` header).
MAX_ID_LENGTH = 256


def prepare_event(
    data: Any,
    event: Optional[str],
    id: Optional[str],
    retry: Optional[int],
    channel: str,
    type: Optional[str],
    max_event_bytes: int,
    conflate: Optional[str] = None,
) -> bytes:
    """Validate every field and return the encoded body. Raises ``ValueError``."""
    if conflate is not None and (
        not isinstance(conflate, str) or CHANNEL_PATTERN.fullmatch(conflate) is None
    ):
        raise ValueError(
            f"Invalid conflation key {conflate!r}: use 1 to 200 characters among letters, digits and - _ . : @ /"
        )
    if type is not None:
        if event is not None and event != type:
            raise ValueError("Pass the event name as 'event' or 'type', not both")
        event = type
    validate_channel(channel)
    if id is not None:
        validate_field("id", id)
        if not id or len(id) > MAX_ID_LENGTH:
            raise ValueError(f"SSE 'id' must be 1 to {MAX_ID_LENGTH} characters, got {id!r}")
        if parse_position(id) is not None:
            raise ValueError(
                f"SSE 'id' {id!r} has the form of a generated id (<digits>-<digits>), which is "
                "reserved; add a letter, e.g. 'order-17'"
            )
    body = encode_body(data, event, retry)
    if len(body) > max_event_bytes:
        raise ValueError(
            f"SSE event is {len(body)} bytes encoded, over the limit of {max_event_bytes} "
            "(SSE_MAX_EVENT_BYTES); send a reference to the data instead"
        )
    return body


class Publisher:
    """Publishes to the streams of a Flask app that uses the Redis broker, with no app.

    >>> publisher = Publisher("redis://localhost:6379/0")       # doctest: +SKIP
    >>> publisher.publish({"done": 40}, event="progress", channel="job-7")   # doctest: +SKIP

    Give it the same ``prefix``, ``history_size`` and ``history_ttl`` as the app's
    ``SSE_REDIS_PREFIX``, ``SSE_HISTORY_SIZE`` and ``SSE_HISTORY_TTL`` (the defaults match);
    ``redis_url`` takes the same forms as ``SSE_REDIS_URL`` (Sentinel included), and
    ``min_replicas`` makes ``publish`` wait for replicas as ``SSE_REDIS_MIN_REPLICAS`` does.
    It needs no app context and no gevent, and is safe to share between threads.

    Raises ``RuntimeError`` with the ``pip install`` line when the ``[redis]`` extra is missing.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        cluster: bool = False,
        prefix: str = DEFAULTS["SSE_REDIS_PREFIX"],
        history_size: int = DEFAULTS["SSE_HISTORY_SIZE"],
        history_ttl: int = DEFAULTS["SSE_HISTORY_TTL"],
        max_event_bytes: int = DEFAULTS["SSE_MAX_EVENT_BYTES"],
        min_replicas: int = DEFAULTS["SSE_REDIS_MIN_REPLICAS"],
        replica_timeout: float = DEFAULTS["SSE_REDIS_REPLICA_TIMEOUT"],
        job_ttl: int = DEFAULTS["SSE_RESUMABLE_TTL"],
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.job_ttl = job_ttl
        self.broker: Broker = open_broker(
            redis_url,
            cluster=cluster,
            prefix=prefix,
            history_size=history_size,
            history_ttl=history_ttl,
            min_replicas=min_replicas,
            replica_timeout=replica_timeout,
            needed_by="Publisher(redis_url)",
        )

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
        """Exactly what ``SSE.publish`` does, without Flask (``conflate`` included). Returns
        the event id.

        Raises ``ValueError`` for a field that cannot be sent and ``BrokerError`` when Redis
        does not take the event.
        """
        body = prepare_event(data, event, id, retry, channel, type, self.max_event_bytes, conflate)
        return self.broker.publish(channel, body, id, conflate).id

    def job(self, job_id: str) -> Job:
        """The progress log of ``job_id`` (created if new, kept ``job_ttl`` seconds after its
        last write, as ``SSE_RESUMABLE_TTL``): ``publish`` to it, then ``end`` or ``fail``;
        a page reads it with ``sse.job_response(job_id)``. Raises ``ValueError`` for a bad id
        and ``BrokerError`` when Redis does not answer."""
        return Job(self.broker, job_id, ttl=self.job_ttl, max_event_bytes=self.max_event_bytes)

    def close(self) -> None:
        """Release the connections."""
        self.broker.close()
