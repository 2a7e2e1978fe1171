"""Compressed streams, bytes and CPU: ``python bench/compression_bench.py [--clients 1000]``.

One channel, ``--clients`` streams (bench/loadgen.py), ``--rate`` events a second for
``--seconds``, each about ``--size`` bytes of JSON, published in the worker (bench/ext_app.py,
in-process broker). Three servers, one after the other, each a fresh ``gunicorn -k gevent -w 1``:

- ``plain``: no compression (the load generator does not ask for it);
- ``gzip-once``: ``SSE_COMPRESSION = True``: each event compressed once, shared by every stream;
- ``gzip-per-client``: the extension's compression off, a gzip middleware with one compressor
  per connection instead (bench/gzip_per_client_app.py), the usual way.

For each: bytes the clients received after their streams opened (HTTP framing included) and
the worker's CPU time (``utime + stime``) from the first publish until every client has every event, per
delivery; the worker's RSS; the load generator's latency. Prints a table and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Tuple

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODES = {
    "plain": ("ext_app:app", {}, False),
    "gzip-once": ("ext_app:app", {"SSE_COMPRESSION": True}, True),
    "gzip-per-client": ("gzip_per_client_app:app", {}, True),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(port: int, method: str, path: str, body: Any = None, timeout: float = 600) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read())


def worker_counters(pid: int) -> Tuple[float, int]:
    """CPU seconds and RSS bytes of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def payload(size: int, seed: int = 0) -> str:
    """About ``size`` bytes of JSON, as an app's dashboard rows look: the same keys and hosts
    in every event, values that change from one event to the next."""
    rng = random.Random(seed)
    rows: List[Dict[str, Any]] = []
    text = "[]"
    while len(text) < size:
        n = len(rows)
        rows.append(
            {
                "id": n,
                "host": f"web-{n % 7}",
                "cpu": round(rng.uniform(0, 100), 2),
                "rss_mb": rng.randint(100, 4000),
                "ok": rng.random() > 0.1,
            }
        )
        text = json.dumps(rows)
    return text


def run_mode(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    app, config, gzip = MODES[name]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCH)]), "BENCH_EXT_HOOK": "1"}
    env["BENCH_SSE_CONFIG"] = json.dumps({"SSE_HEARTBEAT_INTERVAL": 15, **config})
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}"]
    cmd += ["--worker-connections", "30000", "--backlog", "4096", "-c", str(BENCH / "gunicorn_bench.py"), app]
    server = subprocess.Popen(cmd, cwd=BENCH, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    loadgen = None
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                pid = http(port, "GET", "/ping", timeout=2)["pid"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        count = int(args.rate * args.seconds)
        lg = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--clients", str(args.clients)]
        lg += ["--expect", str(count), "--drain", "30"] + (["--gzip"] if gzip else [])
        loadgen = subprocess.Popen(lg, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert loadgen.stdout is not None and loadgen.stdin is not None
        ready = json.loads(loadgen.stdout.readline())
        assert ready["ready"] == args.clients, ready
        time.sleep(1)  # let the worker settle after the connection storm
        cpu0, _ = worker_counters(pid)
        schedule = [[i / args.rate, "bench", i] for i in range(count)]
        pads = [payload(args.size, seed) for seed in range(count)]  # every event its own values
        http(port, "POST", "/series", {"schedule": schedule, "pad": pads[0], "pads": pads})
        http(port, "GET", "/series")
        loadgen.stdin.write("done\n")
        loadgen.stdin.flush()
        result = json.loads(loadgen.stdout.readline())
        cpu1, rss = worker_counters(pid)
        delivered = result["delivered"]
        return {
            "mode": name,
            "delivered": delivered,
            "expected": result["expected"],
            "cpu_s": cpu1 - cpu0,
            "cpu_us_per_delivery": (cpu1 - cpu0) / delivered * 1e6,
            "bytes_per_delivery": (result["wire_bytes"] - ready["wire_bytes"]) / delivered,
            "rss_mb": rss / 2**20,
            "p50_ms": result["latency_s"]["p50"] * 1000,
            "p99_ms": result["latency_s"]["p99"] * 1000,
        }
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
        server.send_signal(signal.SIGTERM)
        server.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=3, help="each mode this often, in rotated order")
    args = parser.parse_args()
    modes = args.modes.split(",")
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in modes}
    for round_ in range(args.rounds):
        for name in modes[round_ % len(modes) :] + modes[: round_ % len(modes)]:
            runs[name].append(run_mode(name, args))
    # Per mode, the round with the median CPU per delivery (the machine is shared: noisy).
    rows = [sorted(r, key=lambda row: row["cpu_us_per_delivery"])[len(r) // 2] for r in runs.values()]
    print(
        "CPU us/delivery of every round:",
        {name: [round(r["cpu_us_per_delivery"], 1) for r in rs] for name, rs in runs.items()},
    )
    print(
        f"{args.clients} clients, {args.rate:g} events/s for {args.seconds:g} s, {len(payload(args.size))} B JSON"
    )
    print(
        f"{'mode':16} {'delivered':>10} {'B/delivery':>11} {'CPU us/delivery':>16} {'RSS MB':>7} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for row in rows:
        print(
            f"{row['mode']:16} {row['delivered']:>6}/{row['expected']:<5} {row['bytes_per_delivery']:>9.0f} "
            f"{row['cpu_us_per_delivery']:>16.1f} {row['rss_mb']:>7.0f} {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f}"
        )
    by = {row["mode"]: row for row in rows}
    if "plain" in by:
        base = by["plain"]
        for name, row in by.items():
            if name != "plain":
                print(
                    f"{name}: bytes x{row['bytes_per_delivery'] / base['bytes_per_delivery']:.3f} of plain "
                    f"(ratio {base['bytes_per_delivery'] / row['bytes_per_delivery']:.1f}:1), "
                    f"CPU x{row['cpu_us_per_delivery'] / base['cpu_us_per_delivery']:.2f} of plain"
                )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
