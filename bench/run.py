"""Benchmark flask_sse_ext against its peers (a lean hand-written gevent floor, Node.js/Express
with ioredis, sse-starlette on uvicorn/uvloop, flask-sse). See bench/README.md.

    python bench/run.py                      # the default set (about 13 minutes on 2 cores)
    python bench/run.py --quick              # a smoke run (about 2 minutes)
    python bench/run.py --scenarios fanout-1000,burst-1000 --targets ext-memory,floor
    python bench/run.py --scenarios fanout --clients 100,5000
    python bench/run.py --scenarios multihost    # 2 hosts x 2 workers on a 3-shard Redis Cluster

Everything runs on 127.0.0.1: one redis-server of its own, and for every (scenario, target)
a fresh ``gunicorn -k gevent -w 1`` server (node and uvicorn: one process), a load generator process (bench/loadgen.py) and a
publisher in this process. The multihost scenario adds a Redis Cluster (3 masters + 3 replicas,
tests/support/redis_ha.py) and two gunicorn masters of 2 workers each, on 127.0.0.1 and
127.0.0.2. Prints one table, saves bench/results/<timestamp>.json and draws the chart.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_CHANNEL = "bench"
PRIVATE_PREFIX = "bench-p-"

# ---------------------------------------------------------------------------------------------
# Processes this script starts (ended by pid, one by one, at exit)

_STARTED: List[subprocess.Popen] = []
_EXTRA_PIDS: List[int] = []  # gunicorn workers (children of a master we started)


def _popen(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    proc = subprocess.Popen(list(cmd), **kwargs)
    _STARTED.append(proc)
    return proc


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 8.0) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except ProcessLookupError:
            pass
    if proc in _STARTED:
        _STARTED.remove(proc)


def _kill_pid(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state != "Z":
            os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError):
        pass


def _cleanup() -> None:
    for proc in list(reversed(_STARTED)):
        _stop(proc, wait=3)
    for pid in _EXTRA_PIDS:
        _kill_pid(pid)


# ---------------------------------------------------------------------------------------------
# /proc helpers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def children(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat


def kernel_seconds(pid: int) -> float:
    """stime of ``pid``: its share of ``cpu_seconds`` spent in the kernel (for a fan-out,
    mostly the socket sends, which on loopback also carry the receiving side's TCP work)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[12]) / CLK_TCK


def cpu_seconds_precise(pid: int) -> float:
    """Time on CPU of every thread of ``pid`` from schedstat (ns), a cross-check of the
    10 ms ticks of /proc/PID/stat; 0.0 where schedstat is missing."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return total / 1e9


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def socket_inodes(pid: int) -> set:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def local_ports_to(pid: int, remote_port: int) -> set:
    """Local ports of ``pid``'s TCP sockets connected to 127.0.0.1:``remote_port``."""
    inodes = socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) == remote_port:
                        ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def tcp_sockets() -> List[Tuple[int, int, int, str, str]]:
    """Every TCP socket of the machine: (local port, remote port, state, inode, local addr hex)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, remote = cols[1].rsplit(":", 1), cols[2].rsplit(":", 1)
                    rows.append((int(local[1], 16), int(remote[1], 16), int(cols[3], 16), cols[9], local[0]))
        except OSError:
            pass
    return rows


# ---------------------------------------------------------------------------------------------
# redis-server


class RedisServer:
    def __init__(self) -> None:
        import redis

        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.proc = _popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=open(self.dir / "redis.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        # The bench's own connection, opened first and kept: a target that uses up Redis'
        # maxclients (flask-sse at 10,000 streams) must not blind the measurements.
        self.admin = redis.Redis(port=self.port, client_name="bench-admin", socket_timeout=30)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.admin.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> str:
        return str(self.admin.info("server").get("redis_version"))

    def clients_of(self, pid: int) -> int:
        """Redis clients (CLIENT LIST) whose address is a socket of process ``pid``."""
        ports = local_ports_to(pid, self.port)
        count = 0
        for entry in self.admin.client_list():
            addr = entry.get("addr", "")
            if addr.startswith("127.0.0.1:") and int(addr.rsplit(":", 1)[1]) in ports:
                count += 1
        return count

    def numsub(self, channels: Sequence[str]) -> int:
        total = 0
        for i in range(0, len(channels), 1000):
            for _, n in self.admin.pubsub_numsub(*channels[i : i + 1000]):
                total += int(n)
        return total

    def stop(self) -> None:
        try:
            self.admin.close()
        except Exception:
            pass
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterBench:
    """A Redis Cluster of 3 masters + 3 replicas on loopback, for the ``multihost`` scenario:
    the test suite's ``ClusterHA`` (tests/support/redis_ha.py), started once per run."""

    def __init__(self) -> None:
        tests = str(ROOT / "tests")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        try:
            from support.redis_ha import ClusterHA
        except ImportError as exc:
            raise RuntimeError(f"cannot import tests/support/redis_ha.py (ClusterHA): {exc}") from exc
        self.cluster = ClusterHA()

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def nodes(self) -> List[Any]:
        return self.cluster.nodes

    def masters(self) -> List[Any]:
        return self.cluster.masters()

    def flush(self) -> None:
        for node in self.masters():
            with node.client() as c:
                c.flushall()

    def slot_owner(self) -> Callable[[int], int]:
        """slot -> port of the master serving it (CLUSTER SLOTS of a live node)."""
        with self.masters()[0].client() as c:
            ranges = [
                (int(lo), int(hi), int(owner[1])) for lo, hi, owner, *_ in c.execute_command("CLUSTER SLOTS")
            ]

        def owner(slot: int) -> int:
            for lo, hi, port in ranges:
                if lo <= slot <= hi:
                    return port
            raise LookupError(f"no master serves slot {slot}")

        return owner

    def channels(self, count: int, stem: str = "mh-") -> List[str]:
        """``count`` channel names spread evenly over the masters (by the slot of the hash tag
        ``{channel}`` that the broker's keys carry)."""
        from redis.crc import key_slot

        owner = self.slot_owner()
        masters = sorted(n.port for n in self.masters())
        want = {
            port: count // len(masters) + (1 if i < count % len(masters) else 0)
            for i, port in enumerate(masters)
        }
        out: List[str] = []
        j = 0
        while len(out) < count:
            name = f"{stem}{j}"
            port = owner(key_slot(name.encode()))
            if want.get(port, 0) > 0:
                want[port] -= 1
                out.append(name)
            j += 1
        return out

    def client_list(self) -> Dict[int, List[Dict[str, Any]]]:
        """CLIENT LIST of every live node, by node port."""
        out: Dict[int, List[Dict[str, Any]]] = {}
        for node in self.nodes:
            if node.responsive:
                with node.client(decode_responses=True) as c:
                    out[node.port] = c.client_list()
        return out

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(n.pid) for n in self.nodes if n.alive)

    def version(self) -> str:
        with self.nodes[0].client(decode_responses=True) as c:
            return str(c.info("server").get("redis_version"))

    def logs(self) -> Dict[int, str]:
        return {n.port: n.log_tail(1500) for n in self.nodes}

    def stop(self) -> None:
        self.cluster.cleanup()


# ---------------------------------------------------------------------------------------------
# Targets and their publishers


@dataclass(frozen=True)
class Target:
    name: str
    app: str  # gunicorn app module (in bench/)
    uses_redis: bool
    ready: str  # how the load generator knows a stream is open: "headers" or "sent"
    publisher: str
    server: str = "gunicorn"  # gunicorn (-k gevent) | node (bench/node) | uvicorn (uvloop)
    config: str = ""  # ext targets: SSE_* keys as JSON (BENCH_SSE_CONFIG)


TARGETS: Dict[str, Target] = {
    t.name: t
    for t in (
        Target("ext-memory", "ext_app:app", False, "headers", "http"),
        Target("ext-redis", "ext_app:app", True, "headers", "ext"),
        # The same, with every event written by the stream's own greenlet (no direct writes).
        Target(
            "ext-redis-queued", "ext_app:app", True, "headers", "ext", config='{"SSE_DIRECT_WRITES": false}'
        ),
        Target("flask-sse", "flask_sse_app:app", True, "sent", "flask-sse"),
        Target("floor", "floor_app:app", True, "headers", "redis"),
        Target("node", "node/server.js", True, "headers", "redis", "node"),
        Target("starlette", "starlette_app:app", True, "headers", "redis", "uvicorn"),
    )
}


class HttpPublisher:
    """The in-process broker can only be reached in the worker: ``publish`` is ``POST
    /publish`` (the warm-up uses it); a scenario's events are published by ``series``, from a
    greenlet in the worker (``bench/ext_app.py``), so that no HTTP handling is counted as the
    cost of delivery."""

    def __init__(self, port: int, redis_url: str) -> None:
        self.port = port
        self.conn: Optional[http.client.HTTPConnection] = None

    def publish(self, channel: str, data: str) -> None:
        body = json.dumps({"data": data, "channel": channel})
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request("POST", "/publish", body, {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                text = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {text[:200]!r}")
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                return
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise

    def series(self, schedule: List[Tuple[float, str, int]], pad: str) -> Tuple[List[float], Dict[str, int]]:
        """Publish ``schedule`` in the worker; the call durations (s) and errors it saw."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=900)
        try:
            conn.request(
                "POST",
                "/series",
                json.dumps({"schedule": schedule, "pad": pad}),
                {"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"POST /series: HTTP {resp.status}: {resp.read()[:200]!r}")
            resp.read()
            conn.request("GET", "/series?timeout=600")
            result = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        if not result["done"]:
            raise RuntimeError("the worker did not finish publishing the series")
        return result["calls"], result["errors"]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class ExtPublisher:
    """flask_sse_ext.Publisher: straight into Redis, no app."""

    def __init__(self, port: int, redis_url: str) -> None:
        from flask_sse_ext import Publisher

        self.publisher = Publisher(redis_url)

    def publish(self, channel: str, data: str) -> None:
        self.publisher.publish(data, channel=channel)

    def close(self) -> None:
        self.publisher.close()


class FlaskSsePublisher:
    """flask_sse.sse.publish in an app context of this process (what a view would do)."""

    def __init__(self, port: int, redis_url: str) -> None:
        from flask import Flask
        from flask_sse import sse

        app = Flask("bench_publisher")
        app.config["REDIS_URL"] = redis_url
        self.sse = sse
        self.ctx = app.app_context()
        self.ctx.push()

    def publish(self, channel: str, data: str) -> None:
        self.sse.publish(data, channel=channel)

    def close(self) -> None:
        self.ctx.pop()


class RedisPublisher:
    """Plain PUBLISH, for the floor."""

    def __init__(self, port: int, redis_url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url, client_name="bench-publisher")

    def publish(self, channel: str, data: str) -> None:
        self.client.publish(channel, data)

    def close(self) -> None:
        self.client.close()


PUBLISHERS: Dict[str, Callable[[int, str], Any]] = {
    "http": HttpPublisher,
    "ext": ExtPublisher,
    "flask-sse": FlaskSsePublisher,
    "redis": RedisPublisher,
}


# ---------------------------------------------------------------------------------------------
# Servers


def _gunicorn_args() -> List[str]:
    import gunicorn.config

    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        return ["--no-control-socket"]
    return []


class Server:
    def __init__(
        self,
        target: Target,
        redis_url: str,
        gc_threshold: Optional[int] = None,
        gc_log: bool = False,
        workers: int = 1,
        host: str = "127.0.0.1",
        cluster: bool = False,
        also: Sequence[str] = (),
        worker_connections: int = 30000,
    ) -> None:
        self.target = target
        self.host = host
        self.port = free_port(host)
        fd, log = tempfile.mkstemp(prefix=f"bench-{target.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(ROOT), env.get("PYTHONPATH", "")])
        env.pop("BENCH_GC_THRESHOLD", None)
        env.pop("BENCH_GC_LOG", None)
        if gc_threshold:
            env["BENCH_GC_THRESHOLD"] = str(gc_threshold)
        if gc_log:
            env["BENCH_GC_LOG"] = "1"
        env.pop("BENCH_EXT_HOOK", None)
        if target.name.startswith("ext-"):
            env["BENCH_EXT_HOOK"] = "1"
        if target.uses_redis:
            env["BENCH_REDIS_URL"] = redis_url
        else:
            env.pop("BENCH_REDIS_URL", None)
        env.pop("BENCH_REDIS_CLUSTER", None)
        if target.config:  # over what the caller set (large.py, stalled.py)
            env["BENCH_SSE_CONFIG"] = json.dumps(
                {**json.loads(env.get("BENCH_SSE_CONFIG", "{}")), **json.loads(target.config)}
            )
        if cluster:
            env["BENCH_REDIS_CLUSTER"] = "1"
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gevent",
            "-w",
            str(workers),
            "-b",
            f"{host}:{self.port}",
            *[arg for other in also for arg in ("-b", f"{other}:{self.port}")],  # same port
            "--worker-connections",
            str(worker_connections),
            "--backlog",
            "4096",
            "--graceful-timeout",
            "2",
            "--timeout",
            "120",
            "--log-level",
            "warning",
            "-c",
            str(BENCH / "gunicorn_bench.py"),
            *_gunicorn_args(),
            target.app,
        ]
        if target.server == "node":  # one process: the server is its own worker
            cmd = ["node", str(BENCH / target.app), str(self.port), redis_url]
        elif target.server == "uvicorn":
            cmd = [
                *[sys.executable, "-m", "uvicorn", "--host", host, "--port", str(self.port)],
                *["--loop", "uvloop", "--http", "httptools", "--backlog", "4096"],
                *["--log-level", "warning", "--no-access-log", target.app],
            ]
        with open(self.log_path, "wb") as logf:
            self.proc = _popen(cmd, cwd=BENCH, env=env, stdout=logf, stderr=subprocess.STDOUT)
        if target.server != "gunicorn":
            self.workers = [self.proc.pid]
        else:
            self.workers = self._find_workers(workers)
        self.worker = self.workers[0]
        _EXTRA_PIDS.extend(self.workers)
        self._wait_port()

    def _find_workers(self, count: int) -> List[int]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log()[-2000:]}")
            kids = children(self.proc.pid)
            if len(kids) >= count:
                return kids[:count]
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn started fewer than {count} workers")

    def _wait_port(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log()[-2000:]}")
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/ping")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not answer /ping: {self.log()[-2000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> Dict[str, Any]:
        _stop(self.proc, wait=8)
        for pid in self.workers:
            _kill_pid(pid)
            if pid in _EXTRA_PIDS:
                _EXTRA_PIDS.remove(pid)
        text = self.log()
        self.log_path.unlink(missing_ok=True)
        gc_lines = [line for line in text.splitlines() if line.startswith("gc ")]
        tracebacks = text.count("Traceback (most recent call last)")
        info: Dict[str, Any] = {"tracebacks": tracebacks}
        if gc_lines:
            info["gc_log"] = gc_lines
        # Whatever else the server printed (--log-level warning: warnings, errors, the
        # library's log records), kept for the JSON: the first and last lines.
        other = [line for line in text.splitlines() if line.strip() and not line.startswith("gc ")]
        if other:
            info["log_lines"] = len(other)
            info["log_head"] = other[:60]
            if len(other) > 60:
                info["log_tail"] = other[-20:]
        if tracebacks:
            start = text.find("Traceback (most recent call last)")
            info["first_traceback"] = text[start : start + 1500]
            # The last line of each traceback names the exception: count them by kind.
            kinds: Dict[str, int] = {}
            for m in re.finditer(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)+(\S[^\n]*)", text):
                kind = m.group(1).split(":", 1)[0][:80]
                kinds[kind] = kinds.get(kind, 0) + 1
            info["exceptions"] = kinds
        return info


def warm_up(server: Server, publisher: Any) -> None:
    """One stream, one event, closed: lazy imports, the broker and the publisher's connection
    exist before anything is measured."""
    sock = socket.create_connection((server.host, server.port), timeout=5)
    try:
        sock.sendall(b"GET /stream?channel=warmup HTTP/1.1\r\nHost: x\r\n\r\n")
        if server.target.ready == "headers":
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                buf += chunk
        else:
            time.sleep(0.3)
        publisher.publish("warmup", "E0 %.6f warmup" % time.time())
        got = b""
        deadline = time.monotonic() + 5
        while b"warmup" not in got and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    finally:
        sock.close()
    time.sleep(0.1)
    # flask-sse only notices a closed stream when it next writes to it.
    publisher.publish("warmup", "E1 %.6f warmup" % time.time())
    time.sleep(0.3)


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Scenario:
    name: str
    kind: str  # fanout | private | burst | redis-clients
    clients: int = 0
    events: int = 0  # per channel
    rate: Optional[float] = None  # events per second; None: back to back
    counts: Tuple[int, ...] = ()  # redis-clients: client counts to measure
    rounds: int = 1  # each round runs every target once, in a rotated order
    workers: int = 1  # gunicorn workers of the server (of each host, for multihost)
    channels: int = 1  # multihost: channels the clients spread over
    hosts: int = 1  # multihost: gunicorn masters ("hosts")

    def describe(self) -> str:
        if self.kind == "multihost":
            return (
                f"{self.clients} clients on {self.channels} channels, {self.hosts} hosts x "
                f"{self.workers} workers, Redis Cluster 3 masters + 3 replicas; "
                f"{self.events * self.channels} events at {self.rate:g}/s in all"
            )
        if self.kind == "fanout":
            workers = f", {self.workers} workers" if self.workers > 1 else ""
            return f"{self.clients} clients, 1 channel, {self.events} events at {self.rate:g}/s{workers}"
        if self.kind == "private":
            return f"{self.clients} clients on {self.clients} channels, 1 event each, {self.rate:g} events/s"
        if self.kind == "burst":
            return f"{self.clients} clients, 1 channel, {self.events} events back to back"
        return "Redis connections held by the worker, per open streams"


def build_scenarios(args: argparse.Namespace) -> List[Scenario]:
    quick = args.quick
    seconds = args.seconds if args.seconds is not None else (2.0 if quick else 3.0)
    events = max(1, int(round(args.rate * seconds)))
    fanout_counts = args.clients or ([100, 1000] if quick else [100, 1000, 10000])
    private_n = 1000 if quick else 10000
    burst_n = 100 if quick else 1000
    counts = tuple(args.redis_counts or ([1, 100] if quick else [1, 100, 1000]))
    names = args.scenarios or (
        [f"fanout-{n}" for n in fanout_counts]
        + [f"private-{private_n}", f"burst-{burst_n}", f"workers-{burst_n}", "redis-clients", "multihost"]
    )
    out: List[Scenario] = []
    for name in _scenario_names(names, fanout_counts):
        if name == "multihost":
            mh_clients = args.multihost_clients or (200 if quick else 1000)
            mh_seconds = args.multihost_seconds or (4.0 if quick else 10.0)
            k = args.multihost_channels
            per_channel = max(1, int(round(args.multihost_rate * mh_seconds / k)))
            rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
            out.append(
                Scenario(
                    "multihost",
                    "multihost",
                    mh_clients,
                    per_channel,
                    args.multihost_rate,
                    rounds=rounds,
                    workers=args.multihost_workers,
                    channels=k,
                    hosts=args.multihost_hosts,
                )
            )
            continue
        kind, _, n_text = name.rpartition("-")
        if not kind:
            kind, n_text = (
                name,
                str({"private": private_n, "burst": burst_n, "workers": burst_n}.get(name, 0)),
            )
        if name == "redis-clients":
            out.append(Scenario(name, "redis-clients", counts=counts))
            continue
        if kind not in ("fanout", "private", "burst", "workers") or not n_text.isdigit():
            raise SystemExit(
                f"unknown scenario {name!r}: use fanout[-N], private[-N], burst[-N], "
                "workers[-N], redis-clients, multihost"
            )
        n = int(n_text)
        # fanout-N of more than 1,000 clients saturates the worker: slow, and steady enough.
        large = kind == "fanout" and n > 1000
        rounds = args.rounds_large if large else args.rounds
        if rounds is None:
            rounds = 1 if quick or large else 3
        if kind == "fanout":
            out.append(Scenario(f"fanout-{n}", kind, n, events, args.rate, rounds=rounds))
        elif kind == "workers":
            out.append(
                Scenario(f"workers-{n}", "fanout", n, events, args.rate, rounds=rounds, workers=args.workers)
            )
        elif kind == "private":
            out.append(Scenario(f"private-{n}", kind, n, 1, args.private_rate, rounds=rounds))
        else:
            out.append(Scenario(f"burst-{n}", kind, n, args.burst_events, rounds=rounds))
    return out


def _scenario_names(names: List[str], fanout_counts: List[int]) -> List[str]:
    out: List[str] = []
    for name in names:
        out += [f"fanout-{n}" for n in fanout_counts] if name == "fanout" else [name]
    return out


# ---------------------------------------------------------------------------------------------
# One run


class LoadGen:
    def __init__(
        self,
        port: int,
        clients: int,
        expect: int,
        target: Target,
        *,
        private: bool,
        drain: float,
        connect_timeout: float,
        max_seconds: float,
        servers: Optional[List[str]] = None,
        channels: Optional[List[str]] = None,
    ) -> None:
        cmd = [
            sys.executable,
            str(BENCH / "loadgen.py"),
            *(["--targets", ",".join(servers)] if servers else ["--port", str(port)]),
            "--clients",
            str(clients),
            "--expect",
            str(expect),
            "--ready",
            target.ready,
            "--drain",
            str(drain),
            "--connect-timeout",
            str(connect_timeout),
            "--max-seconds",
            str(max_seconds),
        ]
        if channels:
            cmd += ["--channels", ",".join(channels)]
        elif private:
            cmd += ["--private-prefix", PRIVATE_PREFIX]
        else:
            cmd += ["--channel", PAGE_CHANNEL]
        self.stderr = tempfile.TemporaryFile()
        self.proc = _popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        self.lines: "queue.Queue[Optional[dict]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass
        self.lines.put(None)

    def next(self, phase: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"the load generator gave no {phase!r} line in {timeout:.0f}s") from None
            if msg is None:
                self.stderr.seek(0)
                err = self.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"the load generator exited before {phase!r}: {err}")
            if msg.get("phase") == phase:
                return msg

    def done(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"done\n")
            self.proc.stdin.flush()
            self.proc.stdin.close()
        except OSError:
            pass

    def stop(self) -> None:
        _stop(self.proc, wait=5)
        self.stderr.close()


def wait_subscribed(redis_server: RedisServer, channels: List[str], want: int, timeout: float) -> int:
    """For servers that send no headers before the first event: wait until Redis counts
    ``want`` subscribers (or the count stops growing for 5 s). Returns the count."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        n = redis_server.numsub(channels)
        if n >= want or time.monotonic() > deadline:
            return n
        if n != last:
            last, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > 5:
            return n
        time.sleep(0.2)


def _pct(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


class Profiler:
    """py-spy record on the worker for the publish phase (raw collapsed stacks)."""

    def __init__(self, pid: int, out: Path, native: bool = False) -> None:
        self.out = out
        exe = shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.proc = _popen(
            [
                exe,
                "record",
                "-p",
                str(pid),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(out),
                # --native sees into C extensions (gevent's loop) but must pause the worker.
                "-d",
                "600",
                *(["--native"] if native else ["--nonblocking"]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)

    def stop(self) -> Dict[str, Any]:
        _stop(self.proc, sig=signal.SIGINT, wait=20)
        return summarize_profile(self.out)


def summarize_profile(path: Path, top: int = 25) -> Dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    self_counts: Dict[str, int] = {}
    incl: Dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"error": "no profile written"}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        leaf = frames[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count

    def rank(d: Dict[str, int]) -> List[Tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "file": str(path), "self_pct": rank(self_counts), "inclusive_pct": rank(incl)}


def run_stream_scenario(
    sc: Scenario, target: Target, redis_server: RedisServer, args: argparse.Namespace, stamp: str, round_: int
) -> Dict[str, Any]:
    res: Dict[str, Any] = {"scenario": sc.name, "target": target.name, "round": round_, "ok": True}
    redis_server.admin.flushall()
    server: Optional[Server] = None
    publisher = None
    loadgen: Optional[LoadGen] = None
    profiler: Optional[Profiler] = None
    try:
        server = Server(target, redis_server.url, args.gc_threshold, args.gc_log, sc.workers)
        publisher = PUBLISHERS[target.publisher](server.port, redis_server.url)
        time.sleep(0.3)
        # What a user's worker grows by: from before any stream was ever opened (the first
        # stream costs imports, the broker, buffers) to N streams open.
        rss_start = sum(rss_kib(pid) for pid in server.workers)
        for _ in range(3 * sc.workers):  # each worker most likely served one
            warm_up(server, publisher)
        time.sleep(0.3)
        rss0 = sum(rss_kib(pid) for pid in server.workers)
        expected_total = sc.clients * sc.events
        drain = args.drain if args.drain is not None else max(5.0, min(45.0, expected_total / 15000))
        connect_timeout = 60 + sc.clients / 200
        published = sc.clients if sc.kind == "private" else sc.events
        publish_estimate = published / sc.rate if sc.rate else published / 200
        max_seconds = connect_timeout + 30 + publish_estimate * 3 + drain + 30
        loadgen = LoadGen(
            server.port,
            sc.clients,
            sc.events,
            target,
            private=sc.kind == "private",
            drain=drain,
            connect_timeout=connect_timeout,
            max_seconds=max_seconds,
        )
        ready = loadgen.next("ready", connect_timeout + 30)
        accept_s = ready["accept_s"]
        if target.ready == "sent":
            channels = (
                [f"{PRIVATE_PREFIX}{i}" for i in range(sc.clients)]
                if sc.kind == "private"
                else [PAGE_CHANNEL]
            )
            subscribed = wait_subscribed(redis_server, channels, sc.clients, connect_timeout)
            accept_s = time.time() - ready["start"]
            res["subscribed"] = subscribed
        res["accept_s"] = accept_s
        res["ready_streams"] = ready["ready"]
        time.sleep(1.0 if sc.clients >= 1000 else 0.5)  # let the worker settle before measuring
        rss1 = sum(rss_kib(pid) for pid in server.workers)
        res["rss_kib"] = {"start": rss_start, "idle_0": rss0, "idle_n": rss1}
        res["rss_per_conn_kib"] = (rss1 - rss_start) / sc.clients
        res["rss_per_conn_after_warmup_kib"] = (rss1 - rss0) / sc.clients
        # With several workers: the most any one of them holds.
        res["redis_clients"] = (
            max(redis_server.clients_of(pid) for pid in server.workers) if target.uses_redis else None
        )

        # -- publish phase ------------------------------------------------------------------
        if target.name in args.profile:
            try:
                out = RESULTS / f"{stamp}-profile-{target.name}-{sc.name}-{round_ + 1}.txt"
                profiler = Profiler(server.worker, out, args.native)
            except Exception as exc:
                res["profile"] = {"error": str(exc)}
        pad = "x" * max(0, args.payload - 30)
        lat: List[float] = []
        errors: Dict[str, int] = {}
        cpu0 = sum(cpu_seconds(pid) for pid in server.workers)
        cpu0_precise = sum(cpu_seconds_precise(pid) for pid in server.workers)
        kernel0 = sum(kernel_seconds(pid) for pid in server.workers)
        first_publish = time.time()
        consecutive = 0

        def publish(channel: str, seq: int) -> None:
            nonlocal consecutive
            data = "E%d %.6f %s" % (seq, time.time(), pad)
            t = time.perf_counter()
            try:
                publisher.publish(channel, data)
                consecutive = 0
            except Exception as exc:
                kind = type(exc).__name__ + ": " + str(exc)[:80]
                errors[kind] = errors.get(kind, 0) + 1
                consecutive += 1
                if consecutive >= 50:
                    raise RuntimeError("50 publish calls failed in a row") from exc
            lat.append(time.perf_counter() - t)

        if sc.kind == "fanout":
            schedule = [(seq / sc.rate, PAGE_CHANNEL, seq) for seq in range(sc.events)]  # type: ignore[operator]
        elif sc.kind == "burst":
            schedule = [(0.0, PAGE_CHANNEL, seq) for seq in range(sc.events)]
        else:
            schedule = [(i / sc.rate, f"{PRIVATE_PREFIX}{i}", 0) for i in range(sc.clients)]  # type: ignore[operator]
        try:
            if hasattr(publisher, "series"):
                lat, errors = publisher.series(schedule, pad)
            else:
                t0 = time.monotonic()
                for offset, channel, seq in schedule:
                    delay = t0 + offset - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    publish(channel, seq)
        except RuntimeError as exc:
            res["publish_aborted"] = str(exc)
        publish_end = time.time()
        loadgen.done()
        result = loadgen.next("result", max_seconds + 30)
        cpu1 = sum(cpu_seconds(pid) for pid in server.workers)
        cpu1_precise = sum(cpu_seconds_precise(pid) for pid in server.workers)
        res["worker_kernel_s"] = sum(kernel_seconds(pid) for pid in server.workers) - kernel0
        if profiler is not None:
            res["profile"] = profiler.stop()
            profiler = None

        res.update(
            {
                **_delivery_figures(
                    result, lat, errors, first_publish, publish_end, cpu1 - cpu0, cpu1_precise - cpu0_precise
                ),
            }
        )
        res["loadgen"] = result
    except Exception as exc:
        res["ok"] = False
        res["failure"] = f"{type(exc).__name__}: {exc}"[:2000]
        res["failure_trace"] = traceback.format_exc()[-3000:]
    finally:
        if profiler is not None:
            profiler.stop()
        if loadgen is not None:
            loadgen.stop()
        if publisher is not None:
            try:
                publisher.close()
            except Exception:
                pass
        if server is not None:
            res["server"] = server.stop()
    return res


def _delivery_figures(
    result: Dict[str, Any],
    lat: List[float],
    errors: int,
    first_publish: float,
    publish_end: float,
    cpu: float,
    cpu_precise: float,
) -> Dict[str, Any]:
    """What every fan-out scenario reports: deliveries, latency, publish calls, worker CPU."""
    delivered = result["delivered"]
    return {
        "expected": result["expected"],
        "delivered": delivered,
        "loss": result["loss"],
        "per_client_loss": result["per_client_loss"],
        "duplicates": result["duplicates"],
        "other_events": result["other_events"],
        "latency_ms": {
            k: (v * 1000 if v is not None and not math.isnan(v) else None)
            for k, v in result["latency_s"].items()
            if k != "count"
        },
        "publish_s": publish_end - first_publish,
        "publish_calls": len(lat),
        "publish_errors": errors,
        "publish_ms": {
            "p50": _ms(_pct(lat, 0.5)),
            "p99": _ms(_pct(lat, 0.99)),
            "max": _ms(max(lat) if lat else None),
        },
        "worker_cpu_s": cpu,
        "worker_cpu_s_schedstat": cpu_precise,
        "cpu_us_per_delivery": cpu * 1e6 / delivered if delivered else None,
        "deliveries_per_s": (
            delivered / (result["last_delivery"] - first_publish)
            if delivered and result["last_delivery"]
            else None
        ),
        "drain_timed_out": result["timed_out"],
        "loadgen_errors": result["errors"],
        "loadgen_busy_pct": result["loadgen_busy_pct"],
    }


def _ms(v: Optional[float]) -> Optional[float]:
    return None if v is None else v * 1000


def run_redis_clients(sc: Scenario, target: Target, redis_server: RedisServer) -> Dict[str, Any]:
    res: Dict[str, Any] = {"scenario": sc.name, "target": target.name, "ok": True, "counts": {}}
    if not target.uses_redis:
        res["ok"] = None
        res["note"] = "no Redis"
        return res
    redis_server.admin.flushall()
    server: Optional[Server] = None
    publisher = None
    try:
        server = Server(target, redis_server.url)
        publisher = PUBLISHERS[target.publisher](server.port, redis_server.url)
        warm_up(server, publisher)
        for n in sc.counts:
            loadgen = LoadGen(
                server.port, n, 0, target, private=False, drain=1, connect_timeout=60, max_seconds=120
            )
            try:
                ready = loadgen.next("ready", 90)
                if target.ready == "sent":
                    wait_subscribed(redis_server, [PAGE_CHANNEL], n, 30)
                time.sleep(0.5)
                res["counts"][str(n)] = {
                    "redis_clients": redis_server.clients_of(server.worker),
                    "ready": ready["ready"],
                    "errors": ready["errors"],
                }
                loadgen.done()
                loadgen.next("result", 30)
            finally:
                loadgen.stop()
            if target.name == "flask-sse":
                publisher.publish(PAGE_CHANNEL, "E0 0 cleanup")  # lets its closed streams end
            time.sleep(0.5)
    except Exception as exc:
        res["ok"] = False
        res["failure"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        if publisher is not None:
            try:
                publisher.close()
            except Exception:
                pass
        if server is not None:
            res["server"] = server.stop()
    return res


# ---------------------------------------------------------------------------------------------
# The multihost scenario: 2 gunicorn masters ("hosts") x 2 workers on a 3-shard Redis Cluster


def host_addresses(count: int) -> List[str]:
    """Loopback addresses for ``count`` hosts: 127.0.0.1, 127.0.0.2, ... where they can be
    bound (Linux routes all of 127/8 to lo), else 127.0.0.1 for all."""
    out = []
    for i in range(count):
        host = f"127.0.0.{i + 1}"
        try:
            free_port(host)
        except OSError:
            return ["127.0.0.1"] * count
        out.append(host)
    return out


class _ClusterPublisher:
    """``flask_sse_ext.Publisher(url, cluster=True)`` with the bench's ``publish(channel, data)``."""

    def __init__(self, url: str) -> None:
        from flask_sse_ext import Publisher

        self.publisher = Publisher(url, cluster=True)

    def publish(self, channel: str, data: str) -> None:
        self.publisher.publish(data, channel=channel)

    def close(self) -> None:
        self.publisher.close()


def redis_connections(
    cluster: RedisClusterBench, workers: Dict[int, str], prefix: str = "sse", per_node_commands: int = 2
) -> Dict[str, Any]:
    """The Redis connections of every worker (``workers``: pid -> host label), on every node.

    A worker's connections are the ``CLIENT LIST`` entries named ``<prefix>:<pid>`` (the
    broker names them with CLIENT SETNAME), split into pub/sub (``sub``/``ssub``/``psub`` > 0)
    and command connections; cross-checked by socket: entries whose address is a socket of the
    worker (``/proc``), named or not. The design bound: per node, at most ``per_node_commands``
    command connections and one pub/sub connection (on the nodes that serve its channels)."""
    lists = cluster.client_list()
    masters = {n.port for n in cluster.masters()}
    # local port -> pid, for the workers' sockets connected to a cluster node
    inode_pid = {inode: pid for pid in workers for inode in socket_inodes(pid)}
    port_pid: Dict[int, int] = {}
    for local, remote, _state, inode, _ in tcp_sockets():
        if remote in lists and inode in inode_pid:
            port_pid[local] = inode_pid[inode]
    per: Dict[int, Dict[int, Dict[str, int]]] = {pid: {} for pid in workers}
    by_socket: Dict[int, int] = {pid: 0 for pid in workers}
    unnamed: List[str] = []
    others: Dict[str, int] = {}
    for node_port, entries in lists.items():
        for e in entries:
            name = str(e.get("name") or "")
            addr = str(e.get("addr", ""))
            sock_pid = port_pid.get(int(addr.rsplit(":", 1)[1])) if ":" in addr else None
            if sock_pid is not None:
                by_socket[sock_pid] += 1
                if name != f"{prefix}:{sock_pid}":
                    unnamed.append(f"node {node_port}: worker {sock_pid} holds {addr} named {name!r}")
            if not name.startswith(prefix + ":"):
                continue  # replication links, this bench's own probes
            try:
                pid = int(name[len(prefix) + 1 :])
            except ValueError:
                pid = -1
            if pid not in workers:
                others[name] = others.get(name, 0) + 1  # the publisher (this process)
                continue
            subs = sum(int(e.get(k, 0) or 0) for k in ("sub", "psub", "ssub"))
            kind = "pubsub" if subs > 0 or "P" in str(e.get("flags", "")) else "commands"
            cell = per[pid].setdefault(node_port, {"commands": 0, "pubsub": 0})
            cell[kind] += 1
    totals = {pid: sum(c["commands"] + c["pubsub"] for c in nodes.values()) for pid, nodes in per.items()}
    violations = []
    for pid, nodes in per.items():
        for node_port, c in nodes.items():
            if c["commands"] > per_node_commands or c["pubsub"] > 1:
                violations.append(
                    f"worker {pid} ({workers[pid]}) node {node_port}: "
                    f"{c['commands']} command + {c['pubsub']} pub/sub connections"
                )
            if node_port not in masters:
                violations.append(
                    f"worker {pid} ({workers[pid]}) holds {c['commands'] + c['pubsub']} "
                    f"connections to replica {node_port}"
                )
    values = list(totals.values())
    return {
        "per_worker": {
            str(pid): {
                "host": workers[pid],
                "total": totals[pid],
                "by_socket": by_socket[pid],
                "nodes": {str(n): c for n, c in sorted(nodes.items())},
            }
            for pid, nodes in per.items()
        },
        "max": max(values) if values else None,
        "mean": statistics.mean(values) if values else None,
        "max_by_socket": max(by_socket.values()) if by_socket else None,
        "max_commands_per_node": max((c["commands"] for n in per.values() for c in n.values()), default=0),
        "max_pubsub_per_node": max((c["pubsub"] for n in per.values() for c in n.values()), default=0),
        "pubsub_nodes_max": max((sum(1 for c in n.values() if c["pubsub"]) for n in per.values()), default=0),
        "violations": violations,
        "unnamed_or_misnamed": unnamed,
        "other_named": others,
        "masters": sorted(masters),
    }


def streams_per_worker(servers: List[Server]) -> Dict[str, int]:
    """Established connections each worker holds on its server's port (the streams it serves)."""
    rows = tcp_sockets()
    out = {}
    for server in servers:
        for pid in server.workers:
            inodes = socket_inodes(pid)
            out[str(pid)] = sum(
                1
                for local, _, state, inode, _ in rows
                if local == server.port and state == 1 and inode in inodes
            )
    return out


def run_multihost(
    sc: Scenario, target: Target, cluster: RedisClusterBench, args: argparse.Namespace, round_: int
) -> Dict[str, Any]:
    from redis.crc import key_slot

    res: Dict[str, Any] = {"scenario": sc.name, "target": target.name, "round": round_, "ok": True}
    servers: List[Server] = []
    publisher: Optional[_ClusterPublisher] = None
    loadgen: Optional[LoadGen] = None
    try:
        cluster.flush()
        channels = cluster.channels(sc.channels)
        owner = cluster.slot_owner()
        res["channels"] = {c: owner(key_slot(c.encode())) for c in channels}
        hosts = host_addresses(sc.hosts)
        for host in hosts:
            servers.append(
                Server(
                    target, cluster.url, args.gc_threshold, args.gc_log, sc.workers, host=host, cluster=True
                )
            )
        workers = {pid: f"{srv.host}:{srv.port}" for srv in servers for pid in srv.workers}
        res["hosts"] = {f"{srv.host}:{srv.port}": srv.workers for srv in servers}
        publisher = _ClusterPublisher(cluster.url)
        for server in servers:
            for _ in range(3 * sc.workers):  # each worker most likely served one
                warm_up(server, publisher)
        time.sleep(0.3)
        res["redis_connections_warm"] = redis_connections(cluster, workers)
        all_workers = list(workers)
        rss0 = sum(rss_kib(pid) for pid in all_workers)
        events = sc.events * sc.channels
        expected_total = sc.clients * sc.events
        drain = args.drain if args.drain is not None else max(5.0, min(45.0, expected_total / 15000))
        connect_timeout = 60 + sc.clients / 200
        max_seconds = connect_timeout + 30 + events / sc.rate * 3 + drain + 30  # type: ignore[operator]
        loadgen = LoadGen(
            0,
            sc.clients,
            sc.events,
            target,
            private=False,
            drain=drain,
            connect_timeout=connect_timeout,
            max_seconds=max_seconds,
            servers=[f"{srv.host}:{srv.port}" for srv in servers],
            channels=channels,
        )
        ready = loadgen.next("ready", connect_timeout + 30)
        res["accept_s"] = ready["accept_s"]
        res["ready_streams"] = ready["ready"]
        time.sleep(1.0 if sc.clients >= 1000 else 0.5)  # let the workers settle
        rss1 = sum(rss_kib(pid) for pid in all_workers)
        res["rss_kib"] = {"idle_0": rss0, "idle_n": rss1}
        res["rss_per_conn_kib"] = (rss1 - rss0) / sc.clients
        res["streams_per_worker"] = streams_per_worker(servers)
        conns_idle = res["redis_connections_idle"] = redis_connections(cluster, workers)

        # -- publish phase: round robin over the channels, at sc.rate in all -----------------
        pad = "x" * max(0, args.payload - 30)
        lat: List[float] = []
        errors: Dict[str, int] = {}
        cpu0 = sum(cpu_seconds(pid) for pid in all_workers)
        cpu0_precise = sum(cpu_seconds_precise(pid) for pid in all_workers)
        redis_cpu0 = cluster.cpu_seconds()
        first_publish = time.time()
        t0 = time.monotonic()
        consecutive = 0
        for k in range(events):
            delay = t0 + k / sc.rate - time.monotonic()  # type: ignore[operator]
            if delay > 0:
                time.sleep(delay)
            data = "E%d %.6f %s" % (k // sc.channels, time.time(), pad)
            t = time.perf_counter()
            try:
                publisher.publish(channels[k % sc.channels], data)
                consecutive = 0
            except Exception as exc:
                kind = type(exc).__name__ + ": " + str(exc)[:80]
                errors[kind] = errors.get(kind, 0) + 1
                consecutive += 1
                if consecutive >= 50:
                    res["publish_aborted"] = f"50 publish calls failed in a row: {kind}"
                    break
            lat.append(time.perf_counter() - t)
        publish_end = time.time()
        conns_busy = res["redis_connections_after_publish"] = redis_connections(cluster, workers)
        loadgen.done()
        result = loadgen.next("result", max_seconds + 30)
        cpu1 = sum(cpu_seconds(pid) for pid in all_workers)
        cpu1_precise = sum(cpu_seconds_precise(pid) for pid in all_workers)
        redis_cpu1 = cluster.cpu_seconds()

        snapshots = (conns_idle, conns_busy)
        res.update(
            {
                **_delivery_figures(
                    result, lat, errors, first_publish, publish_end, cpu1 - cpu0, cpu1_precise - cpu0_precise
                ),
                "per_host": result.get("per_target"),
                "events": events,
                "published_per_s": events / (publish_end - first_publish),
                "redis_cpu_s": redis_cpu1 - redis_cpu0,
                "redis_cpu_us_per_event": (redis_cpu1 - redis_cpu0) * 1e6 / events if events else None,
                "expected_deliveries_per_s": sc.rate * sc.clients / sc.channels,  # type: ignore[operator]
                # Rows of the table: the most over the two snapshots (streams idle, after publishing).
                "redis_clients": max(c["max"] or 0 for c in snapshots),
                "redis_conns_mean": max(c["mean"] or 0 for c in snapshots),
                "redis_conns_max_by_socket": max(c["max_by_socket"] or 0 for c in snapshots),
                "redis_cmd_per_node_max": max(c["max_commands_per_node"] for c in snapshots),
                "redis_pubsub_per_node_max": max(c["max_pubsub_per_node"] for c in snapshots),
                "redis_pubsub_nodes_max": max(c["pubsub_nodes_max"] for c in snapshots),
                "redis_bound_violations": sum(len(c["violations"]) for c in snapshots),
                "redis_unnamed": sum(len(c["unnamed_or_misnamed"]) for c in snapshots),
            }
        )
        streams = list(res["streams_per_worker"].values())
        res["streams_per_worker_min"], res["streams_per_worker_max"] = min(streams), max(streams)
        res["loadgen"] = result
    except Exception as exc:
        res["ok"] = False
        res["failure"] = f"{type(exc).__name__}: {exc}"[:2000]
        res["failure_trace"] = traceback.format_exc()[-3000:]
    finally:
        if loadgen is not None:
            loadgen.stop()
        if publisher is not None:
            try:
                publisher.close()
            except Exception:
                pass
        infos = [srv.stop() for srv in servers]
        if infos:
            kinds: Dict[str, int] = {}
            for info in infos:
                for kind, n in info.get("exceptions", {}).items():
                    kinds[kind] = kinds.get(kind, 0) + n
            res["server"] = {"tracebacks": sum(i["tracebacks"] for i in infos), "hosts": infos}
            if kinds:
                res["server"]["exceptions"] = kinds
            lines = sum(i.get("log_lines", 0) for i in infos)
            if lines:
                res["server"]["log_lines"] = lines
        if res.get("ok") is False:
            res["cluster_logs"] = cluster.logs()
    return res


# ---------------------------------------------------------------------------------------------
# Output


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if math.isnan(v):
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _ratio(a: Any, b: Any) -> str:
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and b
        and not math.isnan(a)
        and not math.isnan(b)
    ):
        return f"{a / b:.2f}x"
    return "-"


def _errors(r: Dict[str, Any]) -> int:
    n = sum(r.get("loadgen_errors", {}).values()) + sum(r.get("publish_errors", {}).values())
    return int(n + r.get("server", {}).get("tracebacks", 0))


#: Rows summed over rounds; every other row shows the median of its rounds, but those in
#: EXTREME: the most (or, for a ``min`` row, the least) of any round.
SUMMED = ("delivered/expected", "errors (client+publish+server)", "  over the bound, unnamed (count)")
EXTREME = (
    "streams/worker min",
    "streams/worker max",
    "Redis conns/worker max",
    "  command conns/node max (bound 2)",
    "  pub/sub conns/node max (bound 1)",
    "  nodes with pub/sub conn, max",
    "  by socket, max (cross-check)",
)

ROWS: List[Tuple[str, Callable[[Dict[str, Any]], Any]]] = [
    ("delivered/expected", lambda r: (r["delivered"], r["expected"]) if "delivered" in r else None),
    ("delivered %", lambda r: 100.0 * r["delivered"] / r["expected"] if r.get("expected") else None),
    ("latency p50 ms", lambda r: r.get("latency_ms", {}).get("p50")),
    ("latency p95 ms", lambda r: r.get("latency_ms", {}).get("p95")),
    ("latency p99 ms", lambda r: r.get("latency_ms", {}).get("p99")),
    ("latency max ms", lambda r: r.get("latency_ms", {}).get("max")),
    ("deliveries/s", lambda r: r.get("deliveries_per_s")),
    ("worker CPU us/delivery", lambda r: r.get("cpu_us_per_delivery")),
    (
        "  same, from schedstat (ns)",
        lambda r: (
            r["worker_cpu_s_schedstat"] * 1e6 / r["delivered"]
            if r.get("delivered") and r.get("worker_cpu_s_schedstat")
            else None
        ),
    ),
    (
        "  of which in the kernel",
        lambda r: (
            r["worker_kernel_s"] * 1e6 / r["delivered"]
            if r.get("delivered") and r.get("worker_kernel_s") is not None
            else None
        ),
    ),
    ("worker RSS KiB/idle conn", lambda r: r.get("rss_per_conn_kib")),
    ("  from after warm-up", lambda r: r.get("rss_per_conn_after_warmup_kib")),
    ("Redis clients/worker", lambda r: r.get("redis_clients")),
    ("accept N conns s", lambda r: r.get("accept_s")),
    ("publish call p50 ms", lambda r: r.get("publish_ms", {}).get("p50")),
    ("publish call p99 ms", lambda r: r.get("publish_ms", {}).get("p99")),
    ("errors (client+publish+server)", lambda r: _errors(r) if "delivered" in r else None),
    ("loadgen busy % (deliveries)", lambda r: r.get("loadgen_busy_pct")),
]


_ROW = dict(ROWS)

#: The multihost scenario's rows (its Redis rows are per worker, the most of the two snapshots:
#: streams open and idle, and right after publishing).
MULTIHOST_ROWS: List[Tuple[str, Callable[[Dict[str, Any]], Any]]] = [
    *[
        (label, _ROW[label])
        for label in (
            "delivered/expected",
            "delivered %",
            "latency p50 ms",
            "latency p95 ms",
            "latency p99 ms",
            "latency max ms",
        )
    ],
    ("deliveries/s (events x streams)", lambda r: r.get("deliveries_per_s")),
    ("  at the publish rate", lambda r: r.get("expected_deliveries_per_s")),
    ("events published/s", lambda r: r.get("published_per_s")),
    ("worker CPU us/delivery", _ROW["worker CPU us/delivery"]),
    ("  same, from schedstat (ns)", _ROW["  same, from schedstat (ns)"]),
    ("Redis CPU us/event (6 nodes)", lambda r: r.get("redis_cpu_us_per_event")),
    ("worker RSS KiB/idle conn", _ROW["worker RSS KiB/idle conn"]),
    ("streams/worker min", lambda r: r.get("streams_per_worker_min")),
    ("streams/worker max", lambda r: r.get("streams_per_worker_max")),
    ("Redis conns/worker max", lambda r: r.get("redis_clients")),
    ("Redis conns/worker mean", lambda r: r.get("redis_conns_mean")),
    ("  command conns/node max (bound 2)", lambda r: r.get("redis_cmd_per_node_max")),
    ("  pub/sub conns/node max (bound 1)", lambda r: r.get("redis_pubsub_per_node_max")),
    ("  nodes with pub/sub conn, max", lambda r: r.get("redis_pubsub_nodes_max")),
    ("  by socket, max (cross-check)", lambda r: r.get("redis_conns_max_by_socket")),
    (
        "  over the bound, unnamed (count)",
        lambda r: (
            (r.get("redis_bound_violations") or 0) + (r.get("redis_unnamed") or 0)
            if "delivered" in r
            else None
        ),
    ),
    *[
        (label, _ROW[label])
        for label in (
            "accept N conns s",
            "publish call p50 ms",
            "publish call p99 ms",
            "errors (client+publish+server)",
            "loadgen busy % (deliveries)",
        )
    ],
]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _combine(label: str, values: List[Any]) -> Any:
    """One cell from a row's values over the rounds: a sum or a median, or ``FAIL``."""
    if not values:
        return None
    if any(v == "FAIL" for v in values):
        return "FAIL"
    if all(v == "n/a" for v in values):
        return "n/a"
    if label in SUMMED:
        if all(isinstance(v, tuple) for v in values):
            return f"{sum(v[0] for v in values):,}/{sum(v[1] for v in values):,}"
        return sum(v for v in values if _number(v)) if any(_number(v) for v in values) else None
    numbers = [v for v in values if _number(v)]
    if numbers and label in EXTREME:
        return min(numbers) if label.endswith(" min") else max(numbers)
    return statistics.median(numbers) if numbers else None


def _ratio_of_rounds(a: List[Any], b: List[Any]) -> str:
    """The median over rounds of ``a / b``, each ratio taken within one round."""
    ratios = [x / y for x, y in zip(a, b) if _number(x) and _number(y) and y]
    return f"{statistics.median(ratios):.2f}x" if ratios else "-"


def render_table(scenarios: List[Scenario], targets: List[str], runs: List[Dict[str, Any]]) -> str:
    by: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: r.get("round", 0)):
        by.setdefault((r["scenario"], r["target"]), []).append(r)
    ratios = [
        (t, peer)
        for t in ("ext-memory", "ext-redis")
        for peer in ("floor", "node", "starlette", "ext-redis-queued")
        if t in targets and peer in targets and peer != t
    ]
    header = ["metric", *targets, *[f"{a}/{b}" for a, b in ratios]]
    rows: List[List[str]] = []
    for sc in scenarios:
        rounds = f"; median of {sc.rounds} rounds" if sc.rounds > 1 else ""
        rows.append([f"== {sc.name}: {sc.describe()}{rounds}"])
        if sc.kind == "redis-clients":
            for n in sc.counts:
                vals = []
                for t in targets:
                    r = (by.get((sc.name, t)) or [{}])[0]
                    if r.get("ok") is None:
                        vals.append("n/a")
                    elif not r.get("ok"):
                        vals.append("FAIL")
                    else:
                        vals.append(r["counts"].get(str(n), {}).get("redis_clients"))
                raw = dict(zip(targets, vals))
                rows.append(
                    [
                        f"Redis clients/worker @{n}",
                        *map(fmt, vals),
                        *[_ratio_of_rounds([raw[a]], [raw[b]]) for a, b in ratios],
                    ]
                )
            continue
        for label, get in MULTIHOST_ROWS if sc.kind == "multihost" else ROWS:
            per_round: Dict[str, List[Any]] = {}
            for t in targets:
                values = per_round[t] = []
                for r in by.get((sc.name, t), []):
                    if r.get("ok") is None:
                        values.append("n/a")
                        continue
                    if not r.get("ok"):
                        values.append("FAIL")
                        continue
                    try:
                        values.append(get(r))
                    except (KeyError, TypeError):
                        values.append(None)
            rows.append(
                [
                    label,
                    *[fmt(_combine(label, per_round[t])) for t in targets],
                    *[_ratio_of_rounds(per_round[a], per_round[b]) for a, b in ratios],
                ]
            )
    widths = [max(len(header[i]), *(len(r[i]) for r in rows if len(r) > 1)) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        if len(r) == 1:
            lines.append(r[0])
        else:
            lines.append(
                "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            )
    return "\n".join(lines)


def failures_text(runs: List[Dict[str, Any]]) -> str:
    out = []
    for r in runs:
        problems = []
        if r.get("ok") is False:
            problems.append(r.get("failure", "failed"))
        if r.get("loadgen_errors"):
            problems.append(f"client errors {r['loadgen_errors']}")
        if r.get("publish_errors"):
            problems.append(f"publish errors {r['publish_errors']}")
        if r.get("publish_aborted"):
            problems.append(r["publish_aborted"])
        if r.get("drain_timed_out"):
            problems.append("not every event arrived before the drain timeout")
        exc = r.get("server", {}).get("exceptions")
        if exc:
            problems.append(f"server exceptions {exc}")
        for n, c in r.get("counts", {}).items():
            if c.get("errors"):
                problems.append(f"@{n}: client errors {c['errors']}")
        for when in ("warm", "idle", "after_publish"):
            conns = r.get(f"redis_connections_{when}") or {}
            bad = conns.get("violations", []) + conns.get("unnamed_or_misnamed", [])
            if bad:
                problems.append(
                    f"Redis connections ({when}): "
                    + "; ".join(bad[:6])
                    + (f" (+{len(bad) - 6} more)" if len(bad) > 6 else "")
                )
        if problems:
            out.append(
                f"  {r['scenario']} / {r['target']} round {r.get('round', 0) + 1}: " + "; ".join(problems)
            )
    return "\n".join(out)


def server_log_text(runs: List[Dict[str, Any]], per_run: int = 8) -> str:
    """The first lines each server printed (beyond gc lines): warnings, errors, log records."""
    out = []
    for r in runs:
        server = r.get("server") or {}
        infos = server.get("hosts") or [server]
        lines = [line for info in infos for line in info.get("log_head", [])]
        if lines:
            total = sum(info.get("log_lines", 0) for info in infos)
            out.append(f"  {r['scenario']} / {r['target']} round {r.get('round', 0) + 1}: {total} lines")
            out += [f"    {line[:200]}" for line in lines[:per_run]]
    return "\n".join(out)


def profile_text(runs: List[Dict[str, Any]]) -> str:
    out = []
    for r in runs:
        prof = r.get("profile")
        if not prof:
            continue
        out.append(
            f"  {r['scenario']} / {r['target']} round {r.get('round', 0) + 1}: {prof.get('samples', 0)} samples, {prof.get('file', prof.get('error'))}"
        )
        for name, pct in prof.get("self_pct", [])[:12]:
            out.append(f"    self {pct:5.1f}%  {name}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


#: What each peer target imports, from bench/requirements.txt.
PEER_MODULES = {
    "flask-sse": ("flask_sse",),
    "starlette": ("sse_starlette", "uvicorn", "uvloop", "httptools"),
}


def ensure_requirements(skip: bool, targets: Sequence[str]) -> None:
    """pip-install bench/requirements.txt when a peer's package is missing, and the Node
    peer's packages (``npm ci`` from bench/node/package-lock.json) when node_modules is."""
    import importlib.util

    wanted = [m for t in targets for m in PEER_MODULES.get(t, ())]
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if missing:
        if skip:
            raise SystemExit(f"{', '.join(missing)} missing: pip install -r bench/requirements.txt")
        print(f"installing bench/requirements.txt ({', '.join(missing)} missing) ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-r", str(BENCH / "requirements.txt")], check=True
        )
    if "node" in targets and not (BENCH / "node" / "node_modules").is_dir():
        if skip:
            raise SystemExit("bench/node/node_modules missing: (cd bench/node && npm ci)")
        print("installing bench/node (npm ci) ...", file=sys.stderr)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH / "node", check=True)


def versions(redis_server: RedisServer) -> Dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "redis-server": redis_server.version()}
    try:  # what was measured: the commit, and whether flask_sse_ext differed from it
        git = ["git", "-C", str(ROOT)]
        out["git_commit"] = subprocess.run(
            git + ["rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            git + ["status", "--porcelain", "flask_sse_ext"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        out["flask_sse_ext_modified"] = "yes" if dirty else "no"
    except (OSError, subprocess.SubprocessError):
        pass
    for dist in ("flask-sse-ext", "Flask-SSE", "Flask", "gevent", "gunicorn", "redis", "hiredis"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run in ~2 minutes")
    p.add_argument(
        "--scenarios",
        type=lambda s: [x for x in s.split(",") if x],
        help="comma list: fanout-N, private-N, burst-N, workers-N, redis-clients, multihost,"
        " or fanout (= --clients)",
    )
    p.add_argument(
        "--targets",
        type=lambda s: [x for x in s.split(",") if x],
        default=None,
        help=f"comma list among {', '.join(TARGETS)} (default all; ext-redis alone"
        " when every scenario is multihost)",
    )
    p.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",") if x],
        help="client counts of the fanout scenarios (default 100,1000,10000)",
    )
    p.add_argument("--rate", type=float, default=20.0, help="fanout events per second (default 20)")
    p.add_argument(
        "--seconds", type=float, default=None, help="fanout publish seconds (default 3; 2 with --quick)"
    )
    p.add_argument(
        "--private-rate",
        type=float,
        default=2000.0,
        help="private scenario: events per second, one per channel (default 2000)",
    )
    p.add_argument("--burst-events", type=int, default=100)
    p.add_argument(
        "--workers", type=int, default=2, help="gunicorn workers of the workers-N scenario (default 2)"
    )
    p.add_argument("--redis-counts", type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument(
        "--multihost-clients",
        type=int,
        default=None,
        help="multihost: streams over all hosts (default 1000; 200 with --quick)",
    )
    p.add_argument("--multihost-channels", type=int, default=20, help="multihost: channels (default 20)")
    p.add_argument(
        "--multihost-rate",
        type=float,
        default=200.0,
        help="multihost: events per second over all channels (default 200)",
    )
    p.add_argument(
        "--multihost-seconds",
        type=float,
        default=None,
        help="multihost: publish seconds (default 10; 4 with --quick)",
    )
    p.add_argument("--multihost-hosts", type=int, default=2, help="multihost: gunicorn masters (default 2)")
    p.add_argument("--multihost-workers", type=int, default=2, help="multihost: workers per host (default 2)")
    p.add_argument("--payload", type=int, default=100, help="event data size in bytes (>= 30)")
    p.add_argument(
        "--drain",
        type=float,
        default=None,
        help="seconds to wait for missing events after publishing (default: by volume, 5-45)",
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="ext-memory,ext-redis",
        default="",
        type=lambda s: [x for x in s.split(",") if x],
        metavar="TARGETS",
        help="py-spy these workers (default: the ext-* ones) during the publish phase;"
        " it perturbs their numbers",
    )
    p.add_argument(
        "--native", action="store_true", help="with --profile: py-spy --native (pauses the worker)"
    )
    p.add_argument(
        "--gc-log",
        action="store_true",
        help="log the worker's garbage collections over 1 ms (and every full one) into the JSON",
    )
    p.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        help="experiment: gc.set_threshold(N) in every worker (default: Python's 700)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of each scenario (default 3; 1 with --quick); flask-sse runs in the first only",
    )
    p.add_argument(
        "--rounds-large",
        type=int,
        default=None,
        help="rounds of fanout scenarios of more than 1,000 clients (default 1)",
    )
    p.add_argument("--no-install", action="store_true", help="do not pip-install bench/requirements.txt")
    p.add_argument(
        "--chart",
        type=Path,
        default=None,
        help="where to draw the chart of the fanout scenarios (default bench/results/<stamp>.svg)",
    )
    args = p.parse_args()
    if args.targets is None:
        only_multihost = bool(args.scenarios) and all(n == "multihost" for n in args.scenarios)
        args.targets = ["ext-redis"] if only_multihost else list(TARGETS)
    if args.multihost_channels < 1 or args.multihost_hosts < 1 or args.multihost_workers < 1:
        raise SystemExit("--multihost-channels, --multihost-hosts and --multihost-workers must be >= 1")
    for t in args.targets:
        if t not in TARGETS:
            raise SystemExit(f"unknown target {t!r}: choose among {', '.join(TARGETS)}")
    ensure_requirements(args.no_install, args.targets)
    scenarios = build_scenarios(args)
    for sc in scenarios:
        if sc.clients > 15000 or max(sc.counts, default=0) > 15000:
            raise SystemExit("at most 15,000 clients per scenario (open-file limit 20,000 per process)")

    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    runs: List[Dict[str, Any]] = []
    redis_server = RedisServer()
    cluster: Optional[RedisClusterBench] = None
    meta: Dict[str, Any] = {}
    try:
        meta = {
            "timestamp": stamp,
            "argv": sys.argv[1:],
            "cpus": os.cpu_count(),
            "nofile": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0],
            "versions": versions(redis_server),
            "scenarios": [sc.__dict__ for sc in scenarios],
            "targets": args.targets,
        }
        for sc in scenarios:
            for round_ in range(sc.rounds):
                # Each round rotates the order, so no target always runs first or last.
                shift = round_ % len(args.targets)
                for name in args.targets[shift:] + args.targets[:shift]:
                    t0 = time.monotonic()
                    label = f"{sc.name} / {name}" + (
                        f" (round {round_ + 1}/{sc.rounds})" if sc.rounds > 1 else ""
                    )
                    print(f"[{time.monotonic() - started:6.0f}s] {label} ...", file=sys.stderr, flush=True)
                    target = TARGETS[name]
                    if round_ and name == "flask-sse":
                        continue  # one round: a reference, not in any ratio
                    if sc.kind == "multihost":
                        if name != "ext-redis":
                            runs.append(
                                {
                                    "scenario": sc.name,
                                    "target": name,
                                    "round": round_,
                                    "ok": None,
                                    "skipped": "Redis Cluster: ext-redis only",
                                }
                            )
                            continue
                        if cluster is None:
                            try:
                                cluster = RedisClusterBench()
                                meta["versions"]["redis-cluster"] = cluster.version()
                            except Exception as exc:
                                runs.append(
                                    {
                                        "scenario": sc.name,
                                        "target": name,
                                        "round": round_,
                                        "ok": False,
                                        "failure": f"the Redis Cluster did not start: {type(exc).__name__}: {exc}"[
                                            :2000
                                        ],
                                    }
                                )
                                print(
                                    f"         failed: {runs[-1]['failure'][:300]}",
                                    file=sys.stderr,
                                    flush=True,
                                )
                                continue
                        r = run_multihost(sc, target, cluster, args, round_)
                        r["wall_s"] = time.monotonic() - t0
                        runs.append(r)
                        if r.get("ok") is False:
                            print(
                                f"         failed: {r.get('failure', '')[:300]}", file=sys.stderr, flush=True
                            )
                        continue
                    if sc.workers > 1 and target.server != "gunicorn":
                        runs.append(
                            {
                                "scenario": sc.name,
                                "target": name,
                                "round": round_,
                                "ok": None,
                                "skipped": "one process: the bench starts node and uvicorn with one",
                            }
                        )
                        continue
                    if sc.workers > 1 and not target.uses_redis:
                        runs.append(
                            {
                                "scenario": sc.name,
                                "target": name,
                                "round": round_,
                                "ok": None,
                                "skipped": "the in-process broker reaches one process only",
                            }
                        )
                        continue
                    if sc.kind == "redis-clients":
                        r = run_redis_clients(sc, target, redis_server)
                    else:
                        r = run_stream_scenario(sc, target, redis_server, args, stamp, round_)
                    r["round"] = round_
                    r["wall_s"] = time.monotonic() - t0
                    runs.append(r)
                    if r.get("ok") is False:
                        print(f"         failed: {r.get('failure', '')[:300]}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: saving what ran", file=sys.stderr)
    finally:
        redis_server.stop()
        if cluster is not None:
            cluster.stop()
        _cleanup()
    meta["wall_s"] = time.monotonic() - started
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1, default=str))
    print(render_table(scenarios, args.targets, runs))
    fails = failures_text(runs)
    if fails:
        print("\nfailures and errors:\n" + fails)
    logs = server_log_text(runs)
    if logs:
        print("\nserver logs (first lines; all in the JSON):\n" + logs)
    prof = profile_text(runs)
    if prof:
        print("\nprofiles (py-spy, worker, publish phase):\n" + prof)
    if any(sc.kind == "fanout" and sc.workers == 1 for sc in scenarios):
        from chart import render

        chart = args.chart or RESULTS / f"{stamp}.svg"
        render(runs, chart)
        print(f"chart: {chart}")
    print(f"\nsaved {out.relative_to(ROOT)}  ({meta['wall_s']:.0f}s; compare columns within this run only)")


if __name__ == "__main__":
    main()
