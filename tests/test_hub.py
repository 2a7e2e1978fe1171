"""Fan-out: one encoded message shared by all clients, bounded queues, subscriptions."""

from __future__ import annotations

import socket
from typing import List

import pytest

from flask_sse_ext.brokers.base import Message
from flask_sse_ext.brokers.memory import MemoryBroker
from flask_sse_ext.client import LAGGED, SHUTDOWN, Client
from flask_sse_ext.hub import Hub
from support.waiting import wait_until


def test_every_client_gets_the_same_bytes_object() -> None:
    broker = MemoryBroker(10)
    hub = Hub(broker)
    clients = [Client(("c",), 10) for _ in range(3)]
    for client in clients:
        hub.attach(client)
    message = broker.publish("c", b"data: x\n")
    wait_until(lambda: all(c.queue for c in clients))  # the broker's dispatcher delivers
    assert all(c.queue[0] is message and c.wake.is_set() for c in clients)
    assert len({id(c.queue[0].frame) for c in clients}) == 1


def test_subscribe_on_first_client_unsubscribe_on_last() -> None:
    broker = MemoryBroker(10)
    hub = Hub(broker)
    a, b = Client(("x", "y"), 10), Client(("y",), 10)
    hub.attach(a)
    hub.attach(b)
    assert broker.subscriptions == 2 and hub.channel_count == 2
    hub.detach(a)
    assert broker.subscriptions == 1
    hub.detach(a)  # detaching twice is harmless
    hub.detach(b)
    assert broker.subscriptions == 0 and hub.client_count == 0


def test_full_queue_cuts_the_client_and_shuts_its_connection_down() -> None:
    server_side, peer = socket.socketpair()
    with server_side, peer:
        _cut_when_full(server_side, peer)


def _cut_when_full(server_side: socket.socket, peer: socket.socket) -> None:
    broker = MemoryBroker(10)
    hub = Hub(broker)
    slow = Client(("c",), 3, sock=server_side)
    fast = Client(("c",), 100)
    hub.attach(slow)
    hub.attach(fast)
    for i in range(5):
        broker.publish("c", b"data: %d\n" % i)
    wait_until(lambda: len(fast.queue) == 5)
    assert slow.closed == LAGGED
    assert peer.recv(1) == b""  # the peer sees the end of the connection
    with pytest.raises(OSError):
        server_side.send(b"x")  # and a write stuck on it would fail at once
    assert len(slow.queue) == 3  # bounded: nothing more was kept for it
    assert len(fast.queue) == 5 and fast.closed is None


def test_shutdown_closes_every_stream() -> None:
    hub = Hub(MemoryBroker(10))
    clients = [Client(("c",), 10) for _ in range(3)]
    for client in clients:
        hub.attach(client)
    hub.shutdown()
    assert all(c.closed == SHUTDOWN and c.wake.is_set() for c in clients)


def test_streams_opened_after_shutdown_end_at_once() -> None:
    """Regression: a stopping worker answered reconnects with streams that lived on."""
    hub = Hub(MemoryBroker(10))
    hub.shutdown()
    late = Client(("c",), 10)
    hub.attach(late)
    assert late.closed == SHUTDOWN


class _Recorder:
    """A stream that can be written to directly (``client.Writer``), recording what it got."""

    def __init__(self) -> None:
        self.pushed: List[Message] = []
        self.beats = 0

    def push(self, message: Message) -> None:
        self.pushed.append(message)

    def beat(self) -> None:
        self.beats += 1


def test_a_waiting_client_is_written_directly_unless_the_pace_says_queue() -> None:
    """With nothing queued and nothing pending, a parked client's event goes to its writer;
    while direct writes cost too much (``Hub.pace``), to its queue, with a wake-up, so its own
    greenlet sends everything waiting in one write."""
    broker = MemoryBroker(10)
    hub = Hub(broker)
    client, writer = Client(("c",), 10), _Recorder()
    client.parked = writer
    hub.attach(client)
    first = broker.publish("c", b"data: 1\n")
    wait_until(lambda: writer.pushed)
    assert writer.pushed == [first] and not client.queue and not client.wake.is_set()
    hub.pace.direct = False
    hub.pace.retry_at = float("inf")
    second = broker.publish("c", b"data: 2\n")
    wait_until(lambda: client.queue)
    assert client.queue == [second] and client.wake.is_set() and writer.pushed == [first]
    # Direct again, but an event waits in the queue: a new one must queue behind it.
    hub.pace.direct = True
    third = broker.publish("c", b"data: 3\n")
    wait_until(lambda: len(client.queue) == 2)
    assert client.queue == [second, third] and writer.pushed == [first]
    hub.detach(client)  # the hub's ticker lives on: it must not write to this writer later
