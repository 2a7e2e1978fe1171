"""Stalled clients: N clients that never read next to readers, 16 KB events, one worker.

    python bench/stalled.py                      # 1,000 stalled, 100 readers: about 1.5 minutes
    python bench/stalled.py --stalled 200 --seconds 10
    python bench/stalled.py --rate 2 --rounds 3   # the p99 ratio as the median of 3 pairs

Two runs on a fresh ``gunicorn -k gevent -w 1`` of ``bench/ext_app.py`` (in-process broker,
the extension's defaults: ``SSE_SEND_TIMEOUT`` 10 s, ``SSE_CLIENT_QUEUE_BYTES`` 1 MiB,
history 1,000 events, filled before the baseline): the readers alone, then the readers plus
the stalled clients. A stalled client (a process of its own, ``--stall-child``) opens its
stream with a 4 KB receive buffer and never reads; it watches its sockets' TCP state and
closes each once the server has reset it. Printed: when the stalled clients were reset, the
worker's RSS and the kernel's TCP memory (``/proc/net/sockstat``, pages) against their
baseline over time and when they came back to it, and the readers' latency with and without
the stalled clients (p99 ratio). The JSON goes to ``bench/results/stalled-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from run import _gunicorn_args, children, free_port, rss_kib  # noqa: E402

PAD = "x" * (16 * 1024 - 32)
CHANNEL = "news"
SEND_TIMEOUT = 10.0  # the extension's default SSE_SEND_TIMEOUT
TCP_CLOSE = 7


def tcp_mem_pages() -> int:
    """The kernel's TCP buffer memory, in pages (``/proc/net/sockstat``: ``TCP: ... mem N``)."""
    with open("/proc/net/sockstat") as sockstat:
        for line in sockstat:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1])
    raise RuntimeError("no TCP line in /proc/net/sockstat")


def _post(port: int, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def _get(port: int, path: str, timeout: float = 60) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
        return json.load(answer)


def _series(port: int, count: int, rate: float) -> None:
    """Publish ``count`` events from the worker at ``rate`` per second (0: back to back)."""
    schedule = [[i / rate if rate else 0.0, CHANNEL, i] for i in range(count)]
    _post(port, "/series", {"schedule": schedule, "pad": PAD})


def stall_child(port: int, count: int) -> None:
    """``--stall-child``: ``count`` streams that never read. Prints ``ready`` once every request
    is sent, then ``{"reset_at": [...]}`` (epoch seconds; ``null`` for one never reset) on
    ``done``."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET /stream?channel={CHANNEL} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        socks.append(sock)
    print(json.dumps({"phase": "ready"}), flush=True)
    reset_at: List[Optional[float]] = [None] * count
    # Woken only by a reset (EPOLLERR and EPOLLHUP are always reported; not EPOLLIN: the unread
    # data is always there) or by ``done``: polling every socket's TCP state instead took this
    # process a few milliseconds every 50 ms, on the cores the readers need.
    poller = select.epoll()
    poller.register(sys.stdin.fileno(), select.EPOLLIN)
    index = {sock.fileno(): i for i, sock in enumerate(socks)}
    for fd in index:
        poller.register(fd, select.EPOLLRDHUP)
    done = False
    while not done:
        for fd, _ in poller.poll():
            if fd == sys.stdin.fileno():
                done = True
                continue
            sock = socks[index[fd]]
            state = struct.unpack_from("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8))[0]
            if state == TCP_CLOSE:
                reset_at[index[fd]] = time.time()
            poller.unregister(fd)  # a FIN (never sent by the server here) is not a reset
            sock.close()  # its receive buffer is ours to free
    print(json.dumps({"phase": "result", "reset_at": reset_at}), flush=True)


class Child:
    """A helper process speaking one JSON object per line."""

    def __init__(self, cmd: List[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def next(self, phase: str) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message: Dict[str, Any] = json.loads(line)
            if message.get("phase") == phase:
                return message
        raise RuntimeError(f"{self.proc.args[1]} exited before {phase!r}")

    def done(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run_once(args: argparse.Namespace, stalled: int) -> Dict[str, Any]:
    port = free_port()
    env = dict(os.environ, BENCH_EXT_HOOK="1", BENCH_SSE_CONFIG=args.config)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("BENCH_REDIS_URL", None)
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}"]
    cmd += ["--worker-connections", "30000", "--backlog", "4096", "--log-level", "warning"]
    cmd += ["-c", str(BENCH / "gunicorn_bench.py"), *_gunicorn_args(), "ext_app:app"]
    server = subprocess.Popen(cmd, cwd=BENCH, env=env)
    helpers: List[Child] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                worker = _get(port, "/ping", timeout=2)["pid"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert children(server.pid) == [worker]
        # History full before the baseline: it holds 1,000 events of 16 KB by design.
        _series(port, 1000, 0)
        _get(port, "/series")
        count = int(args.rate * args.seconds)
        loadgen = Child(
            [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--clients", str(args.readers),
             "--channel", CHANNEL, "--expect", str(count), "--drain", "30", "--max-seconds", "600"]
        )  # fmt: skip
        helpers.append(loadgen)
        loadgen.next("ready")
        time.sleep(1)  # settle: the readers' first chunks written, the worker idle
        unconnected = {"rss_kib": rss_kib(worker), "tcp_mem_pages": tcp_mem_pages()}
        stall: Optional[Child] = None
        if stalled:
            stall = Child([sys.executable, __file__, "--stall-child", str(port), "--stalled", str(stalled)])
            helpers.append(stall)
            stall.next("ready")
            while _get(port, "/stats")["streams"] < args.readers + stalled:
                time.sleep(0.1)
            time.sleep(1)
        # The baseline: every client connected, before the first event.
        base_rss, base_mem = rss_kib(worker), tcp_mem_pages()
        started = time.time()
        _series(port, count, args.rate)
        samples = []
        waiter = threading.Thread(target=_get, args=(port, "/series"), daemon=True)
        waiter.start()
        timeout = json.loads(args.config).get("SSE_SEND_TIMEOUT", SEND_TIMEOUT)
        stop_at = time.monotonic() + args.seconds + timeout + args.settle
        while time.monotonic() < stop_at:
            samples.append((time.time() - started, rss_kib(worker) - base_rss, tcp_mem_pages() - base_mem))
            time.sleep(0.25)
        waiter.join(60)
        stats = _get(port, "/stats")
        loadgen.done()
        readers = loadgen.next("result")
        reset: List[Optional[float]] = []
        if stall is not None:
            stall.done()
            reset = [None if t is None else t - started for t in stall.next("result")["reset_at"]]
        return {
            "stalled": stalled,
            "readers": args.readers,
            "events": count,
            "rate": args.rate,
            "baseline": {"rss_kib": base_rss, "tcp_mem_pages": base_mem},
            "before_stalled_connected": unconnected,
            "samples": samples,
            "reset_s": reset,
            "stats": stats,
            "latency_s": readers["latency_s"],
            "slowest_events": readers["slowest_events"],
            "loss": readers["loss"],
        }
    finally:
        for helper in helpers:
            helper.stop()
        server.terminate()
        server.wait(15)


def _back_at(samples: List[Any], index: int, within: float) -> Optional[float]:
    """The first time after which every sample's ``index`` stays within ``within`` of the baseline."""
    back = None
    for sample in samples:
        if sample[index] > within:
            back = None
        elif back is None:
            back = sample[0]
    return back


def _s(seconds: Optional[float]) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def report(alone: Dict[str, Any], crowded: Dict[str, Any], args: argparse.Namespace) -> str:
    resets = [t for t in crowded["reset_s"] if t is not None]
    peak_rss = max(s[1] for s in crowded["samples"])
    peak_mem = max(s[2] for s in crowded["samples"])
    rss_back = _back_at(crowded["samples"], 1, 2048)
    # The readers' own data in flight comes and goes: "back" is no more than with the readers alone.
    readers_mem = max(s[2] for s in alone["samples"])
    mem_back = _back_at(crowded["samples"], 2, readers_mem)
    last_rss = crowded["samples"][-1][1]
    unconnected = crowded["before_stalled_connected"]["rss_kib"] - crowded["baseline"]["rss_kib"]
    p99_alone, p99_crowded = alone["latency_s"]["p99"], crowded["latency_s"]["p99"]
    lines = [
        f"{crowded['stalled']} stalled clients + {crowded['readers']} readers, {crowded['events']} events of 16 KB "
        f"at {args.rate:g}/s, one worker, settings {args.config}",
        f"stalled clients reset: {len(resets)}/{crowded['stalled']}, first at {min(resets, default=0):.2f} s, "
        f"last at {max(resets, default=0):.2f} s after the first event "
        f"(lagged {crowded['stats']['lagged']}, timed_out {crowded['stats']['timed_out']})",
        f"worker RSS over baseline ({crowded['baseline']['rss_kib']} kB, every client connected): peak "
        f"+{peak_rss} kB, back within 2 MB from {_s(rss_back)} on, at the end {last_rss:+d} kB "
        f"(before the stalled clients connected: {unconnected:+d} kB)",
        f"kernel TCP memory over baseline ({crowded['baseline']['tcp_mem_pages']} pages): peak +{peak_mem} pages "
        f"({peak_mem * 4 / 1024:.1f} MB), back to the readers-alone level (+{readers_mem}) from {_s(mem_back)} on, "
        f"at the end {crowded['samples'][-1][2]:+d} pages",
        f"reader latency p50/p99: alone {alone['latency_s']['p50'] * 1000:.1f}/{p99_alone * 1000:.1f} ms, "
        f"with stalled {crowded['latency_s']['p50'] * 1000:.1f}/{p99_crowded * 1000:.1f} ms, "
        f"p99 ratio {p99_crowded / p99_alone:.2f}; reader loss {alone['loss']:.3f} / {crowded['loss']:.3f}",
        "slowest events (seq: ms, at seq / rate s): alone "
        + ", ".join(f"{e['seq']}: {e['max_s'] * 1000:.0f}" for e in alone["slowest_events"])
        + "; with stalled "
        + ", ".join(f"{e['seq']}: {e['max_s'] * 1000:.0f}" for e in crowded["slowest_events"]),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stalled", type=int, default=1000)
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time (default 20)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds watched after the deadline")
    parser.add_argument("--config", default="{}", help="SSE_* settings as JSON: '{\"SSE_SEND_TIMEOUT\": 5}'")
    parser.add_argument("--rounds", type=int, default=1, help="alone + stalled pairs; the p99 ratio's median")
    parser.add_argument("--stall-child", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stall_child:
        stall_child(args.stall_child, args.stalled)
        return
    rounds = []
    for number in range(1, args.rounds + 1):
        alone = run_once(args, 0)
        crowded = run_once(args, args.stalled)
        text = report(alone, crowded, args)
        print(f"round {number}:\n{text}" if args.rounds > 1 else text, flush=True)
        rounds.append({"alone": alone, "stalled": crowded, "report": text})
    if args.rounds > 1:
        ratios = [r["stalled"]["latency_s"]["p99"] / r["alone"]["latency_s"]["p99"] for r in rounds]
        print(
            f"p99 ratio per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}"
        )
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    path = results / time.strftime("stalled-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps({"rounds": rounds}, indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
