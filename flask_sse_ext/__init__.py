"""Server-Sent Events for Flask."""

from .auth import AuthError, Identity, private_channel
from .brokers.base import BrokerError
from .direct import END_EVENT, ERROR_EVENT
from .event import Event
from .extension import SSE
from .publisher import Publisher
from .stream import MISSED_EVENT, REAUTH_EVENT

__all__ = [
    "SSE",
    "Publisher",
    "Event",
    "Identity",
    "AuthError",
    "BrokerError",
    "MISSED_EVENT",
    "REAUTH_EVENT",
    "END_EVENT",
    "ERROR_EVENT",
    "private_channel",
]
