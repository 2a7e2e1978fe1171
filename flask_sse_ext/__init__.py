"""Server-Sent Events for Flask."""

from .brokers.base import BrokerError
from .event import Event
from .extension import SSE
from .publisher import Publisher
from .stream import MISSED_EVENT

__all__ = ["SSE", "Publisher", "Event", "BrokerError", "MISSED_EVENT"]
