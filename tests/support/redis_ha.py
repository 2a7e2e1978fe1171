"""Real Redis high-availability topologies for tests: a six-node Redis Cluster and a Sentinel group.

Everything here runs real ``redis-server`` processes on 127.0.0.1, each in a temporary directory of
its own, and waits by condition (polling with a deadline), never by fixed sleeps:

* :class:`RedisNode`: one ``redis-server`` (or sentinel) process that a test can kill, stop, restart,
  pause (SIGSTOP, a hung node) and resume.
* :class:`ClusterHA`: 3 masters + 3 replicas made with ``redis-cli --cluster create``.
* :class:`SentinelHA`: a primary, a replica and three sentinels.
* :class:`ReplicationCut`: what ``cut_replication`` returns; makes a replica silently fall behind so
  that writes acknowledged by its master are lost when the master dies and the replica is promoted.

Every process is tracked: ``cleanup()`` (and the ``redis_cluster_ha`` / ``redis_sentinel`` fixtures,
and, as a last resort, an ``atexit`` hook) SIGKILLs whatever is still running and removes the
directories, even when a test fails halfway through a failover.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence, Set, Tuple

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from support.ports import free_cluster_port, free_port
from support.waiting import wait_until

HOST = "127.0.0.1"
_RANDOM = random.SystemRandom()  # independent of any seeding the tests do

# --------------------------------------------------------------------------------------------------
# Process and directory tracking: whatever a test leaves behind is killed at exit at the latest.

_LOCK = threading.Lock()
_PROCESSES: Dict[int, "subprocess.Popen[bytes]"] = {}
_DIRS: Set[Path] = set()


def _track(proc: "subprocess.Popen[bytes]") -> None:
    with _LOCK:
        _PROCESSES[proc.pid] = proc


def _untrack(proc: "subprocess.Popen[bytes]") -> None:
    with _LOCK:
        _PROCESSES.pop(proc.pid, None)


def _reap_everything() -> None:
    with _LOCK:
        procs, dirs = list(_PROCESSES.values()), list(_DIRS)
        _PROCESSES.clear()
        _DIRS.clear()
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignored
            pass
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_reap_everything)


def live_processes() -> List[int]:
    """The pids of every process this module started and has not yet reaped (for leak checks)."""
    with _LOCK:
        return [pid for pid, proc in _PROCESSES.items() if proc.poll() is None]


# --------------------------------------------------------------------------------------------------
# Ports that stay ours across a restart.


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_port(cluster: bool = False) -> int:
    """A free loopback port (with ``cluster``, one whose bus port, 10000 higher, is free too).

    Chosen at random *below* the kernel's ephemeral range: a node that is killed and restarted
    must get its port back, and in between, any ``bind(0)`` (``free_port()`` of a concurrent test
    session) or outgoing connection may be handed a just-freed ephemeral port. Falls back on
    ``support.ports`` when there is no room below the ephemeral range.
    """
    top = _ephemeral_low() - (10000 if cluster else 0)
    if top - 10000 >= 1000:
        for _ in range(200):
            port = _RANDOM.randrange(10000, top)
            if _bindable(port) and (not cluster or _bindable(port + 10000)):
                return port
    return free_cluster_port() if cluster else free_port()


# --------------------------------------------------------------------------------------------------
# Waiting and probing.


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _probe(port: int, timeout: float = 0.5) -> redis.Redis:
    """A client for one quick question: short timeouts, no retries, ``str`` replies."""
    return redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_no_retry(),
        decode_responses=True,
    )


def _pairs(reply: Any) -> Dict[str, str]:
    """A RESP2 flat ``[k, v, k, v]`` list (or a RESP3 map) as a dict of strings."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    items = list(reply)
    return {str(k): str(v) for k, v in zip(items[::2], items[1::2])}


def _parse_info(text: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------------------------------
# One process.


class RedisNode:
    """One ``redis-server`` process on a free loopback port, in a temporary directory of its own.

    ``extra`` are more command-line arguments (``"--cluster-enabled", "yes"``); ``config`` lines are
    written to the node's own config file, which the server may rewrite (``CONFIG REWRITE``,
    Sentinel's reconfiguration), so they survive a :meth:`restart` as the server left them. No
    persistence by default (``--save '' --appendonly no``); ``--repl-diskless-sync-delay 0`` so a
    replica syncs at once. With ``sentinel=True`` it runs ``redis-server <conf> --sentinel``.

    :meth:`kill` is SIGKILL (a crash), :meth:`stop` SIGTERM (a clean shutdown), :meth:`pause`
    SIGSTOP (a hung node: its sockets still accept connections, nothing answers).
    """

    def __init__(
        self,
        *extra: str,
        port: Optional[int] = None,
        config: Sequence[str] = (),
        sentinel: bool = False,
        cluster: bool = False,
        name: str = "redis",
        start: bool = True,
        start_timeout: float = 10.0,
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH: apt-get install redis-server")
        self.name = name
        self.sentinel = sentinel
        self._cluster_port = cluster
        self._port_given = port is not None
        self.port = port if port is not None else self._new_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-ha-{name}-"))
        with _LOCK:
            _DIRS.add(self.dir)
        self.config_path = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.config_path.write_text("".join(f"{line}\n" for line in config))
        self.extra: Tuple[str, ...] = tuple(extra)
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.paused = False
        #: ``time.monotonic()`` when the node last went down (kill/stop/pause), else None.
        self.down_since: Optional[float] = None
        self._resume_timer: Optional[threading.Timer] = None
        if start:
            self._first_start(start_timeout)

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("up" if self.alive else "down")
        return f"<RedisNode {self.name} {HOST}:{self.port} {state}>"

    def _new_port(self) -> int:
        return pick_port(cluster=self._cluster_port)

    # ---------------------------------------------------------------- addresses and state

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def address(self) -> Tuple[str, int]:
        return (HOST, self.port)

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        """The process exists (it may be paused)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def responsive(self) -> bool:
        """Alive and not paused: worth asking a question."""
        return self.alive and not self.paused

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def command(self, *once: str) -> List[str]:
        if self.sentinel:
            base = ["redis-server", str(self.config_path), "--sentinel"]
            defaults: List[str] = []
        else:
            base = ["redis-server", str(self.config_path)]
            defaults = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        return [
            *base,
            *("--port", str(self.port), "--bind", HOST, "--dir", str(self.dir)),
            *defaults,
            *self.extra,
            *once,
        ]

    # ---------------------------------------------------------------- lifecycle

    def _first_start(self, timeout: float) -> None:
        for attempt in range(4):
            try:
                self.start(timeout=timeout)
                return
            except RuntimeError:
                # Another process may have taken the port between free_port() and the bind.
                if self._port_given or attempt == 3 or "Address already in use" not in self.log_tail():
                    raise
                self.port = self._new_port()

    def start(self, *once: str, timeout: float = 10.0) -> None:
        """Start the process (``once``: extra arguments for this start only) and wait until it
        answers on its port: *it*, checked by the pid in ``INFO server``, not a stranger that took
        the port meanwhile (then it fails: the restarted process could not bind)."""
        if self.alive:
            raise RuntimeError(f"{self!r} is already running")
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self.command(*once), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        _track(proc)
        self.proc, self.paused = proc, False
        try:
            wait_until(
                lambda: proc.poll() is not None or self._serves(proc), timeout, f"{self!r} did not answer"
            )
            if proc.poll() is not None:
                stranger = self._server_pid()
                taken = f" (port taken by pid {stranger})" if stranger else ""
                raise RuntimeError(f"{self!r} exited with {proc.returncode}{taken}:\n{self.log_tail()}")
        except BaseException:
            self.kill()
            raise
        self.down_since = None

    def _reap(self, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        _untrack(proc)

    def _cancel_resume(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None

    def kill(self) -> None:
        """SIGKILL (a crash) and wait until the process is gone. A no-op if it is not running."""
        self._cancel_resume()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                if self.down_since is None:
                    self.down_since = time.monotonic()
            self._reap(10)
        self.paused = False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown); SIGKILL if it has not exited after ``timeout``."""
        self._cancel_resume()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                if self.paused:
                    self.proc.send_signal(signal.SIGCONT)  # a stopped process handles SIGTERM only then
                if self.down_since is None:
                    self.down_since = time.monotonic()
            self._reap(timeout)
        self.paused = False

    def restart(self, *once: str, timeout: float = 10.0) -> None:
        """Stop (SIGTERM) if running, and start again on the same port, in the same directory."""
        self.stop()
        self.start(*once, timeout=timeout)

    def pause(self, seconds: Optional[float] = None) -> None:
        """SIGSTOP: the node hangs (connections are accepted, nothing is answered, no cluster bus
        or replication traffic). With ``seconds``, SIGCONT follows by itself after that long."""
        if not self.alive or self.proc is None:
            raise RuntimeError(f"{self!r} is not running")
        self._cancel_resume()
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True
        if self.down_since is None:
            self.down_since = time.monotonic()
        if seconds is not None:
            self._resume_timer = threading.Timer(seconds, self._resume_quietly)
            self._resume_timer.daemon = True
            self._resume_timer.start()

    def _resume_quietly(self) -> None:
        try:
            self.resume()
        except (OSError, RuntimeError):
            pass

    def resume(self) -> None:
        """SIGCONT a paused node."""
        self._cancel_resume()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            if self.paused:
                self.down_since = None
        self.paused = False

    def cleanup(self) -> None:
        """Kill the process and remove the directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        with _LOCK:
            _DIRS.discard(self.dir)

    # ---------------------------------------------------------------- clients

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new ``redis.Redis`` for this node; close it (or use it as a context manager).

        Unlike redis-py's default (10 retries with backoff), it does not retry a failed connection,
        and gives up after 10 s, so a command to a dead or hung node fails fast; override with
        ``retry=`` / ``socket_timeout=``.
        """
        options: Dict[str, Any] = {
            "host": HOST,
            "port": self.port,
            "socket_timeout": 10.0,
            "socket_connect_timeout": 2.0,
            "retry": _no_retry(),
        }
        options.update(kwargs)
        return redis.Redis(**options)

    def _server_pid(self) -> Optional[int]:
        """The pid of whatever server answers on this node's port, if any."""
        try:
            return int(self.info("server", timeout=0.5)["process_id"])
        except (redis.RedisError, OSError, KeyError, ValueError):
            return None

    def _serves(self, proc: "subprocess.Popen[bytes]") -> bool:
        return self._server_pid() == proc.pid

    def ping(self, timeout: float = 0.5) -> bool:
        try:
            with _probe(self.port, timeout) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def execute(self, *args: Any, timeout: float = 2.0) -> Any:
        """Run one command with ``str`` replies and short timeouts (raises on failure)."""
        with _probe(self.port, timeout) as client:
            return client.execute_command(*args)

    def info(self, section: str = "replication", timeout: float = 2.0) -> Dict[str, str]:
        """``INFO <section>`` as a dict of strings."""
        reply = self.execute("INFO", section, timeout=timeout)
        if isinstance(reply, dict):
            return {str(k): str(v) for k, v in reply.items()}
        return _parse_info(str(reply))

    def role(self, timeout: float = 2.0) -> str:
        """``master``, ``slave`` or ``sentinel``, as ROLE answers."""
        return str(self.execute("ROLE", timeout=timeout)[0])


# --------------------------------------------------------------------------------------------------
# Cutting replication.


class ReplicationCut:
    """A replica cut off from its master, which keeps running and acknowledging writes.

    How: the replica is told to authenticate to its master as a user that does not exist
    (``CONFIG SET masteruser <random> masterauth <random>``), then the master drops its replica
    connections (``CLIENT KILL TYPE replica``). The replica reconnects within a second, and its
    AUTH fails with WRONGPASS, so the link stays down: writes acknowledged by the master from then
    on reach no replica (``WAIT 1 <ms>`` returns 0), and are lost if the master now dies and the
    replica is promoted. Everything else keeps working, which is what makes the loss real:

    * the replica is not hung, so it answers the cluster bus and the sentinels, is not marked failed,
      and stays eligible for promotion. Hanging it instead does not lose writes: a SIGSTOPped
      replica (also marked failed after the node timeout) reads the replication stream still
      queued in its socket on SIGCONT, so resuming it just before killing the master kept all 20 of
      20 writes, although ``WAIT`` had returned 0; ``CLIENT PAUSE ... ALL`` on the replica also
      stalls the link (``WAIT`` 0) but applies the buffered stream when it ends, and blocks every
      client meanwhile, even new connections; ``DEBUG SLEEP`` needs ``enable-debug-command``;
    * in a cluster, ``cluster-replica-validity-factor`` is set to 0 on the replica while cut, so its
      growing "data age" never stops it from taking over (the default allows
      node-timeout * 10 + repl-ping-replica-period, 30 s with a 2 s node timeout).
    * Sentinel skips replicas whose link has been down longer than ``down-after-milliseconds * 10``
      (plus the time the master has been down): keep a cut under ~10 s with the 1 s default.

    :meth:`heal` (idempotent; run by itself after ``seconds`` when given, and on leaving a ``with``
    block) restores the settings; a replica that is still a replica then resyncs within ~1 s.
    """

    def __init__(
        self, master: RedisNode, replica: RedisNode, seconds: Optional[float], cluster: bool
    ) -> None:
        self.master = master
        self.replica = replica
        self._lock = threading.Lock()
        self._healed = False
        self._timer: Optional[threading.Timer] = None
        names = ["masteruser", "masterauth"] + (["cluster-replica-validity-factor"] if cluster else [])
        saved = _pairs(replica.execute("CONFIG", "GET", *names))
        self._saved: Dict[str, str] = {name: saved.get(name, "") for name in names}
        token = os.urandom(8).hex()
        changes = ["masteruser", f"ha-cut-{token}", "masterauth", token]
        if cluster:
            changes += ["cluster-replica-validity-factor", "0"]
        replica.execute("CONFIG", "SET", *changes)
        try:
            master.execute("CLIENT", "KILL", "TYPE", "replica")
            wait_until(self._is_cut, 10, f"the link {master!r} -> {replica!r} stayed up")
        except BaseException:
            self.heal(wait=False)
            raise
        self.cut_at = time.monotonic()
        if seconds is not None:
            self._timer = threading.Timer(seconds, self.heal, kwargs={"wait": False})
            self._timer.daemon = True
            self._timer.start()

    def _is_cut(self) -> bool:
        replica = self.replica.info("replication")
        master = self.master.info("replication")
        return replica.get("master_link_status") == "down" and master.get("connected_slaves") == "0"

    def heal(self, wait: bool = True, timeout: float = 10.0) -> None:
        """Restore the replica's settings; with ``wait``, wait until it is linked again (if it is
        still a replica of a live master)."""
        with self._lock:
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()
            if self._healed:
                return
            self._healed = True
            if not self.replica.responsive:
                return
            try:
                args = [item for pair in self._saved.items() for item in pair]
                self.replica.execute("CONFIG", "SET", *args)
                try:
                    # Sentinel's CONFIG REWRITE during a failover may have saved the bogus masteruser.
                    self.replica.execute("CONFIG", "REWRITE")
                except redis.ResponseError:
                    pass
            except (redis.RedisError, OSError):
                return
        if wait and self.master.responsive:

            def linked() -> bool:
                info = self.replica.info("replication")
                return info.get("role") != "slave" or info.get("master_link_status") == "up"

            wait_until(linked, timeout, f"{self.replica!r} did not resync")

    def __enter__(self) -> ReplicationCut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.heal(wait=False)


# --------------------------------------------------------------------------------------------------
# Redis Cluster.


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of CLUSTER NODES."""

    id: str
    port: int
    flags: FrozenSet[str]
    master_id: Optional[str]
    slots: Tuple[Tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def is_replica(self) -> bool:
        return "slave" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


def parse_cluster_nodes(text: str) -> List[ClusterNodeView]:
    views = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split(",")[0].split("@")[0]
        port = int(address.rsplit(":", 1)[1] or 0)
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        master_id = None if fields[3] == "-" else fields[3]
        views.append(
            ClusterNodeView(fields[0], port, frozenset(fields[2].split(",")), master_id, tuple(slots))
        )
    return views


class ClusterHA:
    """A Redis Cluster of 3 masters and 3 replicas on loopback, made with ``redis-cli --cluster
    create ... --cluster-replicas 1``; the constructor returns once every node reports
    ``cluster_state:ok``, every replica ``master_link_status:up``, and all nodes agree on the roles.

    Roles change as tests kill nodes: :meth:`masters`, :meth:`replicas`, :meth:`master_for_key`
    and :meth:`replica_of` ask a live node (CLUSTER NODES / CLUSTER KEYSLOT) every time.
    """

    MASTERS = 3

    def __init__(
        self, node_timeout_ms: int = 2000, extra: Sequence[str] = (), startup_timeout: float = 30.0
    ) -> None:
        self.node_timeout_ms = node_timeout_ms
        self.nodes: List[RedisNode] = []
        self._cuts: List[ReplicationCut] = []
        self._slots: Dict[int, Tuple[Tuple[int, int], ...]] = {}  # port -> slots, as last seen
        started = time.monotonic()
        try:
            options = (
                "--cluster-enabled", "yes",
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-config-file", "nodes.conf",
                *extra,
            )  # fmt: skip
            for i in range(2 * self.MASTERS):
                self.nodes.append(RedisNode(*options, cluster=True, name=f"cluster{i}"))
            create = subprocess.run(
                [
                    "redis-cli", "--cluster", "create",
                    *(f"{HOST}:{node.port}" for node in self.nodes),
                    "--cluster-replicas", "1", "--cluster-yes",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=startup_timeout,
            )  # fmt: skip
            if create.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed:\n{create.stdout.decode(errors='replace')}"
                )
            self.wait_ok(timeout=startup_timeout)
        except BaseException:
            self.cleanup()
            raise
        self.startup_seconds = time.monotonic() - started

    def __enter__(self) -> ClusterHA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    @property
    def url(self) -> str:
        """A seed URL (a live node) for ``redis.RedisCluster.from_url``."""
        for node in self.nodes:
            if node.responsive:
                return node.url
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> List[Tuple[str, int]]:
        return [node.address for node in self.nodes]

    def node_by_port(self, port: int) -> RedisNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise LookupError(f"no node on port {port}")

    # ---------------------------------------------------------------- topology as the nodes see it

    def view(self, node: RedisNode) -> Dict[int, ClusterNodeView]:
        """CLUSTER NODES as ``node`` sees it, by port."""
        views = parse_cluster_nodes(str(node.execute("CLUSTER", "NODES")))
        return {v.port: v for v in views}

    def _any_view(self) -> Dict[int, ClusterNodeView]:
        errors = []
        for node in self.nodes:
            if not node.responsive:
                continue
            try:
                found = self.view(node)
            except (redis.RedisError, OSError) as exc:
                errors.append(f"{node!r}: {exc}")
                continue
            self._remember_slots(found)
            return found
        raise RuntimeError(f"no cluster node answers: {errors}")

    def _remember_slots(self, view: Dict[int, ClusterNodeView]) -> None:
        for port, entry in view.items():
            if entry.is_master and entry.slots:
                self._slots[port] = entry.slots

    def masters(self) -> List[RedisNode]:
        """The masters that serve slots and are not failed, ordered by their first slot."""
        view = self._any_view()
        found = sorted(
            (v for v in view.values() if v.is_master and v.slots and not v.failed), key=lambda v: v.slots
        )
        return [self.node_by_port(v.port) for v in found]

    def replicas(self) -> List[RedisNode]:
        """The replicas that are not failed."""
        view = self._any_view()
        return [self.node_by_port(v.port) for v in view.values() if v.is_replica and not v.failed]

    def keyslot(self, key: str) -> int:
        for node in self.nodes:
            if node.responsive:
                try:
                    return int(node.execute("CLUSTER", "KEYSLOT", key))
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    continue
        raise RuntimeError("no cluster node answers")

    def master_for_key(self, key: str) -> RedisNode:
        """The node that owns the key's slot in the cluster's configuration (it may be failed)."""
        slot = self.keyslot(key)
        for entry in self._any_view().values():
            if entry.is_master and entry.owns(slot):
                return self.node_by_port(entry.port)
        raise LookupError(f"no master owns slot {slot}")

    def replica_of(self, master: RedisNode) -> RedisNode:
        """A (not failed) replica of ``master``."""
        view = self._any_view()
        if master.port not in view:
            raise LookupError(f"{master!r} is not in the cluster")
        master_id = view[master.port].id
        for entry in view.values():
            if entry.master_id == master_id and entry.is_replica and not entry.failed:
                return self.node_by_port(entry.port)
        raise LookupError(f"{master!r} has no live replica")

    # ---------------------------------------------------------------- health

    def problems(self) -> List[str]:
        """Why the cluster is not settled (empty when it is): every responsive node says
        cluster_state:ok, every replica's link is up, every node's CLUSTER NODES agrees with every
        live node's own role and marks none of them failed, and 3 masters serve the slots."""
        problems: List[str] = []
        live = [node for node in self.nodes if node.responsive]
        views: Dict[int, Dict[int, ClusterNodeView]] = {}
        for node in live:
            try:
                state = _parse_info(str(node.execute("CLUSTER", "INFO"))).get("cluster_state")
                if state != "ok":
                    problems.append(f"{node.port}: cluster_state:{state}")
                views[node.port] = self.view(node)
                info = node.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    problems.append(f"{node.port}: replica link {info.get('master_link_status')}")
            except (redis.RedisError, OSError) as exc:
                problems.append(f"{node.port}: {exc!r}")
        own_roles = {
            port: view[port].is_master
            for port, view in views.items()
            if port in view and "myself" in view[port].flags
        }
        for port, view in views.items():
            for other, is_master in own_roles.items():
                entry = view.get(other)
                if entry is None:
                    problems.append(f"{port} does not know {other}")
                elif entry.failed:
                    problems.append(f"{port} sees {other} as {','.join(sorted(entry.flags))}")
                elif entry.is_master != is_master:
                    problems.append(f"{port} sees {other} as {'master' if entry.is_master else 'replica'}")
            masters = [v for v in view.values() if v.is_master and v.slots]
            if len(masters) != self.MASTERS:
                problems.append(f"{port} sees {len(masters)} masters with slots")
        if views:
            self._remember_slots(next(iter(views.values())))
        return problems

    def wait_ok(self, timeout: float = 30.0) -> float:
        """Wait until :meth:`problems` is empty; return the seconds it took."""
        started = time.monotonic()
        last: List[str] = []

        def settled() -> bool:
            last[:] = self.problems()
            return not last

        wait_until(settled, timeout, lambda: "the cluster did not settle: " + "; ".join(last), interval=0.05)
        return time.monotonic() - started

    # ---------------------------------------------------------------- faults

    def kill_master_for_key(self, key: str) -> RedisNode:
        """SIGKILL the master that owns ``key``'s slot, and return it."""
        node = self.master_for_key(key)
        node.kill()
        return node

    def wait_failover(self, old_master: RedisNode, timeout: float = 20.0) -> float:
        """Wait until a replica of the dead ``old_master`` has taken over its slots (every live node
        says the same new owner, which answers ROLE master) and every live node reports
        cluster_state:ok. Returns the seconds since ``old_master`` went down (was killed, stopped
        or paused), or since this call if it did not go down through :class:`RedisNode`."""
        started = time.monotonic()
        slots = self._slots.get(old_master.port)
        if not slots:
            raise LookupError(f"{old_master!r} was not seen serving slots")
        slot = slots[0][0]
        last: List[str] = []

        def promoted() -> bool:
            last.clear()
            owners: Set[int] = set()
            for node in self.nodes:
                if not node.responsive:
                    continue
                try:
                    state = _parse_info(str(node.execute("CLUSTER", "INFO"))).get("cluster_state")
                    view = self.view(node)
                except (redis.RedisError, OSError) as exc:
                    last.append(f"{node.port}: {exc!r}")
                    continue
                if state != "ok":
                    last.append(f"{node.port}: cluster_state:{state}")
                owner = [v for v in view.values() if v.is_master and v.owns(slot) and not v.failed]
                owners.update(v.port for v in owner)
                if not owner:
                    last.append(f"{node.port}: no live owner of slot {slot}")
            if last or len(owners) != 1:
                last.append(f"owners of slot {slot}: {sorted(owners)}")
                return False
            new = self.node_by_port(owners.pop())
            if new.port == old_master.port:
                last.append("the old master still owns the slot")
                return False
            try:
                return new.role() == "master"
            except (redis.RedisError, OSError) as exc:
                last.append(f"{new.port}: {exc!r}")
                return False

        wait_until(
            promoted,
            timeout,
            lambda: f"no replica of {old_master!r} took over: " + "; ".join(last),
            interval=0.05,
        )
        self._any_view()
        began = old_master.down_since if old_master.down_since is not None else started
        return time.monotonic() - began

    def restart(self, node: RedisNode, timeout: float = 30.0) -> float:
        """Start a killed/stopped node again (same port, directory and nodes.conf): a master that
        was failed over rejoins as a replica of the node that replaced it. Waits until the cluster
        has settled (:meth:`wait_ok`); returns the seconds it took."""
        started = time.monotonic()
        if not node.alive:
            node.start()
        elif node.paused:
            node.resume()
        self.wait_ok(timeout=timeout)
        return time.monotonic() - started

    def cut_replication(self, master: RedisNode, seconds: Optional[float] = None) -> ReplicationCut:
        """Cut ``master``'s replica off (see :class:`ReplicationCut`) until ``seconds`` pass, or
        until ``heal()``. Writes the master acknowledges meanwhile are not replicated."""
        cut = ReplicationCut(master, self.replica_of(master), seconds, cluster=True)
        self._cuts.append(cut)
        return cut

    def cleanup(self) -> None:
        """SIGKILL every node and remove every directory. Idempotent."""
        for cut in self._cuts:
            if cut._timer is not None:
                cut._timer.cancel()
        for node in self.nodes:
            node.kill()
        for node in self.nodes:
            node.cleanup()


# --------------------------------------------------------------------------------------------------
# Sentinel.


class SentinelHA:
    """A primary, one replica (``replicaof`` in its config file) and three sentinels (quorum 2,
    ``down-after-milliseconds`` 1000, ``failover-timeout`` 5000, ``parallel-syncs`` 1), each sentinel
    with a config file of its own, which it rewrites. The sentinels start already knowing each other
    and the replica (``sentinel myid`` / ``known-sentinel`` / ``known-replica``), so they are ready
    at once instead of after the 2 s hello / 10 s INFO periods."""

    def __init__(
        self,
        master_name: str = "mymaster",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        quorum: int = 2,
        startup_timeout: float = 20.0,
    ) -> None:
        self.master_name = master_name
        self.data_nodes: List[RedisNode] = []
        self.sentinel_nodes: List[RedisNode] = []
        self._cuts: List[ReplicationCut] = []
        started = time.monotonic()
        try:
            primary = RedisNode(name="primary")
            self.data_nodes.append(primary)
            replica = RedisNode(name="replica", config=[f"replicaof {HOST} {primary.port}"])
            self.data_nodes.append(replica)
            ports: List[int] = []
            while len(ports) < 3:
                port = pick_port()
                if port not in ports and port not in (primary.port, replica.port):
                    ports.append(port)
            ids = [os.urandom(20).hex() for _ in ports]
            for i, (port, myid) in enumerate(zip(ports, ids)):
                name = master_name
                config = [
                    f"sentinel myid {myid}",
                    f"sentinel monitor {name} {HOST} {primary.port} {quorum}",
                    f"sentinel down-after-milliseconds {name} {down_after_ms}",
                    f"sentinel failover-timeout {name} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1",
                    f"sentinel known-replica {name} {HOST} {replica.port}",
                    *(
                        f"sentinel known-sentinel {name} {HOST} {p} {other}"
                        for p, other in zip(ports, ids)
                        if other != myid
                    ),
                ]
                self.sentinel_nodes.append(
                    RedisNode(port=port, config=config, sentinel=True, name=f"sentinel{i}", start=False)
                )
            wait_until(
                lambda: replica.info("replication").get("master_link_status") == "up",
                startup_timeout,
                "the replica did not sync",
            )
            for node in self.sentinel_nodes:
                node.start(timeout=startup_timeout)
            self.wait_ready(timeout=startup_timeout)
        except BaseException:
            self.cleanup()
            raise
        self.startup_seconds = time.monotonic() - started

    def __enter__(self) -> SentinelHA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    @property
    def sentinels(self) -> List[Tuple[str, int]]:
        return [node.address for node in self.sentinel_nodes]

    @property
    def sentinel_url(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def node_by_port(self, port: int) -> RedisNode:
        for node in self.data_nodes:
            if node.port == port:
                return node
        raise LookupError(f"no data node on port {port}")

    # ---------------------------------------------------------------- what the sentinels say

    def sentinel_master(self, sentinel: RedisNode) -> Dict[str, str]:
        return _pairs(sentinel.execute("SENTINEL", "MASTER", self.master_name))

    def sentinel_replicas(self, sentinel: RedisNode) -> List[Dict[str, str]]:
        return [_pairs(item) for item in sentinel.execute("SENTINEL", "REPLICAS", self.master_name)]

    def _addr(self, sentinel: RedisNode) -> Tuple[str, int]:
        host, port = sentinel.execute("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return str(host), int(port)

    def primary_address(self) -> Tuple[str, int]:
        """The primary's address, as the first sentinel that answers says."""
        errors = []
        for sentinel in self.sentinel_nodes:
            if sentinel.responsive:
                try:
                    return self._addr(sentinel)
                except (redis.RedisError, OSError, TypeError) as exc:
                    errors.append(f"{sentinel!r}: {exc!r}")
        raise RuntimeError(f"no sentinel answers: {errors}")

    def primary(self) -> RedisNode:
        """The primary, as ``SENTINEL get-master-addr-by-name`` says."""
        return self.node_by_port(self.primary_address()[1])

    def replicas(self) -> List[RedisNode]:
        """The live data nodes that say ROLE slave."""
        found = []
        for node in self.data_nodes:
            if node.responsive:
                try:
                    if node.role() == "slave":
                        found.append(node)
                except (redis.RedisError, OSError):
                    pass
        return found

    def problems(self) -> List[str]:
        """Why the group is not ready (empty when it is): every live sentinel agrees on the primary,
        sees it up, knows the 2 other sentinels, and sees every live replica up, with its link ok;
        every other live data node is a replica."""
        problems: List[str] = []
        live_replicas = {node.port for node in self.replicas()}
        addresses = set()
        for sentinel in self.sentinel_nodes:
            if not sentinel.responsive:
                continue
            try:
                master = self.sentinel_master(sentinel)
                replicas = self.sentinel_replicas(sentinel)
                addresses.add(self._addr(sentinel))
            except (redis.RedisError, OSError, TypeError) as exc:
                problems.append(f"{sentinel.port}: {exc!r}")
                continue
            if master.get("flags") != "master":
                problems.append(f"{sentinel.port} sees the primary as {master.get('flags')}")
            if master.get("num-other-sentinels") != str(len(self.sentinel_nodes) - 1):
                problems.append(f"{sentinel.port} knows {master.get('num-other-sentinels')} other sentinels")
            seen = {int(r["port"]): r for r in replicas if "port" in r}
            for port in live_replicas:
                entry = seen.get(port)
                if entry is None:
                    problems.append(f"{sentinel.port} does not know replica {port}")
                elif entry.get("flags") != "slave" or entry.get("master-link-status") != "ok":
                    problems.append(
                        f"{sentinel.port} sees replica {port}: {entry.get('flags')}, link {entry.get('master-link-status')}"
                    )
        if len(addresses) != 1:
            problems.append(f"sentinels disagree on the primary: {sorted(addresses)}")
        else:
            (_, primary_port) = next(iter(addresses))
            for node in self.data_nodes:
                if node.responsive and node.port != primary_port and node.port not in live_replicas:
                    problems.append(
                        f"{node.port} is not a replica, yet the sentinels say {primary_port} is the primary"
                    )
        return problems

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Wait until :meth:`problems` is empty; return the seconds it took."""
        started = time.monotonic()
        last: List[str] = []

        def ready() -> bool:
            last[:] = self.problems()
            return not last

        wait_until(ready, timeout, lambda: "the sentinels are not ready: " + "; ".join(last), interval=0.05)
        return time.monotonic() - started

    # ---------------------------------------------------------------- faults

    def kill_primary(self) -> RedisNode:
        """SIGKILL the current primary, and return it."""
        node = self.primary()
        node.kill()
        return node

    def wait_failover(self, old: RedisNode, timeout: float = 20.0) -> float:
        """Wait until every live sentinel reports the same new primary address (not ``old``'s) and
        that node answers ROLE master. Returns the seconds since ``old`` went down (or since this
        call if it did not go down through :class:`RedisNode`)."""
        started = time.monotonic()
        last: List[str] = []

        def switched() -> bool:
            last.clear()
            addresses = set()
            for sentinel in self.sentinel_nodes:
                if sentinel.responsive:
                    try:
                        addresses.add(self._addr(sentinel))
                    except (redis.RedisError, OSError, TypeError) as exc:
                        last.append(f"{sentinel.port}: {exc!r}")
            last.append(f"sentinels say {sorted(addresses)}")
            if len(addresses) != 1:
                return False
            (_, port) = addresses.pop()
            if port == old.port:
                return False
            try:
                return self.node_by_port(port).role() == "master"
            except (redis.RedisError, OSError) as exc:
                last.append(f"{port}: {exc!r}")
                return False

        wait_until(
            switched,
            timeout,
            lambda: f"the sentinels did not replace {old!r}: " + "; ".join(last),
            interval=0.05,
        )
        began = old.down_since if old.down_since is not None else started
        return time.monotonic() - began

    def restart(self, node: RedisNode, timeout: float = 20.0) -> float:
        """Start a killed/stopped node again. A data node that is no longer the primary starts as a
        replica of the current one (``--replicaof``, as Sentinel itself would only do after ~8 s);
        waits until it is synced and every sentinel sees it up. Returns the seconds it took."""
        started = time.monotonic()
        if node in self.sentinel_nodes:
            if not node.alive:
                node.start()
            elif node.paused:
                node.resume()
            self.wait_ready(timeout=timeout)
            return time.monotonic() - started
        if node.paused:
            node.resume()
        elif not node.alive:
            primary = self.primary()
            if primary is node:
                node.start()
            else:
                node.start("--replicaof", HOST, str(primary.port))
        self.wait_ready(timeout=timeout)
        return time.monotonic() - started

    def cut_replication(
        self, seconds: Optional[float] = None, primary: Optional[RedisNode] = None
    ) -> ReplicationCut:
        """Cut the primary's replica off (see :class:`ReplicationCut`) until ``seconds`` pass, or
        until ``heal()``. Writes the primary acknowledges meanwhile are not replicated."""
        primary = primary or self.primary()
        for node in self.replicas():
            if node.info("replication").get("master_port") == str(primary.port):
                cut = ReplicationCut(primary, node, seconds, cluster=False)
                self._cuts.append(cut)
                return cut
        raise LookupError(f"{primary!r} has no replica")

    def cleanup(self) -> None:
        """SIGKILL the sentinels, then the data nodes; remove every directory. Idempotent."""
        for cut in self._cuts:
            if cut._timer is not None:
                cut._timer.cancel()
        for node in self.sentinel_nodes + self.data_nodes:
            node.kill()
        for node in self.sentinel_nodes + self.data_nodes:
            node.cleanup()


# --------------------------------------------------------------------------------------------------
# Fixtures (function-scoped: the tests that use them kill nodes).


@pytest.fixture
def redis_cluster_ha() -> Iterator[ClusterHA]:
    """A fresh 3-master/3-replica Redis Cluster of this test's own; killed and removed after it."""
    cluster = ClusterHA()
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def redis_sentinel() -> Iterator[SentinelHA]:
    """A fresh primary + replica + 3 sentinels of this test's own; killed and removed after it."""
    group = SentinelHA()
    try:
        yield group
    finally:
        group.cleanup()
