"""A pub/sub connection to one Redis node, read with hiredis straight off the socket.

redis-py makes the connection (TLS, AUTH, the client name, keepalive) and sends the commands;
its ``PubSub`` reader is left out: per message, it costs several times what the fan-out to the
streams does. The same link serves a single server, a Sentinel-managed primary (``SUBSCRIBE``)
and one shard of a cluster (``SSUBSCRIBE``).
"""

from __future__ import annotations

import functools
import socket
import threading
from typing import Any, Dict, List

import hiredis

__all__ = ["Link", "KEEPALIVE"]

#: The listener blocks on its socket: TCP keepalive also finds a Redis that vanished without a
#: word (a network partition), next to the listener's own pings.
KEEPALIVE = {
    getattr(socket, option): value
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, option)
}


class Link:
    """One node's pub/sub connection. ``read`` blocks until replies arrive and returns them as
    lists, kind and channel in bytes (``[b"smessage", b"sse:c:{news}", payload]``).

    ``connection_class`` and ``kwargs`` are a redis-py connection pool's: the link connects
    with them (RESP2, whatever they ask for: pub/sub replies are then plain arrays), checks
    that the node is a primary, and keeps the socket for itself.
    """

    def __init__(self, connection_class: Any, kwargs: Dict[str, Any], sharded: bool) -> None:
        self.subscribe = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self.unsubscribe = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        options = {**kwargs, "protocol": 2, "socket_keepalive": True}
        options.setdefault("socket_keepalive_options", KEEPALIVE)
        self.connection = _with_socket(connection_class)(**options)
        self.connection.connect()
        # A failover leaves the old primary as a replica: subscribing there would hear nothing.
        self.connection.send_command("ROLE", check_health=False)
        role = self.connection.read_response()
        if not role or role[0] not in (b"master", "master"):
            self.connection.disconnect()
            raise ConnectionError(f"Redis node {self.name} is not a primary (a failover is under way)")
        self.sock: socket.socket = self.connection.socket
        # Reads wait as long as the connection is quiet; pings and TCP keepalive find a dead one.
        self.sock.settimeout(None)
        self.reader = hiredis.Reader()
        self.buffer = memoryview(bytearray(65536))
        self.lock = threading.Lock()  # one command at a time on the socket

    @property
    def name(self) -> str:
        """``host:port`` (or the socket path) of the node, for logs."""
        connection = self.connection
        if hasattr(connection, "port"):
            return f"{connection.host}:{connection.port}"
        return str(getattr(connection, "path", "?"))

    def send(self, *args: str) -> None:
        with self.lock:
            self.connection.send_command(*args, check_health=False)

    def read(self) -> List[List[Any]]:
        size = self.sock.recv_into(self.buffer)
        if not size:
            raise ConnectionError("Redis closed the pub/sub connection")
        self.reader.feed(self.buffer, 0, size)  # type: ignore[arg-type]  # any buffer works
        replies: List[List[Any]] = []
        while True:
            reply = self.reader.gets()
            if reply is False:
                return replies
            if isinstance(reply, hiredis.ReplyError):
                raise reply
            replies.append(reply)

    def abort(self) -> None:
        """Wake a blocked ``read`` with an error (from another thread): the link is dead."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.connection.disconnect()
        except Exception:  # closing a connection that the other side already cut
            pass


@functools.lru_cache(maxsize=None)
def _with_socket(connection_class: Any) -> Any:
    """``connection_class`` with its socket as a public attribute (redis-py keeps it private)."""

    class Connection(connection_class):  # type: ignore[misc]
        @property
        def socket(self) -> socket.socket:
            return self._sock  # type: ignore[no-any-return]

    return Connection
