"""Connection caps (``flask_sse_ext.limits``): the limiter contract, in process and through Redis.

The in-process ``MemoryLimiter`` and the limiter a Redis broker brings (``broker.limiter()``,
counts shared by every worker) must behave the same.
"""

from __future__ import annotations

import threading
from typing import Iterator, List, Optional

import pytest

from flask_sse_ext.brokers.redis import RedisBroker
from flask_sse_ext.limits import Caps, Limiter, MemoryLimiter
from support.redis import RedisServer


class Tracked(Limiter):
    """A limiter that gives back, after the test, what the test still holds (the Redis limiter
    renews what is held until it is released)."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.held: List[object] = []

    def acquire(self, caps: Caps) -> Optional[object]:
        handle = self.limiter.acquire(caps)
        if handle is not None:
            self.held.append(handle)
        return handle

    def release(self, handle: object) -> None:
        self.held = [held for held in self.held if held is not handle]
        self.limiter.release(handle)

    def release_all(self) -> None:
        while self.held:
            self.release(self.held[-1])


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest, prefix: str) -> Iterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    broker = RedisBroker.from_url(redis_server.url, prefix=prefix)
    tracked = Tracked(broker.limiter())
    try:
        yield tracked
    finally:
        tracked.release_all()
        broker.close()


def fill(limiter: Limiter, caps: Caps) -> List[object]:
    """Acquire ``caps`` until refused; the handles taken."""
    handles = []
    while (handle := limiter.acquire(caps)) is not None:
        handles.append(handle)
        assert len(handles) <= 100, "the limiter never refused"
    return handles


def test_a_cap_admits_up_to_its_limit(limiter: Limiter) -> None:
    assert len(fill(limiter, [("addr:a", 3)])) == 3
    assert limiter.acquire([("addr:a", 3)]) is None
    assert limiter.acquire([("addr:a", 4)]) is not None  # a higher limit has room again


def test_release_gives_the_slot_back(limiter: Limiter) -> None:
    handles = fill(limiter, [("addr:a", 2)])
    limiter.release(handles.pop())
    again = limiter.acquire([("addr:a", 2)])
    assert again is not None
    assert limiter.acquire([("addr:a", 2)]) is None
    for handle in [again, *handles]:
        limiter.release(handle)
    assert len(fill(limiter, [("addr:a", 2)])) == 2  # everything was given back


def test_keys_are_counted_apart(limiter: Limiter) -> None:
    assert len(fill(limiter, [("addr:a", 2)])) == 2
    assert len(fill(limiter, [("addr:b", 2)])) == 2
    assert len(fill(limiter, [("user:a", 1)])) == 1


def test_every_cap_must_have_room(limiter: Limiter) -> None:
    """A connection counts against its address and its identity at once."""
    alice = [("addr:a", 3), ("user:alice", 2)]
    assert len(fill(limiter, alice)) == 2  # the identity's cap is the smaller
    # Another identity from the same address takes the address's last slot.
    bob = limiter.acquire([("addr:a", 3), ("user:bob", 2)])
    assert bob is not None
    assert limiter.acquire([("addr:a", 3), ("user:bob", 2)]) is None
    # From another address, bob's second connection is admitted.
    assert limiter.acquire([("addr:b", 3), ("user:bob", 2)]) is not None


def test_a_full_cap_refuses_without_consuming_the_others(limiter: Limiter) -> None:
    full = limiter.acquire([("user:u", 1)])
    assert full is not None
    for _ in range(5):  # refused: user:u is full
        assert limiter.acquire([("addr:a", 2), ("user:u", 1), ("addr:b", 2)]) is None
    # addr:a and addr:b still have both their slots.
    assert len(fill(limiter, [("addr:a", 2)])) == 2
    assert len(fill(limiter, [("addr:b", 2)])) == 2
    limiter.release(full)
    assert limiter.acquire([("user:u", 1)]) is not None


def test_no_caps_always_admits(limiter: Limiter) -> None:
    for _ in range(3):
        assert limiter.acquire([]) is not None


def test_concurrent_acquires_never_exceed_the_limit() -> None:
    limiter = MemoryLimiter()
    admitted: List[Optional[object]] = []
    start = threading.Barrier(40)

    def connect() -> None:
        start.wait()
        admitted.append(limiter.acquire([("addr:a", 10), ("user:u", 25)]))

    threads = [threading.Thread(target=connect) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(handle is not None for handle in admitted) == 10
