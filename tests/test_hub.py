"""Fan-out: one encoded message shared by all clients, bounded queues, subscriptions."""

from __future__ import annotations

import math
import socket
from typing import List, Tuple

import pytest

from flask_sse_ext.brokers.base import Message
from flask_sse_ext.brokers.memory import MemoryBroker
from flask_sse_ext.client import LAGGED, SHUTDOWN, Client
from flask_sse_ext.hub import Hub
from flask_sse_ext.sendwatch import SendDeadline, check_period
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


def _stalled_connection() -> Tuple[socket.socket, socket.socket]:
    """A loopback connection whose reading end (first) has a 4 KB receive buffer, and the
    writing end (second), non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.connect(listener.getsockname())
        writer, _ = listener.accept()
    writer.setblocking(False)
    return peer, writer


def _fill(sock: socket.socket) -> int:
    """Send until the kernel takes no more; the bytes sent."""
    sent = 0
    with pytest.raises(BlockingIOError):
        while True:
            sent += sock.send(b"x" * 65536)
    return sent


class _InOrder:
    """A direct writer that records, in ``order``, which client each event was written to."""

    def __init__(self, order: List[int], number: int) -> None:
        self.order = order
        self.number = number

    def push(self, message: Message) -> None:
        self.order.append(self.number)

    def beat(self) -> None:
        pass


def test_the_fan_out_writes_clients_in_the_order_they_came_and_those_behind_last() -> None:
    """Writing an event into the kernel buffers of clients that stopped reading takes time (a
    thousand of them, 16 KB events: 14 to 35 ms in bench/stalled.py), so the fan-out writes to a channel's clients
    in the order they came, and moves last one whose sent data the ticker finds still
    unacknowledged from one look to the next: the readers that keep up go first
    (``bench/stalled.py``). Real sockets: the stalled one has a full send queue."""
    broker = MemoryBroker(100)
    hub = Hub(broker, heartbeat=0.2, send_timeout=60.0)  # looks every 0.1 s, cuts none here
    peer, stalled = _stalled_connection()
    with peer, stalled:
        order: List[int] = []
        clients = []
        for number in range(10):
            client = Client(("c",), 100, sock=stalled if number == 3 else None)
            client.parked = _InOrder(order, number)
            hub.attach(client)
            clients.append(client)

        def fan_out() -> List[int]:
            order.clear()
            broker.publish("c", b"data: x\n")
            wait_until(lambda: len(order) == len(clients))  # the broker's dispatcher delivers
            return order[:]

        assert fan_out() == list(range(10))
        sent = _fill(stalled)
        wait_until(lambda: clients[3].behind, message="the ticker never saw the stalled client")
        assert fan_out() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 3]
        late = Client(("c",), 100)
        late.parked = _InOrder(order, 10)
        hub.attach(late)
        clients.append(late)
        assert fan_out() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 3, 10]  # a new client after it

        received = 0
        while received < sent:
            received += len(peer.recv(1 << 20))
        wait_until(lambda: not clients[3].behind, message="the ticker never saw it catch up")
        assert clients[3].closed is None  # slow is not cut before the send timeout
        assert fan_out() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 3, 10]  # caught up: no move
        for client in clients:
            hub.detach(client)


def test_a_send_deadline_runs_from_the_first_look_that_sees_data_waiting() -> None:
    """``SendDeadline`` on a real socket: ``passed`` turns true ``timeout`` after the look that
    first saw data unacknowledged, at ``due`` (the hub's ticker scans then, not at its next
    regular look), unless it drains; ``behind`` from the next look on. A socket the kernel no
    longer tells about (closed) keeps no wait, so no scan is ever due for it."""
    peer, writer = _stalled_connection()
    with peer, writer:
        deadline = SendDeadline(10.0)
        assert not deadline.passed(writer, 100.0) and deadline.due() == math.inf
        sent = _fill(writer)
        assert not deadline.passed(writer, 100.0)
        assert deadline.due() == 110.0 and not deadline.behind(100.0)
        assert not deadline.passed(writer, 109.9) and deadline.behind(109.9)
        assert deadline.passed(writer, 110.0)
        received = 0
        while received < sent:
            received += len(peer.recv(1 << 20))
        wait_until(lambda: not deadline.passed(writer, 111.0) and deadline.due() == math.inf)
        assert not deadline.behind(111.0)
        _fill(writer)
        assert not deadline.passed(writer, 120.0) and deadline.due() == 130.0
    assert not deadline.passed(writer, 125.0)  # closed: the kernel does not tell
    assert deadline.due() == math.inf


def test_a_direct_stream_checks_its_send_deadline_at_least_every_half_second() -> None:
    """``watch_send`` (direct and resumable streams) checks eight times per timeout, but at
    least every 0.5 s: a cut comes at most two checks late, one second with the default 10 s
    (not 2.5 s, with a check every 1.25 s)."""
    assert check_period(10.0) == 0.5
    assert check_period(2.0) == 0.25
