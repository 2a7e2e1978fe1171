"""The broker contract: what the stream layer needs from a transport, and nothing more.

Every event on a channel has a *position*, ``(milliseconds, sequence)``, that increases with
each publish (a Redis Stream entry id has the same shape). The event's *id* on the wire is the
publisher's id when one was given, else the position written as ``"<ms>-<seq>"``. Either form
works as a ``Last-Event-ID`` cursor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import (
    Callable,
    Dict,
    Final,
    FrozenSet,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from ..event import frame
from ..limits import Limiter, MemoryLimiter

__all__ = [
    "Broker",
    "BrokerError",
    "Cursor",
    "LOG_FLAGS",
    "LogEntry",
    "Unknown",
    "UNKNOWN",
    "Message",
    "Position",
    "Replay",
    "format_position",
    "parse_position",
]

Position = Tuple[int, int]


def parse_position(text: str) -> Optional[Position]:
    """``"1700000000000-3"`` to ``(1700000000000, 3)``; ``None`` if it is not a position."""
    ms, dash, seq = text.partition("-")
    # isdigit() admits other scripts' digits; isascii() keeps it to 0-9 (as the regex did).
    if not (dash and text.isascii() and ms.isdigit() and seq.isdigit() and len(ms) < 20 and len(seq) < 20):
        return None
    return int(ms), int(seq)


def format_position(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


class BrokerError(RuntimeError):
    """The broker could not take or read an event (for example, Redis is unreachable)."""


class Message:
    """One published event as it travels from the broker to the streams.

    ``frame`` is the complete event, shared by every single-channel stream that sends it;
    ``body`` (its ``event``/``retry``/``data`` lines, without the ``id`` line) is a slice of it,
    made only when needed, so history holds each event once. ``key`` is the conflation key
    (``publish(..., conflate=...)``): a client that falls behind gets only the newest event
    of each key. ``gzip`` and ``gzip_body`` hold the frame and the body compressed, made by
    the first gzip stream that sends the message and shared by every later one; ``chunk``
    holds the frame as one HTTP/1.1 chunk while the hub delivers it, made by the first stream
    that writes it straight to its socket.
    """

    __slots__ = ("channel", "position", "id", "frame", "_body_length", "key", "gzip", "gzip_body", "chunk")

    def __init__(
        self, channel: str, position: Position, id: Optional[str], body: bytes, key: Optional[str] = None
    ) -> None:
        self.channel = channel
        self.position = position
        self.id = format_position(position) if id is None else id
        self.frame = frame(body, self.id)
        self._body_length = len(body)
        self.key = key
        self.gzip: Optional[bytes] = None
        self.gzip_body: Optional[bytes] = None
        self.chunk: Optional[bytes] = None

    @property
    def body(self) -> bytes:
        return self.frame[: self._body_length]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.channel, self.position, self.frame) == (other.channel, other.position, other.frame)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Message({self.channel!r}, {self.position!r}, id={self.id!r})"


class Replay(NamedTuple):
    """What a channel holds after a cursor."""

    #: Events after the cursor, oldest first.
    messages: List[Message]
    #: The channel's newest position (the cursor to use when nothing newer is known).
    head: Position
    #: True when the cursor was unknown or older than the history kept: events were lost.
    missed: bool


class Unknown(Enum):
    """A cursor that no broker issued (malformed, too long): its history is reported missed."""

    CURSOR = "unknown"


UNKNOWN: Final = Unknown.CURSOR

#: A cursor: a wire id (publisher id or position text), an exact position, ``UNKNOWN``, or
#: ``None`` for "from now on".
Cursor = Union[str, Position, Unknown, None]


class LogEntry(NamedTuple):
    """One event of a log (a resumable stream or a job): its position in the log, its encoded
    body (no ``id`` line), and whether it is the log's last."""

    position: Position
    body: bytes
    final: bool


#: The flags a log carries, each raised for a while: its owner's lease, a reader's presence,
#: and a request to cancel.
LOG_FLAGS: Final = frozenset({"owner", "reader", "cancel"})


class Broker(ABC):
    """A transport: stores each channel's recent history and delivers new events live.

    One broker serves one app in one process. ``start`` is called once, before the first
    ``subscribe``; ``deliver`` may be called from a broker's own greenlet or thread.
    """

    @property
    def reconnects(self) -> int:
        """How often the broker connected again after losing its transport."""
        return 0

    #: Capability: events published in one process reach the streams of every process that
    #: uses the same backend (Redis); ``False`` for a broker that lives in one process.
    shared = False

    def processes(self) -> Optional[int]:
        """How many processes are connected to the backend, if it can tell; else ``None``.
        Raises ``BrokerError`` when the backend does not answer."""
        return None

    @abstractmethod
    def start(self, deliver: Callable[[Message], None], lost: Callable[[str], None]) -> None:
        """Begin delivering live messages of subscribed channels to ``deliver``; call ``lost``
        with a channel whose live events may have gone missing (its streams must resync)."""

    @abstractmethod
    def subscribe(self, channel: str) -> None:
        """Deliver ``channel``'s events from now on (called when its first local client comes)."""

    @abstractmethod
    def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` (called when its last local client leaves)."""

    def ready(self, channels: Sequence[str], timeout: float = 5.0) -> None:
        """Return once live delivery of ``channels`` is active (after ``subscribe``).

        Raises ``BrokerError`` when the transport cannot confirm it within ``timeout``.
        """

    @abstractmethod
    def publish(
        self, channel: str, body: bytes, id: Optional[str] = None, key: Optional[str] = None
    ) -> Message:
        """Append an encoded event to ``channel``'s history and deliver it; ``key`` (the
        conflation key) is kept with it in history and delivered with it.

        Raises ``BrokerError`` when the event could not be stored and sent.
        """

    def live_position(self, channel: str) -> Optional[Position]:
        """A position such that every event of ``channel`` after it is still to be delivered
        live to this process, and none at or before it will be; ``None`` when unknown (then a
        new stream reads the head with ``replay``)."""
        return None

    @abstractmethod
    def replay(self, channel: str, cursor: Cursor) -> Replay:
        """Events of ``channel`` after ``cursor``, and whether any were lost."""

    @property
    @abstractmethod
    def subscriptions(self) -> int:
        """How many channels this broker delivers live (for stats and leak checks)."""

    def share_stats(self, process: str, snapshot: str) -> None:
        """Make ``process``'s counters (JSON) visible to every process; here, nothing to do."""

    def shared_stats(self) -> Dict[str, str]:
        """The counters other processes shared, by process name."""
        return {}

    def report_presence(self, process: str, counts: Dict[str, int], ttl: float) -> None:
        """Record ``process``'s open streams per channel for ``ttl`` seconds; here, nothing
        to do (one process counts for itself)."""

    def presence(self, channel: str) -> Optional[int]:
        """Open streams on ``channel`` over every process, or ``None`` when the broker cannot
        see other processes (then the local count is the answer)."""
        return None

    def limiter(self) -> Limiter:
        """Connection caps counted where this broker's streams are: here, in this process."""
        return MemoryLimiter()

    def claim_once(self, key: str, ttl: float) -> bool:
        """Capability: ``True`` the first time ``key`` is claimed, ``False`` for every later
        claim within ``ttl`` seconds, over every process that shares the broker (single-use
        stream tickets). Raises ``BrokerError`` when the backend does not answer, or when the
        broker cannot keep claims at all."""
        raise BrokerError(f"{type(self).__name__} cannot keep single-use claims (stream tickets)")

    def flush(self) -> None:
        """Deliver now what this process published and has not delivered yet (before a
        shutdown ends the streams); here, nothing waits."""

    def close(self) -> None:
        """Release connections and background work."""

    # -- logs: the events of one resumable stream or job, read from the start by any process --
    # A log has metadata, entries in position order (the first after ``(0, 0)``), at most one
    # final entry after which nothing is added, and ``LOG_FLAGS`` that expire by themselves.
    # It is kept ``ttl`` seconds after its last write.

    @abstractmethod
    def log_create(self, log: str, meta: Mapping[str, str], ttl: int) -> bool:
        """Create ``log`` with ``meta`` unless it exists; ``True`` if it was created.
        Raises ``BrokerError``."""

    @abstractmethod
    def log_meta(self, log: str) -> Optional[Dict[str, str]]:
        """``log``'s metadata, or ``None`` when it does not exist (never made, or expired).
        Raises ``BrokerError``."""

    @abstractmethod
    def log_append(self, log: str, body: bytes, ttl: int, final: bool = False) -> Optional[Position]:
        """Append an encoded event to ``log`` (``final``: its last); its position, or ``None``
        when the log is gone or already ended. Raises ``BrokerError``."""

    @abstractmethod
    def log_read(self, log: str, after: Position, timeout: float) -> Optional[List[LogEntry]]:
        """Entries of ``log`` after ``after``, waiting up to ``timeout`` seconds for one when
        there is none yet; ``None`` when the log does not exist. Raises ``BrokerError``."""

    @abstractmethod
    def log_signal(self, log: str, flag: Optional[str], ttl: float) -> FrozenSet[str]:
        """Raise ``flag`` (one of ``LOG_FLAGS``) on ``log`` for ``ttl`` seconds, unless
        ``None``; return the flags raised now. Raises ``BrokerError``."""
