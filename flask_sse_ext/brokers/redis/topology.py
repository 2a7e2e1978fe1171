"""Where Redis is: one server, a Sentinel-managed primary, or a cluster's shards.

A topology gives the broker a command client (a small, named connection pool per node) and,
for each pub/sub key, the node whose primary serves it, with what a ``Link`` needs to connect
there. ``refresh`` asks again after a fault: the cluster's slot map, or Sentinel's primary.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Dict, NamedTuple, Optional, Tuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from ...config import SENTINEL_SCHEMES, parse_sentinel_url

__all__ = ["Target", "Topology", "connect"]

logger = logging.getLogger(__name__)


class Target(NamedTuple):
    """A node to open a pub/sub link to: its name (``host:port``) and how to connect."""

    name: str
    connection_class: Any
    kwargs: Dict[str, Any]


def _common(prefix: str) -> Dict[str, Any]:
    # Named per process, so CLIENT LIST shows which worker holds which connection.
    return {
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
        "client_name": f"{prefix}:{os.getpid()}",
        # Commands are retried once on a dropped connection; the listener sees every fault.
        "retry": Retry(NoBackoff(), 1),
    }


def _target(pool: Any) -> Target:
    kwargs = dict(pool.connection_kwargs)
    name = f"{kwargs['host']}:{kwargs['port']}" if "port" in kwargs else str(kwargs.get("path"))
    kwargs["retry"] = Retry(NoBackoff(), 0)
    return Target(name, pool.connection_class, kwargs)


class Topology:
    """One Redis server (``redis://``, ``rediss://``, ``unix://``)."""

    #: Pub/sub is sharded (``SSUBSCRIBE``) and keys live on several nodes.
    sharded = False

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._lock = threading.Lock()
        self._client: Any = None

    @property
    def commands(self) -> Any:
        """The command client, made on first use (the app starts while Redis is down)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
        return client

    def _connect(self) -> Any:
        pool = redis.BlockingConnectionPool.from_url(
            self.url, max_connections=2, timeout=10, **_common(self.prefix)
        )
        return redis.Redis(connection_pool=pool)

    def known(self) -> Any:
        """The command client if the layout is known, else raise ``ConnectionError``: callers
        that hold locks must not wait on the network to learn it (``refresh`` does)."""
        return self.commands  # one server: known without asking

    def target(self, key: str) -> Target:
        """The node that serves ``key`` now, as the last ``refresh`` learned it (no I/O)."""
        return _target(self.known().connection_pool)

    def node_client(self, key: str) -> Any:
        """A plain client of the primary that holds ``key`` (for what must run on one
        connection of that node, such as a script followed by ``WAIT``)."""
        return self.commands

    def refresh(self) -> None:
        """Learn the layout again after a fault (one server: nothing to learn). Raises a
        ``redis`` error while it cannot."""

    def invalidate(self) -> None:
        """A command failed: the next one learns the layout first (no I/O here)."""

    def close(self) -> None:
        if self._client is not None:
            _close(self._client)


def _close(client: Any) -> None:
    # A client made on a pool of ours leaves the pool open when it closes.
    client.connection_pool.disconnect()
    client.close()


class SentinelTopology(Topology):
    """A primary found through Sentinel (``redis+sentinel://h1:26379,h2:26379/name/0``).

    Commands go to the primary that Sentinel names. After a fault, Sentinel is asked again
    before the next command; a new primary gets a fresh pool, and the old one is closed.
    """

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix)
        self.sentinels, self.service, options = parse_sentinel_url(url)
        if options.pop("ssl"):
            options["connection_class"] = redis.SSLConnection
        sentinel_options = {"socket_connect_timeout": 1, "socket_timeout": 1}
        self.sentinel: Any = Sentinel(self.sentinels, sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
        self.options = {**options, **_common(prefix)}
        self.address: Optional[Tuple[str, int]] = None
        self._stale = False

    @property
    def commands(self) -> Any:
        client = self._client
        if client is None or self._stale:
            with self._lock:
                if self._client is None or self._stale:
                    self._ask_sentinel()
                client = self._client
        return client

    def _ask_sentinel(self) -> None:
        """Under the lock: the primary's address, and a pool for it if it changed."""
        host, port = self.sentinel.discover_master(self.service)
        address = (str(host), int(port))
        self._stale = False
        if self._client is not None and address == self.address:
            return
        if self.address is not None and address != self.address:
            logger.warning("Sentinel: the primary of %r is now %s:%d", self.service, *address)
        old, self.address = self._client, address
        pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            host=address[0], port=address[1], max_connections=2, timeout=10, **self.options
        )
        self._client = redis.Redis(connection_pool=pool)
        if old is not None:
            _close(old)

    def known(self) -> Any:
        client = self._client
        if client is None:
            raise redis.ConnectionError(f"Sentinel has not named the primary of {self.service!r} yet")
        return client

    def refresh(self) -> None:
        self.invalidate()
        self.commands.ping()  # raises while Sentinel names no primary that answers

    def invalidate(self) -> None:
        self._stale = True


class ClusterTopology(Topology):
    """A Redis Cluster: keys are spread over shards by their hash tag, pub/sub is sharded."""

    sharded = True

    def _connect(self) -> Any:
        return redis.RedisCluster.from_url(
            self.url,
            connection_pool_class=redis.BlockingConnectionPool,
            max_connections=2,
            timeout=10,
            **_common(self.prefix),
        )

    def known(self) -> Any:
        client = self._client
        if client is None:
            raise redis.ConnectionError("the cluster's slot map is not known yet")
        return client

    def target(self, key: str) -> Target:
        client = self.known()
        node = client.get_node_from_key(key)
        return _target(client.get_redis_connection(node).connection_pool)

    def node_client(self, key: str) -> Any:
        client = self.commands
        return client.get_redis_connection(client.get_node_from_key(key))

    def refresh(self) -> None:
        client = self.commands
        with self._lock:
            client.nodes_manager.initialize()

    def close(self) -> None:
        client = self._client
        if client is not None:
            # redis-py's RedisCluster.close() leaves the nodes' pools (made by from_url) open.
            for node in client.get_nodes():
                if node.redis_connection is not None:
                    node.redis_connection.connection_pool.disconnect()
            client.close()


def connect(url: str, *, cluster: bool, prefix: str) -> Topology:
    """The topology for ``SSE_REDIS_URL`` (and ``SSE_REDIS_CLUSTER``)."""
    if url.startswith(SENTINEL_SCHEMES):
        return SentinelTopology(url, prefix)
    if cluster:
        return ClusterTopology(url, prefix)
    return Topology(url, prefix)
