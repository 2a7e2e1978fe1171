"""The brokers' logs (what resumable streams and jobs are kept in), the same for every backend:
the in-process broker, one Redis, and a Redis Cluster."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator, List

import pytest

from flask_sse_ext.brokers.base import Broker, LogEntry
from flask_sse_ext.brokers.memory import MemoryBroker
from flask_sse_ext.brokers.redis import RedisBroker
from support.waiting import wait_until


@pytest.fixture(params=["memory", "redis", "cluster"])
def broker(request: pytest.FixtureRequest, prefix: str) -> Iterator[Broker]:
    if request.param == "memory":
        made: Broker = MemoryBroker(5)
    elif request.param == "redis":
        made = RedisBroker.from_url(request.getfixturevalue("redis_server").url, prefix=prefix)
    else:
        made = RedisBroker.from_url(request.getfixturevalue("redis_cluster").url, cluster=True, prefix=prefix)
    yield made
    made.close()


def bodies(entries: List[LogEntry]) -> List[bytes]:
    return [entry.body for entry in entries]


def test_a_log_keeps_its_entries_in_order_and_takes_nothing_after_its_end(broker: Broker) -> None:
    assert broker.log_create("r.one", {"kind": "answer", "owner": "x"}, ttl=60)
    assert not broker.log_create("r.one", {"kind": "job"}, ttl=60)  # it exists: kept as it was
    assert broker.log_meta("r.one") == {"kind": "answer", "owner": "x"}
    positions = [broker.log_append("r.one", f"data: {i}\n".encode(), ttl=60) for i in range(3)]
    assert all(p is not None for p in positions) and positions == sorted(positions)  # type: ignore[type-var]
    end = broker.log_append("r.one", b"event: sse.end\ndata: \n", ttl=60, final=True)
    assert broker.log_append("r.one", b"data: late\n", ttl=60) is None
    entries = broker.log_read("r.one", (0, 0), timeout=0.1)
    assert entries is not None
    assert bodies(entries) == [b"data: 0\n", b"data: 1\n", b"data: 2\n", b"event: sse.end\ndata: \n"]
    assert [e.final for e in entries] == [False, False, False, True]
    assert entries[-1].position == end
    after = broker.log_read("r.one", entries[1].position, timeout=0.1)
    assert after is not None and bodies(after) == bodies(entries[2:])


def test_an_unknown_log_reads_as_none(broker: Broker) -> None:
    assert broker.log_meta("r.none") is None
    assert broker.log_read("r.none", (0, 0), timeout=0.1) is None
    assert broker.log_append("r.none", b"data: x\n", ttl=60) is None
    assert broker.log_signal("r.none", "cancel", 5) == frozenset()


def _waiting(request: pytest.FixtureRequest, broker: Broker, prefix: str) -> Callable[[], bool]:
    """Whether a reader waits for an append now: on Redis, a connection of the broker blocked
    in ``XREAD`` (``CLIENT LIST``), on every node of a cluster."""
    if isinstance(broker, MemoryBroker):
        memory = broker
        return lambda: memory.readers_waiting > 0
    name = request.node.callspec.params["broker"]
    nodes = (
        request.getfixturevalue("redis_cluster").nodes
        if name == "cluster"
        else [request.getfixturevalue("redis_server")]
    )

    def blocked() -> bool:
        clients = [c for node in nodes for c in node.client_list() if c["name"].startswith(prefix + ":")]
        return any(c["cmd"] == "xread" and "b" in c["flags"] for c in clients)

    return blocked


def test_a_waiting_reader_wakes_at_the_next_append(
    request: pytest.FixtureRequest, broker: Broker, prefix: str
) -> None:
    """Regression: the reader was given a fixed 0.2 s to start waiting, which did not show
    that it waited at all."""
    broker.log_create("j.wake", {"kind": "job"}, ttl=60)
    got: List[LogEntry] = []

    def read() -> None:
        entries = broker.log_read("j.wake", (0, 0), timeout=5)
        got.extend(entries or [])

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(_waiting(request, broker, prefix), timeout=3, message="the reader never waited")
    appended = time.monotonic()
    broker.log_append("j.wake", b"data: now\n", ttl=60)
    reader.join(5)
    assert bodies(got) == [b"data: now\n"]
    assert time.monotonic() - appended < 1.0  # woken, not timed out


def test_flags_expire_by_themselves(broker: Broker) -> None:
    broker.log_create("r.flags", {"kind": "answer"}, ttl=60)
    assert broker.log_signal("r.flags", None, 0) == frozenset()
    assert broker.log_signal("r.flags", "owner", 0.3) == {"owner"}
    assert broker.log_signal("r.flags", "cancel", 30) == {"owner", "cancel"}
    wait_until(lambda: broker.log_signal("r.flags", None, 0) == {"cancel"}, timeout=3)
    with pytest.raises(ValueError, match="Unknown log flag 'other'"):
        broker.log_signal("r.flags", "other", 1)


def test_a_log_expires_its_ttl_after_its_last_write(broker: Broker) -> None:
    broker.log_create("j.short", {"kind": "job"}, ttl=1)
    broker.log_append("j.short", b"data: x\n", ttl=1)
    wait_until(lambda: broker.log_meta("j.short") is None, timeout=4)
    assert broker.log_read("j.short", (0, 0), timeout=0.1) is None
