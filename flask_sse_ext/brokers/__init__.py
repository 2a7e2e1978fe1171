"""Transports for events: an in-process broker and a Redis broker share one contract."""

from .base import Broker, BrokerError, Message, Replay
from .memory import MemoryBroker

__all__ = ["Broker", "BrokerError", "Message", "MemoryBroker", "Replay"]
