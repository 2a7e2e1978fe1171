"""Several hosts on a Redis Cluster or Sentinel that fails over: nothing is lost silently.

Real processes throughout: a 3+3 Redis Cluster or a primary, a replica and three sentinels;
two gunicorn "hosts" of two gevent workers each behind nginx (round-robin); clients that read
the stream through nginx and resume with ``Last-Event-ID`` as a browser does; a publisher in
this process. Nodes and hosts are killed with SIGKILL while events flow.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import pytest

from flask_sse_ext import MISSED_EVENT, BrokerError, Publisher
from flask_sse_ext.brokers.redis import RedisBroker
from support.client import RawStream, request
from support.nginx import NginxServer
from support.parser import ParsedEvent
from support.paths import ROOT
from support.redis import RedisServer
from support.redis_ha import ClusterHA, SentinelHA
from support.server import Server, StartServer
from support.waiting import wait_until

pytestmark = pytest.mark.fault

CHANNELS = [f"room-{n}" for n in range(20)]
PREFIX = "sse"
Topology = Union[ClusterHA, SentinelHA]


class Reader(threading.Thread):
    """A client on one channel through nginx that reconnects with ``Last-Event-ID`` whenever
    its stream ends or breaks, as ``EventSource`` does. It keeps every event and when it came."""

    def __init__(self, port: int, channel: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.channel = channel
        self.received: List[Tuple[float, ParsedEvent]] = []
        self.last_id: Optional[str] = None
        self.connected = threading.Event()
        self.connects = 0
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            headers = {} if self.last_id is None else {"Last-Event-ID": self.last_id}
            try:
                stream = RawStream(self.port, f"/stream?channel={self.channel}", headers, timeout=5)
            except (OSError, TimeoutError, EOFError, ValueError):
                time.sleep(0.2)  # the client's own retry policy, as SSE_RETRY tells a browser
                continue
            self.connects += 1
            try:
                if stream.status == 200:
                    self._read(stream)
            except (OSError, TimeoutError, EOFError, ValueError):
                pass
            finally:
                stream.close()
            time.sleep(0.2)

    def _read(self, stream: RawStream) -> None:
        while not self.stopping:
            chunk = stream.chunk(timeout=5)
            if chunk is None:
                return
            self.connected.set()
            for event in stream.parser.feed(chunk):
                self.received.append((time.monotonic(), event))
                if event.last_event_id:
                    self.last_id = event.last_event_id

    def events_after(self, moment: float) -> int:
        return sum(1 for at, event in self.received if at > moment and event.type != MISSED_EVENT)


class Publishing(threading.Thread):
    """Publishes ``n`` to ``CHANNELS[n % 20]`` at about 30 events a second; keeps what each
    channel acknowledged, in order, and how many publishes Redis refused."""

    def __init__(self, publisher: Publisher) -> None:
        super().__init__(daemon=True)
        self.publisher = publisher
        self.acked: Dict[str, List[str]] = defaultdict(list)
        self.refused = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.wait(1 / 30):
            channel = CHANNELS[n % len(CHANNELS)]
            try:
                self.publisher.publish(str(n), channel=channel)
                self.acked[channel].append(str(n))
            except BrokerError:
                self.refused += 1
            n += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def audit(reader: Reader, acked: List[str]) -> Dict[str, int]:
    """What ``reader`` got against what its channel acknowledged: each acknowledged event must
    arrive once, in order, or fall in a gap that an ``sse.missed`` announced."""
    order = {data: n for n, data in enumerate(acked)}
    counts = {"delivered": 0, "covered": 0, "silent": 0, "duplicates": 0, "disorder": 0, "missed": 0}
    seen = set()
    last, announced = -1, False
    for _, event in reader.received:
        if event.type == MISSED_EVENT:
            counts["missed"] += 1
            announced = True
            continue
        if event.data in seen:
            counts["duplicates"] += 1
            continue
        seen.add(event.data)
        n = order.get(event.data)
        if n is None:
            continue  # a publish that raised, but reached Redis (its answer was lost)
        if n < last:
            counts["disorder"] += 1
            continue
        counts["delivered"] += 1
        counts["covered" if announced else "silent"] += n - last - 1
        last, announced = n, False
    counts["covered" if announced else "silent"] += len(acked) - 1 - last
    return counts


def nginx_for(hosts: List[Server], tmp_path: Path) -> NginxServer:
    """nginx with the project's site file, round-robin over every host."""
    text = (ROOT / "docs" / "nginx.conf").read_text()
    extra = "".join(f"    server 127.0.0.1:{host.port};\n" for host in hosts[1:])
    text = text.replace("    server 127.0.0.1:8000;", "    server 127.0.0.1:8000;\n" + extra, 1)
    site = tmp_path / "site.conf"
    site.write_text(text)
    return NginxServer(hosts[0].port, site=site)


def kill_host(host: Server) -> None:
    """SIGKILL a whole host: its workers and its master, as a machine that dies."""
    for pid in host.children():
        os.kill(pid, signal.SIGKILL)
    host.proc.kill()
    host.proc.wait()


def worker_connections(topology: Topology, exclude: int) -> Dict[Tuple[int, int], int]:
    """Connections named ``sse:<pid>`` per (worker pid, node port), on every live node."""
    nodes = topology.nodes if isinstance(topology, ClusterHA) else topology.data_nodes
    counts: Dict[Tuple[int, int], int] = defaultdict(int)
    for node in nodes:
        if not node.responsive:
            continue
        for client in node.client().client_list():
            name = client.get("name", "")
            if name.startswith(PREFIX + ":") and name != f"{PREFIX}:{exclude}":
                counts[(int(name.split(":")[1]), node.port)] += 1
    return counts


def topology_config(topology: Topology) -> Dict[str, Any]:
    if isinstance(topology, ClusterHA):
        return {"SSE_REDIS_URL": topology.url, "SSE_REDIS_CLUSTER": True}
    return {"SSE_REDIS_URL": topology.sentinel_url}


def publisher_for(topology: Topology, **options: Any) -> Publisher:
    if isinstance(topology, ClusterHA):
        return Publisher(topology.url, cluster=True, prefix=PREFIX, **options)
    return Publisher(topology.sentinel_url, prefix=PREFIX, **options)


def fail_over(topology: Topology) -> float:
    """Kill the primary that serves ``CHANNELS[0]`` and wait until its replica took over."""
    if isinstance(topology, ClusterHA):
        victim = topology.kill_master_for_key("sse:h:{%s}" % CHANNELS[0])
    else:
        victim = topology.kill_primary()
    return topology.wait_failover(victim)


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Topology:
    fixture = "redis_cluster_ha" if request.param == "cluster" else "redis_sentinel"
    value: Topology = request.getfixturevalue(fixture)
    return value


def start_hosts(start_server: StartServer, config: Mapping[str, Any]) -> List[Server]:
    base = {"SSE_HEARTBEAT_INTERVAL": 1.0, "SSE_RETRY": 200, **config}
    return [start_server(config=base, workers=2, args=["-t", "10"]) for _ in range(2)]


def test_failover_then_a_dead_host_loses_nothing_silently(
    topology: Topology, start_server: StartServer, tmp_path: Path
) -> None:
    hosts = start_hosts(start_server, topology_config(topology))
    nginx = nginx_for(hosts, tmp_path)
    readers = [Reader(nginx.port, CHANNELS[n % len(CHANNELS)]) for n in range(2 * len(CHANNELS))]
    publishing = Publishing(publisher_for(topology))
    try:
        for reader in readers:
            reader.start()
        wait_until(
            lambda: all(r.connected.is_set() for r in readers), timeout=20, message="streams did not open"
        )
        publishing.start()
        wait_until(lambda: all(len(publishing.acked[c]) >= 5 for c in CHANNELS), timeout=20)

        failover = fail_over(topology)
        healed = time.monotonic()
        # Every client hears live events again soon after the new primary took over.
        wait_until(
            lambda: all(r.events_after(healed) for r in readers),
            timeout=10,
            message=lambda: [r.channel for r in readers if not r.events_after(healed)],
        )
        back = time.monotonic() - healed

        dead_workers = hosts[1].children()
        kill_host(hosts[1])
        killed = time.monotonic()
        wait_until(lambda: all(r.events_after(killed) for r in readers), timeout=15)
        moved = time.monotonic() - killed

        publishing.stop()

        def caught_up() -> bool:
            return all(audit(r, publishing.acked[r.channel])["silent"] == 0 for r in readers)

        wait_until(
            caught_up, timeout=15, message=lambda: [audit(r, publishing.acked[r.channel]) for r in readers]
        )
    finally:
        publishing.stopping.set()
        for reader in readers:
            reader.stopping = True
        nginx.cleanup()

    totals: Dict[str, int] = defaultdict(int)
    for reader in readers:
        counts = audit(reader, publishing.acked[reader.channel])
        assert counts["silent"] == 0 and counts["duplicates"] == 0 and counts["disorder"] == 0, counts
        for key, value in counts.items():
            totals[key] += value
    survivor = hosts[0]
    log = survivor.log()
    assert "WORKER TIMEOUT" not in log and "Traceback" not in log, log
    workers = survivor.children()
    assert len(workers) == 2, log
    for _ in range(4):  # every worker answers at once
        started = time.monotonic()
        assert request(survivor.port, "GET", "/stats")[0] == 200
        assert time.monotonic() - started < 1.0
    connections = worker_connections(topology, exclude=os.getpid())
    assert connections and max(connections.values()) <= 3, connections
    assert {pid for pid, _ in connections} <= set(workers) | set(dead_workers)
    print(
        f"\n{type(topology).__name__}: failover in {failover:.1f} s; every client had live events "
        f"again {back:.1f} s after it, and {moved:.1f} s after a host died; "
        f"{sum(len(v) for v in publishing.acked.values())} acknowledged ({publishing.refused} refused "
        f"during the failover), per client: {dict(totals)}; at most {max(connections.values())} "
        f"connections per worker per node"
    )


def test_cross_host_replay_is_exact_before_and_after_a_failover(
    topology: Topology, start_server: StartServer
) -> None:
    host_a, host_b = start_hosts(start_server, topology_config(topology))
    publisher = publisher_for(topology)
    channel = CHANNELS[0]
    try:
        for phase in ("before", "after"):
            stream = RawStream(host_a.port, f"/stream?channel={channel}")
            stream.opening(retry=200)
            first = publisher.publish(f"{phase}-0", channel=channel)
            assert [e.data for e in stream.events(1)] == [f"{phase}-0"]
            stream.close()
            later = [f"{phase}-{n}" for n in range(1, 4)]
            for data in later:
                publisher.publish(data, channel=channel)
            again = RawStream(host_b.port, f"/stream?channel={channel}", {"Last-Event-ID": first})
            again.opening(retry=200)
            assert [e.data for e in again.events(3)] == later
            assert again.idle(0.3) == [] or all(c == b":\n" for c in again.idle(0.3))
            again.close()
            if phase == "before":
                fail_over(topology)
                # Publishing works again once the client has learned the new layout.
                wait_until(lambda: _publishes(publisher, channel), timeout=15)
    finally:
        publisher.close()


def _publishes(publisher: Publisher, channel: str) -> bool:
    try:
        publisher.publish("probe", channel=channel)
    except BrokerError:
        return False
    return True


def test_min_replicas_keeps_every_acknowledged_event_across_a_failover(redis_cluster_ha: ClusterHA) -> None:
    """With ``SSE_REDIS_MIN_REPLICAS = 1`` a publish that the replica did not confirm raises, so
    what was acknowledged survives the primary's death; without it, acknowledged events can
    vanish, and a client whose cursor vanished with them is told (``missed``)."""
    cluster = redis_cluster_ha
    channel = "orders"
    key = "sse:h:{%s}" % channel
    safe = Publisher(cluster.url, cluster=True, prefix=PREFIX, min_replicas=1, replica_timeout=1.0)
    loose = Publisher(cluster.url, cluster=True, prefix=PREFIX)
    acked: List[str] = []
    refused = 0

    def confirmed() -> Optional[str]:
        try:
            return safe.publish("safe-0", channel=channel)
        except BrokerError:
            return None  # the replica is still syncing (an earlier test's failover): not yet

    try:
        # Regression (flaky): the first publishes ran while a replica left by an earlier test
        # was still syncing, and "no replica acknowledged" failed the test before the cut.
        acked.append(wait_until(confirmed, timeout=20, message="no replica ever confirmed a publish"))
        for n in range(1, 5):
            acked.append(safe.publish(f"safe-{n}", channel=channel))
        master = cluster.master_for_key(key)
        cut = cluster.cut_replication(master)
        for n in range(5, 10):
            try:
                acked.append(safe.publish(f"safe-{n}", channel=channel))
            except BrokerError as exc:
                assert "replicas" in str(exc)
                refused += 1
        lost_id = loose.publish("loose", channel=channel)  # acknowledged, not replicated
        master.kill()
        cut.heal(wait=False)
        cluster.wait_failover(master)
        broker = RedisBroker.from_url(cluster.url, cluster=True, prefix=PREFIX)
        try:
            kept = wait_until(lambda: _history(broker, channel), timeout=15)
            assert set(acked) <= set(kept), (acked, kept)
            assert lost_id not in kept
            assert broker.replay(channel, lost_id).missed
        finally:
            broker.close()
    finally:
        safe.close()
        loose.close()
    assert refused == 5


def _history(broker: RedisBroker, channel: str) -> Optional[List[str]]:
    try:
        replay = broker.replay(channel, "0-0")
    except BrokerError:
        return None
    return [message.id for message in replay.messages]


def test_an_idle_cluster_worker_sleeps_and_answers(
    redis_cluster_ha: ClusterHA, start_server: StartServer
) -> None:
    """Regression: a worker whose last stream closed spun at a full core on a cluster."""
    host = start_server(config=topology_config(redis_cluster_ha), workers=1)
    stream = RawStream(host.port, "/stream?channel=idle")
    stream.opening()
    stream.close()
    wait_until(lambda: host.stats()["streams"] == 0 and host.stats()["subscriptions"] == 0)
    [worker] = host.children()
    before = _cpu_seconds(worker)
    time.sleep(5)  # the measured interval itself
    used = _cpu_seconds(worker) - before
    assert used < 0.05, f"an idle worker used {used:.3f} s of CPU in 5 s (1 % is 0.05 s)"
    started = time.monotonic()
    assert request(host.port, "GET", "/stats")[0] == 200
    assert time.monotonic() - started < 0.5


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_presence_counts_streams_across_hosts_and_drops_a_dead_host(
    redis_server: RedisServer, start_server: StartServer, prefix: str
) -> None:
    config = {"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix}
    host_a, host_b = (start_server(config=config) for _ in range(2))
    streams = [
        RawStream(host.port, "/stream?channel=lobby") for host in (host_a, host_a, host_a, host_b, host_b)
    ]
    for stream in streams:
        stream.opening()
    broker = RedisBroker.from_url(redis_server.url, prefix=prefix)
    try:
        wait_until(
            lambda: broker.presence("lobby") == 5, timeout=15, message=lambda: broker.presence("lobby")
        )
        assert broker.presence("elsewhere") == 0
        kill_host(host_b)
        wait_until(
            lambda: broker.presence("lobby") == 3, timeout=25, message=lambda: broker.presence("lobby")
        )
        assert broker.processes() == 1
    finally:
        broker.close()
