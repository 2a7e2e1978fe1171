"""The in-process broker publishes off the caller: its dispatcher delivers, in order, all."""

from __future__ import annotations

import threading
from typing import List

from flask_sse_ext.brokers.base import Message
from flask_sse_ext.brokers.memory import MemoryBroker
from support.waiting import wait_until


def test_publish_returns_before_delivery_which_runs_in_the_dispatcher() -> None:
    broker = MemoryBroker(10)
    gate, entered = threading.Event(), threading.Event()
    got: List[Message] = []
    threads: List[threading.Thread] = []

    def deliver(message: Message) -> None:
        threads.append(threading.current_thread())
        entered.set()
        gate.wait(5)
        got.append(message)

    broker.start(deliver, lambda channel: None)
    broker.subscribe("c")
    try:
        first = broker.publish("c", b"data: 1\n")  # returns although delivery is held up
        wait_until(entered.is_set, message="the dispatcher did not take the event")
        second = broker.publish("c", b"data: 2\n")
        assert got == [] and threads[0] is not threading.current_thread()
        # A stream subscribing now starts after what the dispatcher took: the second event,
        # still pending, reaches it live; the first does not, and is not expected to.
        assert broker.live_position("c") == first.position < second.position
        gate.set()
        wait_until(lambda: len(got) == 2)
        assert got == [first, second]
    finally:
        gate.set()
        broker.close()


def test_concurrent_publishers_lose_nothing_and_deliver_in_position_order() -> None:
    broker = MemoryBroker(0)
    got: List[Message] = []
    broker.start(got.append, lambda channel: None)
    for channel in ("a", "b"):
        broker.subscribe(channel)
    ids: List[str] = []

    def publish(channel: str) -> None:
        for i in range(300):
            ids.append(broker.publish(channel, b"data: %d\n" % i).id)

    workers = [threading.Thread(target=publish, args=(c,)) for c in ("a", "b", "a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    try:
        wait_until(lambda: len(got) == 1200, message=lambda: f"{len(got)} of 1200 delivered")
        assert sorted(m.id for m in got) == sorted(ids)  # the ids returned are the ids sent
        assert [m.position for m in got] == sorted(m.position for m in got)
        for channel in ("a", "b"):
            bodies = [m.body for m in got if m.channel == channel]
            assert bodies.count(b"data: 0\n") == 2 and len(bodies) == 600
    finally:
        broker.close()


def test_events_for_a_channel_unsubscribed_before_dispatch_are_not_delivered() -> None:
    broker = MemoryBroker(10)
    gate = threading.Event()
    got: List[Message] = []

    def deliver(message: Message) -> None:
        gate.wait(5)
        got.append(message)

    broker.start(deliver, lambda channel: None)
    broker.subscribe("c")
    broker.subscribe("d")
    try:
        held = broker.publish("d", b"data: held\n")
        dropped = broker.publish("c", b"data: x\n")
        broker.unsubscribe("c")  # its last stream left: nobody to deliver to
        kept = broker.publish("d", b"data: y\n")
        gate.set()
        wait_until(lambda: len(got) == 2)
        assert got == [held, kept]
        assert broker.replay("c", None).head == dropped.position  # still in its history
    finally:
        gate.set()
        broker.close()


def test_a_new_subscription_starts_after_what_was_published_before_it() -> None:
    """Events of a channel published before its first subscription were never queued: a new
    stream's live position is past them even while the dispatcher is behind."""
    broker = MemoryBroker(10)
    gate = threading.Event()
    got: List[Message] = []

    def deliver(message: Message) -> None:
        gate.wait(5)
        got.append(message)

    broker.start(deliver, lambda channel: None)
    broker.subscribe("busy")
    try:
        held = broker.publish("busy", b"data: held\n")
        before = broker.publish("c", b"data: before\n")
        broker.subscribe("c")
        assert broker.live_position("c") == before.position
        after = broker.publish("c", b"data: after\n")
        gate.set()
        wait_until(lambda: len(got) == 2)
        assert got == [held, after]
    finally:
        gate.set()
        broker.close()


def test_flush_delivers_what_waits_in_order_after_the_batch_being_delivered() -> None:
    """A worker that stops flushes the broker, so its streams send what was published."""
    broker = MemoryBroker(10)
    gate, entered = threading.Event(), threading.Event()
    got: List[Message] = []

    def deliver(message: Message) -> None:
        entered.set()
        gate.wait(5)
        got.append(message)

    broker.start(deliver, lambda channel: None)
    broker.subscribe("c")
    try:
        first = broker.publish("c", b"data: 1\n")
        wait_until(entered.is_set)
        rest = [broker.publish("c", b"data: %d\n" % i) for i in (2, 3)]
        flusher = threading.Thread(target=broker.flush)
        flusher.start()  # waits for the dispatcher's batch, then delivers the rest itself
        gate.set()
        flusher.join(5)
        assert not flusher.is_alive() and got == [first, *rest]
    finally:
        gate.set()
        broker.close()
