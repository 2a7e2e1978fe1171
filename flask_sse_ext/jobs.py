"""Job progress: a log of events that a Celery or RQ task, or a script, writes without Flask,
and that a page reads late (everything so far, then live) with a resumable stream.

Every log's event ids are ``<log>.<position>``: a ``Last-Event-ID`` alone names the log and the
place to go on. Answers' logs are ``r.<random>``, jobs' are ``j.<job id>``.
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import Any, Optional, Tuple, Type

from .brokers.base import Broker, Position, format_position, parse_position
from .direct import END_EVENT, ERROR_EVENT
from .event import encode_body

__all__ = [
    "Job",
    "JobEnded",
    "JOB_ID_PATTERN",
    "ANSWER_LOG",
    "JOB_LOG",
    "event_id",
    "parse_event_id",
    "job_log",
]

#: Job ids: 1 to 128 letters, digits and ``-_.:``.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_\-.:]{1,128}")
ANSWER_LOG = re.compile(r"r\.[A-Za-z0-9_-]{32}")
JOB_LOG = re.compile(r"j\.[A-Za-z0-9_\-.:]{1,128}")


def event_id(log: str, position: Position) -> str:
    return f"{log}.{format_position(position)}"


def parse_event_id(text: Optional[str]) -> Optional[Tuple[str, Position]]:
    """``"r.<token>.<ms>-<seq>"`` to the log and the position; ``None`` for anything else."""
    log, dot, position_text = (text or "").rpartition(".")
    position = parse_position(position_text) if dot else None
    if position is None or not (ANSWER_LOG.fullmatch(log) or JOB_LOG.fullmatch(log)):
        return None
    return log, position


def job_log(job_id: str) -> str:
    """The log of ``job_id``. Raises ``ValueError`` for an id outside ``JOB_ID_PATTERN``."""
    if not isinstance(job_id, str) or JOB_ID_PATTERN.fullmatch(job_id) is None:
        raise ValueError(f"Invalid job id {job_id!r}: use 1 to 128 letters, digits and - _ . :")
    return "j." + job_id


class JobEnded(RuntimeError):
    """The job's log has ended (``end``/``fail`` was called) or expired: nothing more is sent."""


class Job:
    """The progress log of one job. Made by ``Publisher.job`` or ``SSE.job``.

    >>> with publisher.job("report-17") as job:               # doctest: +SKIP
    ...     job.publish({"percent": 50}, event="progress")

    The log is created when the job object is (a page that opens it first waits for events)
    and kept ``ttl`` seconds after its last write. As a context manager, the job ends with
    ``sse.end`` or, when the block raises, with ``sse.error``.
    """

    def __init__(self, broker: Broker, job_id: str, *, ttl: int, max_event_bytes: int) -> None:
        self.id = job_id
        self.log = job_log(job_id)
        self.broker = broker
        self.ttl = ttl
        self.max_event_bytes = max_event_bytes
        broker.log_create(self.log, {"kind": "job", "owner": ""}, ttl)

    def _append(self, body: bytes, final: bool = False) -> str:
        if len(body) > self.max_event_bytes:
            raise ValueError(
                f"SSE event is {len(body)} bytes encoded, over the limit of {self.max_event_bytes} "
                "(SSE_MAX_EVENT_BYTES); send a reference to the data instead"
            )
        position = self.broker.log_append(self.log, body, self.ttl, final)
        if position is None:
            raise JobEnded(f"The job {self.id!r} has ended or expired: its stream takes no more events")
        return event_id(self.log, position)

    def publish(self, data: Any, event: Optional[str] = None, retry: Optional[int] = None) -> str:
        """Append an event (``data`` a ``str`` or JSON value) for every reader; its id.
        Raises ``ValueError`` for a field that cannot be sent, ``JobEnded`` after the end,
        and ``BrokerError`` when the broker does not take it."""
        return self._append(encode_body(data, event, retry))

    def end(self, data: Any = "") -> str:
        """End the stream with ``sse.end`` (readers close). Raises as ``publish`` does."""
        return self._append(encode_body(data, END_EVENT), final=True)

    def fail(self, error: str) -> str:
        """End the stream with ``sse.error`` and ``{"error": error}``. Raises as ``publish``."""
        return self._append(encode_body({"error": error}, ERROR_EVENT), final=True)

    def __enter__(self) -> Job:
        return self

    def __exit__(
        self, kind: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            if kind is None:
                self.end()
            else:
                self.fail(f"{kind.__name__}: {exc}" if isinstance(exc, Exception) else "interrupted")
        except JobEnded:
            pass  # the block ended it already
