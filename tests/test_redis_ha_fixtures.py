"""The Redis HA fixtures do what they say, against real processes: a 3+3 Redis Cluster and a
Sentinel group come up, fail over when a master dies, and cut replication loses acknowledged writes."""

from __future__ import annotations

import os
import time
from typing import Callable, List, TypeVar

import pytest
import redis
import redis.sentinel

from support.redis_ha import ClusterHA, RedisNode, SentinelHA, live_processes
from support.waiting import wait_until

# The redis_cluster_ha and redis_sentinel fixtures.
pytest_plugins = ["support.redis_ha"]

T = TypeVar("T")
KEY = "{ha}key"  # the hash tag keeps every key of a test on one master


def eventually(action: Callable[[], T], timeout: float = 10.0) -> T:
    """``action()`` once it stops raising redis errors (a client catching up with a failover)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except redis.RedisError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def test_node_lifecycle() -> None:
    node = RedisNode(name="lifecycle")
    directory, port = node.dir, node.port
    try:
        with node.client() as client:
            client.set("k", "v")
        node.pause()
        assert node.alive and not node.ping(timeout=0.2)  # hung: accepts, never answers
        node.resume()
        assert node.ping()
        node.pause(0.2)  # resumes by itself
        assert node.paused and not node.ping(timeout=0.1)
        wait_until(lambda: node.ping(timeout=0.1), 5, "the node did not resume")
        assert not node.paused
        node.kill()
        assert not node.alive and not node.ping(timeout=0.2) and node.down_since is not None
        node.restart()
        assert node.port == port and node.ping() and node.down_since is None
        node.stop()
        assert not node.alive
        # Another server took the port while the node was down: restarting says so, rather than
        # passing off the stranger as the node.
        stranger = RedisNode(port=port, name="stranger")
        try:
            with pytest.raises(RuntimeError, match=f"port taken by pid {stranger.pid}"):
                node.start()
        finally:
            stranger.cleanup()
    finally:
        node.cleanup()
    assert not directory.exists() and node.pid not in live_processes()


def test_cluster_comes_up_with_three_masters_and_three_replicas(redis_cluster_ha: ClusterHA) -> None:
    cluster = redis_cluster_ha
    masters, replicas = cluster.masters(), cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    assert {cluster.replica_of(m).port for m in masters} == {r.port for r in replicas}
    for node in cluster.nodes:
        assert "cluster_state:ok" in node.execute("CLUSTER", "INFO")
    for replica in replicas:
        assert replica.info("replication")["master_link_status"] == "up"
    client = redis.RedisCluster.from_url(cluster.url)
    try:
        for i in range(30):
            client.set(f"k{i}", i)
        assert client.get("k7") == b"7"
        node = client.get_node_from_key(KEY)  # type: ignore[no-untyped-call]
        assert node is not None and node.port == cluster.master_for_key(KEY).port
    finally:
        client.close()


def test_cluster_failover_promotes_the_replica(redis_cluster_ha: ClusterHA) -> None:
    cluster = redis_cluster_ha
    client = redis.RedisCluster.from_url(cluster.url)
    try:
        client.set(KEY, "before")
        master = cluster.master_for_key(KEY)
        replica = cluster.replica_of(master)
        assert master.execute("WAIT", 1, 2000) == 1  # replicated before the crash

        old = cluster.kill_master_for_key(KEY)
        assert old.port == master.port and not old.alive
        took = cluster.wait_failover(old, timeout=20)
        assert took < 20
        assert cluster.master_for_key(KEY).port == replica.port
        assert replica.role() == "master"
        assert len(cluster.masters()) == 3

        client.nodes_manager.initialize()  # refresh the slot map
        assert client.get(KEY) == b"before"
        client.set(KEY, "after")
        assert replica.execute("GET", KEY) == "after"

        cluster.restart(old)  # rejoins as a replica of the node that replaced it
        assert old.role() == "slave"
        assert cluster.replica_of(replica).port == old.port
        assert len(cluster.masters()) == 3 and len(cluster.replicas()) == 3
    finally:
        client.close()


def test_cluster_cut_replication_loses_acknowledged_writes(redis_cluster_ha: ClusterHA) -> None:
    cluster = redis_cluster_ha
    master = cluster.master_for_key(KEY)
    replica = cluster.replica_of(master)
    master.execute("SET", KEY, "replicated")
    assert master.execute("WAIT", 1, 2000) == 1

    cut = cluster.cut_replication(master)
    lost = [f"{{ha}}lost{i}" for i in range(20)]
    for key in lost:
        assert master.execute("SET", key, "acknowledged") is True
    assert master.execute("WAIT", 1, 300) == 0  # acknowledged, yet on no replica

    old = cluster.kill_master_for_key(KEY)
    cluster.wait_failover(old, timeout=20)
    assert cluster.master_for_key(KEY).port == replica.port
    assert replica.execute("GET", KEY) == "replicated"
    assert replica.execute("EXISTS", *lost) == 0  # every write made during the cut is gone
    cut.heal()
    assert replica.execute("CONFIG", "GET", "masteruser") == {"masteruser": ""}


def test_sentinel_failover_switches_the_primary(redis_sentinel: SentinelHA) -> None:
    group = redis_sentinel
    assert group.sentinel_url.startswith("redis+sentinel://127.0.0.1:")
    assert group.sentinel_url.endswith(f"/{group.master_name}/0")
    assert len(group.sentinels) == 3
    old_primary = group.primary()
    [replica] = group.replicas()
    sentinel = redis.sentinel.Sentinel(group.sentinels, socket_timeout=1.0)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(group.master_name, socket_timeout=1.0)  # type: ignore[no-untyped-call]
    try:
        discover = sentinel.discover_master  # untyped in redis-py
        assert discover(group.master_name) == old_primary.address  # type: ignore[no-untyped-call]
        client.set("k", "before")
        assert old_primary.execute("WAIT", 1, 2000) == 1

        killed = group.kill_primary()
        assert killed is old_primary
        took = group.wait_failover(killed, timeout=20)
        assert took < 20
        assert group.primary() is replica and replica.role() == "master"
        assert discover(group.master_name) == replica.address  # type: ignore[no-untyped-call]

        eventually(lambda: client.set("k", "after"))  # the pooled connection to the dead primary fails once
        assert replica.execute("GET", "k") == "after"

        group.restart(killed)
        assert killed.role() == "slave"
        assert killed.info("replication")["master_port"] == str(replica.port)
    finally:
        client.close()
        for s in sentinel.sentinels:
            s.close()


def test_sentinel_cut_replication_heals_itself_then_loses_acknowledged_writes(
    redis_sentinel: SentinelHA,
) -> None:
    group = redis_sentinel
    primary = group.primary()
    [replica] = group.replicas()

    # A timed cut: writes are not replicated meanwhile, then the replica catches up by itself.
    group.cut_replication(seconds=0.5)
    primary.execute("SET", "late", "1")
    assert primary.execute("WAIT", 1, 100) == 0
    assert primary.execute("WAIT", 1, 10000) == 1
    assert replica.execute("GET", "late") == "1"

    with group.cut_replication() as cut:
        assert cut.replica is replica
        assert primary.execute("SET", "lost", "acknowledged") is True
        assert primary.execute("WAIT", 1, 300) == 0
        old = group.kill_primary()
        group.wait_failover(old, timeout=20)
    assert group.primary() is replica
    assert replica.execute("GET", "late") == "1"
    assert replica.execute("EXISTS", "lost") == 0


def test_cleanup_kills_everything_after_a_failure_midway() -> None:
    pids: List[int] = []
    dirs = []
    with pytest.raises(RuntimeError, match="midway"):
        with SentinelHA() as group:
            nodes = group.data_nodes + group.sentinel_nodes
            pids = [n.pid for n in nodes if n.pid is not None]
            dirs = [n.dir for n in nodes]
            group.primary().pause()  # even a SIGSTOPped process
            raise RuntimeError("the test failed midway")
    assert len(pids) == 5
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(d.exists() for d in dirs)
    assert not set(pids) & set(live_processes())
