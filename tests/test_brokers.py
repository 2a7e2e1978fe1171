"""The broker contract: history, replay and live delivery, the same for every backend."""

from __future__ import annotations

import time
from typing import Iterator, List, Protocol

import pytest

from flask_sse_ext.brokers.base import Broker, Message, format_position, parse_position
from flask_sse_ext.brokers.memory import MemoryBroker
from flask_sse_ext.brokers.redis import RedisBroker
from support.redis import RedisServer
from support.waiting import wait_until


class MakeBroker(Protocol):
    def __call__(self, history_size: int = 5) -> Broker: ...


@pytest.fixture(params=["memory", "redis"])
def make_broker(request: pytest.FixtureRequest, prefix: str) -> Iterator[MakeBroker]:
    """A broker of each kind; every one made is closed after the test."""
    made: List[Broker] = []

    def make(history_size: int = 5) -> Broker:
        if request.param == "memory":
            broker: Broker = MemoryBroker(history_size)
        else:
            url = request.getfixturevalue("redis_server").url
            broker = RedisBroker.from_url(url, prefix=prefix, history_size=history_size)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def publish(broker: Broker, count: int, channel: str = "c", prefix: str = "e") -> List[Message]:
    return [broker.publish(channel, f"data: {prefix}{i}\n".encode()) for i in range(count)]


def test_positions_round_trip() -> None:
    assert parse_position("1700000000000-3") == (1700000000000, 3)
    assert format_position((1700000000000, 3)) == "1700000000000-3"
    for bad in ["", "1", "1-", "-1", "a-1", "1-2-3", " 1-2", "1-2 ", "1" * 20 + "-1"]:
        assert parse_position(bad) is None


def test_replay_after_generated_id(make_broker: MakeBroker) -> None:
    broker = make_broker()
    messages = publish(broker, 4)
    replay = broker.replay("c", messages[1].id)
    assert [m.id for m in replay.messages] == [m.id for m in messages[2:]]
    assert replay.head == messages[-1].position and not replay.missed
    assert broker.replay("c", messages[-1].id) == ([], messages[-1].position, False)


def test_replay_after_publisher_id_and_reused_id(make_broker: MakeBroker) -> None:
    broker = make_broker()
    broker.publish("c", b"data: a\n", "x")
    b = broker.publish("c", b"data: b\n", "y")
    c = broker.publish("c", b"data: c\n", "x")  # ids may repeat: the newest wins
    assert [m.body for m in broker.replay("c", "y").messages] == [c.body]
    assert broker.replay("c", "x").messages == []
    assert b.frame == b"data: b\nid: y\n\n"


def test_replay_by_position_tuple(make_broker: MakeBroker) -> None:
    broker = make_broker()
    messages = publish(broker, 3)
    assert broker.replay("c", messages[0].position).messages == messages[1:]


def test_expired_cursor_is_missed_and_starts_at_head(make_broker: MakeBroker) -> None:
    broker = make_broker(history_size=3)
    messages = publish(broker, 6)
    # messages[2] was the last dropped: after it, everything is still kept.
    assert broker.replay("c", messages[2].id) == (messages[3:], messages[-1].position, False)
    # After messages[1], messages[2] is gone: the client missed it.
    assert broker.replay("c", messages[1].id) == ([], messages[-1].position, True)


def test_unknown_and_future_cursors_are_missed(make_broker: MakeBroker) -> None:
    broker = make_broker()
    messages = publish(broker, 2)
    head = messages[-1].position
    assert broker.replay("c", "never-issued") == ([], head, True)
    future = format_position((head[0] + 10**6, 0))
    assert broker.replay("c", future) == ([], head, True)


def test_memory_broker_cursor_from_before_it_started_is_missed() -> None:
    """A restart lost the in-process history: an older cursor cannot be served."""
    broker = MemoryBroker(5)
    messages = publish(broker, 2)
    assert broker.replay("c", "1-0") == ([], messages[-1].position, True)


def test_well_formed_unknown_positions_are_missed_on_every_broker(make_broker: MakeBroker) -> None:
    """Regression: ``Last-Event-ID: 1-0`` replayed everything on Redis but was missed on the
    in-process broker, and a position between two events (one no broker handed out) replayed on
    the in-process broker but was missed on Redis. The rule for both: a position is a cursor
    only if the broker handed it out (an event's, or a head it reported) and still holds what
    follows; any other well-formed id is missed, and the stream starts at the head."""
    broker = make_broker()
    messages = [broker.publish("c", b"data: a\n")]

    def next_millisecond() -> bool:  # two events in different milliseconds, a gap between
        messages.append(broker.publish("c", b"data: b\n"))
        return messages[-1].position[0] > messages[-2].position[0]

    wait_until(next_millisecond, interval=0.001)
    before, head = messages[-2].position, messages[-1].position
    between = format_position((before[0], before[1] + 10**6))
    assert before < parse_position(between) < head  # type: ignore[operator]
    for cursor in ["1-0", "0-1", between, format_position((head[0] + 1, 0))]:
        assert broker.replay("c", cursor) == ([], head, True), cursor
    assert broker.replay("c", format_position(before)).messages == [messages[-1]]


def test_zero_position_replays_whole_history_only_where_the_broker_holds_it(make_broker: MakeBroker) -> None:
    """``0-0`` asks for a channel's whole history. Redis hands it out as the head of a channel
    that never had an event and replays everything while nothing was trimmed; the in-process
    broker holds nothing from before its process started, so for it ``0-0`` is missed."""
    broker = make_broker()
    messages = publish(broker, 2)
    replay = broker.replay("c", "0-0")
    if isinstance(broker, MemoryBroker):
        assert replay == ([], messages[-1].position, True)
    else:
        assert replay == (messages, messages[-1].position, False)
        publish(broker, 5)  # history of 5: trimmed now
        assert broker.replay("c", "0-0").missed


def test_empty_channel_head_is_a_usable_cursor(make_broker: MakeBroker) -> None:
    broker = make_broker()
    head = broker.replay("quiet", None).head
    assert broker.replay("quiet", head) == ([], head, False)
    later = broker.publish("quiet", b"data: now\n")
    assert broker.replay("quiet", head).messages == [later]


def test_evicted_publisher_id_is_forgotten(make_broker: MakeBroker) -> None:
    broker = make_broker(history_size=2)
    broker.publish("c", b"data: a\n", "a")
    publish(broker, 3)
    assert broker.replay("c", "a").missed


def _same(a: List[Message], b: List[Message]) -> bool:
    return [(m.channel, m.position, m.frame) for m in a] == [(m.channel, m.position, m.frame) for m in b]


def test_live_delivery_only_for_subscribed_channels(make_broker: MakeBroker) -> None:
    broker = make_broker()
    got: List[Message] = []
    broker.start(got.append, lambda channel: None)
    broker.subscribe("on")
    broker.ready(["on"])
    assert broker.subscriptions == 1
    on = broker.publish("on", b"data: 1\n")
    broker.publish("off", b"data: 2\n")
    wait_until(lambda: len(got) >= 1)
    broker.unsubscribe("on")
    broker.publish("on", b"data: 3\n")
    marker = broker.publish("other", b"data: 4\n")
    broker.subscribe("other")
    broker.ready(["other"])
    last = broker.publish("other", b"data: 5\n")
    wait_until(lambda: len(got) >= 2)
    assert _same(got, [on, last]) and broker.subscriptions == 1
    assert marker.position < last.position


def test_zero_history_keeps_nothing_but_delivers(make_broker: MakeBroker) -> None:
    broker = make_broker(history_size=0)
    got: List[Message] = []
    broker.start(got.append, lambda channel: None)
    broker.subscribe("c")
    broker.ready(["c"])
    messages = publish(broker, 2)
    wait_until(lambda: len(got) == 2)
    assert _same(got, messages)
    assert broker.replay("c", messages[0].id).missed


def test_redis_catch_up_that_cannot_reach_back_resyncs(redis_server: RedisServer, prefix: str) -> None:
    """Regression: after a reconnect, a gap larger than the history was skipped silently."""
    broker = RedisBroker.from_url(redis_server.url, prefix=prefix, history_size=2)
    other = RedisBroker.from_url(redis_server.url, prefix=prefix, history_size=2)
    got: List[Message] = []
    lost: List[str] = []
    try:
        broker.start(got.append, lost.append)
        broker.subscribe("c")
        broker.ready(["c"])
        broker.replay("c", None)  # a stream reads the head: where catch-up would start
        first = other.publish("c", b"data: 0\n")
        wait_until(lambda: len(got) == 1)
        admin = redis_server.client()
        admin.client_kill_filter(_type="pubsub")
        for i in range(5):
            other.publish("c", b"data: %d\n" % (i + 1))
        wait_until(lambda: lost == ["c"])
        assert got == [first]  # nothing from the gap was delivered out of order
        admin.close()
    finally:
        broker.close()
        other.close()


def test_redis_new_subscription_knows_its_live_position_without_a_history_read(
    redis_server: RedisServer, prefix: str
) -> None:
    """The listener reads the heads of newly confirmed channels in one batch, so a new stream
    with no cursor starts where live delivery stands without a history read of its own."""
    broker = RedisBroker.from_url(redis_server.url, prefix=prefix)
    got: List[Message] = []
    try:
        broker.start(got.append, lambda channel: None)
        before = [broker.publish(c, b"data: old\n") for c in ("a", "b")]
        for channel in ("a", "b", "empty"):
            broker.subscribe(channel)
        broker.ready(["a", "b", "empty"])
        assert broker.live_position("a") == before[0].position
        assert broker.live_position("b") == before[1].position
        assert broker.live_position("empty") == (0, 0)
        after = broker.publish("a", b"data: new\n")
        wait_until(lambda: len(got) == 1)
        assert _same(got, [after]) and broker.live_position("a") == after.position
    finally:
        broker.close()


def test_claim_once_is_won_once_until_it_expires(make_broker: MakeBroker) -> None:
    """The single use of stream tickets: one claim wins, every other loses, until the ttl."""
    broker, other = make_broker(), make_broker()  # two processes sharing one backend, for Redis
    assert broker.claim_once("ticket:a", 0.3)
    assert not broker.claim_once("ticket:a", 0.3)
    assert broker.claim_once("ticket:b", 0.3)
    if broker.shared:
        assert not other.claim_once("ticket:a", 0.3)
    made = time.monotonic()
    wait_until(lambda: time.monotonic() > made + 0.35)
    assert broker.claim_once("ticket:a", 0.3)


def test_memory_claims_stay_single_use_among_thousands_of_live_ones() -> None:
    """Many live claims (more than the 1,024 after which the old code rebuilt its table on
    every call): each stays single-use until its own expiry, and an expired one is free again,
    whatever order the claims were made and expire in."""
    broker = MemoryBroker(5)
    lasting = [f"ticket:long-{n}" for n in range(3000)]
    brief = [f"ticket:short-{n}" for n in range(3000)]
    for long_key, short_key in zip(lasting, brief):
        assert broker.claim_once(long_key, 60)
        assert broker.claim_once(short_key, 0.3)
    assert not any(broker.claim_once(key, 60) for key in lasting + brief)
    made = time.monotonic()
    wait_until(lambda: time.monotonic() > made + 0.35)
    assert not any(broker.claim_once(key, 60) for key in lasting)
    # Expired: claimable again, once, now with the long ttl.
    assert all(broker.claim_once(key, 60) for key in brief)
    assert not any(broker.claim_once(key, 0.1) for key in brief)
    # Re-claimed keys keep their new expiry when their first one's time comes and goes.
    made = time.monotonic()
    wait_until(lambda: time.monotonic() > made + 0.35)
    assert broker.claim_once("ticket:another", 0.1)
    assert not any(broker.claim_once(key, 60) for key in brief)
