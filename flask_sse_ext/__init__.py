"""Server-Sent Events for Flask."""

from .auth import AuthError, Identity, private_channel
from .brokers.base import BrokerError
from .direct import END_EVENT, ERROR_EVENT
from .event import MISSED_EVENT, REAUTH_EVENT, Event
from .extension import SSE
from .jobs import Job, JobEnded
from .publisher import Publisher
from .resumable import STREAM_EVENT

#: The package version, read by setup.cfg (``version = attr: flask_sse_ext.__version__``).
__version__ = "0.1.0"

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
    "Job",
    "JobEnded",
    "STREAM_EVENT",
]
