"""The large run: 50,000 concurrent streams on one small machine, events delivered to all.

    python bench/large.py                          # 50,000 streams, 4 workers: about 5 minutes
    python bench/large.py --streams 20000 --events 5

One ``gunicorn -k gevent -w 4`` of ``bench/ext_app.py`` with the Redis broker (the events
reach all four workers), the project's gunicorn hook, every setting at its default but the
heartbeat, shortened to ``--heartbeat`` (5 s) so that heartbeats flow during the run. The
server listens on 127.0.0.1 to 127.0.0.4 (one port): each of ``--loadgens`` load generator
processes (``loadgen.py``, 20,000 open files each) opens its share of the streams to one of
the addresses, which keeps every (source, destination) pair within the ephemeral ports.
Every stream reads one channel; ``--events`` events are published through Redis
(``flask_sse_ext.Publisher``) at ``--rate`` per second, after a probe stream of this process
has seen a heartbeat with every stream open.

Printed (and saved to ``bench/results/large-<time>.json``): streams open and the time to open
them, streams per worker, delivered/expected, latency p50/p99/max, the workers' RSS before
any stream and with every stream open (KiB per stream), their CPU per delivery, the seconds
until the probe saw a heartbeat, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import (  # noqa: E402
    PAGE_CHANNEL,
    RESULTS,
    TARGETS,
    LoadGen,
    RedisServer,
    Server,
    _cleanup,
    cpu_seconds_precise,
    rss_kib,
)


def heartbeat_probe(host: str, port: int, timeout: float) -> float:
    """Open one stream and return the seconds until its first heartbeat comment arrived."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(f"GET /stream?channel={PAGE_CHANNEL}-probe HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        start, got = time.monotonic(), b""
        while b"\n:" not in got.split(b"\r\n\r\n", 1)[-1]:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("the probe stream ended before a heartbeat")
            got += chunk
        return time.monotonic() - start
    finally:
        sock.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=50000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--loadgens", type=int, default=4)
    p.add_argument("--events", type=int, default=10)
    p.add_argument("--rate", type=float, default=1.0, help="events per second")
    p.add_argument("--heartbeat", type=float, default=5.0, help="SSE_HEARTBEAT_INTERVAL (s)")
    args = p.parse_args()
    per = -(-args.streams // args.loadgens)
    if per > 18000:
        raise SystemExit("at most 18,000 streams per load generator (20,000 open files per process)")
    hosts = [f"127.0.0.{i + 1}" for i in range(args.loadgens)]
    os.environ["BENCH_SSE_CONFIG"] = json.dumps({"SSE_HEARTBEAT_INTERVAL": args.heartbeat})
    redis_server = RedisServer()
    server = None
    loadgens: List[LoadGen] = []
    out: Dict[str, Any] = {"args": vars(args), "load_before": os.getloadavg()}
    try:
        server = Server(
            TARGETS["ext-redis"],
            redis_server.url,
            workers=args.workers,
            also=hosts[1:],
            # A worker stops accepting at its limit (20,000 open files) and leaves the rest to
            # the others: the kernel does not spread connections evenly among them.
            worker_connections=min(18000, args.streams + 10),  # and the probe
        )
        time.sleep(1.0)
        rss_start = {pid: rss_kib(pid) for pid in server.workers}
        connect_timeout = 120 + args.streams / 200
        max_seconds = connect_timeout + 120 + args.events / args.rate * 3
        started = time.time()
        for i, host in enumerate(hosts):
            count = min(per, args.streams - i * per)
            loadgens.append(
                LoadGen(
                    server.port,
                    count,
                    args.events,
                    TARGETS["ext-redis"],
                    private=False,
                    drain=60,
                    connect_timeout=connect_timeout,
                    max_seconds=max_seconds,
                    servers=[f"{host}:{server.port}"],
                )
            )
        ready = [g.next("ready", connect_timeout + 30) for g in loadgens]
        out["open_s"] = time.time() - started
        out["ready"] = sum(r["ready"] for r in ready)
        out["connect_errors"] = [r["errors"] for r in ready if r["errors"]]
        time.sleep(2.0)
        rss_open = {pid: rss_kib(pid) for pid in server.workers}
        out["rss_kib"] = {"start": rss_start, "open": rss_open}
        out["streams_per_worker"] = _streams_per_worker(server.workers)
        out["kib_per_stream"] = (sum(rss_open.values()) - sum(rss_start.values())) / max(1, out["ready"])
        out["heartbeat_probe_s"] = heartbeat_probe("127.0.0.1", server.port, 3 * args.heartbeat + 30)
        out["load_open"] = os.getloadavg()

        from flask_sse_ext import Publisher

        publisher = Publisher(redis_server.url)
        pad = "x" * 70
        cpu0 = sum(cpu_seconds_precise(pid) for pid in server.workers)
        t0 = time.monotonic()
        for seq in range(args.events):
            delay = t0 + seq / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publisher.publish("E%d %.6f %s" % (seq, time.time(), pad), channel=PAGE_CHANNEL)
        publisher.close()
        for g in loadgens:
            g.done()
        results = [g.next("result", max_seconds + 60) for g in loadgens]
        cpu = sum(cpu_seconds_precise(pid) for pid in server.workers) - cpu0
        delivered = sum(r["delivered"] for r in results)
        lat = sorted(x for r in results for x in [r["latency_s"]["p99"]] if x == x)
        out.update(
            {
                "delivered": delivered,
                "expected": sum(r["expected"] for r in results),
                "duplicates": sum(r["duplicates"] for r in results),
                "latency_ms_per_loadgen": [
                    {k: v * 1000 for k, v in r["latency_s"].items() if k != "count"} for r in results
                ],
                "latency_p99_ms_worst_loadgen": lat[-1] * 1000 if lat else None,
                "cpu_us_per_delivery": cpu * 1e6 / delivered if delivered else None,
                "load_end": os.getloadavg(),
            }
        )
    finally:
        for g in loadgens:
            g.stop()
        if server is not None:
            out["server"] = server.stop()
        redis_server.stop()
        _cleanup()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"large-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({k: v for k, v in out.items() if k not in ("server", "args")}, indent=1, default=str))
    print(f"saved {path}")


def _streams_per_worker(pids: List[int]) -> Dict[int, int]:
    """Sockets each worker holds (open files that are sockets): its streams, give or take its
    listening sockets and Redis connections."""
    counts = {}
    for pid in pids:
        count = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                count += os.readlink(fd).startswith("socket:")
            except FileNotFoundError:  # closed meanwhile
                pass
        counts[pid] = count
    return counts


if __name__ == "__main__":
    main()
