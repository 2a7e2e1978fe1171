"""SSE load generator: N concurrent streams over raw gevent sockets, one JSON report on stdout.

Run as its own process by ``bench/run.py`` (it never shares a CPU-bound interpreter with the
server or the publisher). It opens ``--clients`` HTTP/1.1 ``GET /stream?channel=...``
connections to 127.0.0.1 (or to several servers: ``--targets``), decodes chunked bodies, parses
SSE events, and for every event whose data is ``E<seq> <unix time> ...`` (what the bench
publisher sends) records the latency ``receive time - stamp``.

Which stream reads what: every client reads ``--channel``; or client i reads
``<--private-prefix><i>``; or, with ``--channels a,b,c`` (K names), client i reads the
``i % K``-th name. With ``--targets h1:p1,h2:p2`` (H servers), client i connects to the
``(i // K) % H``-th (K = 1 without ``--channels``), so every channel has readers on every
server. ``--expect`` is the number of events each client must get (sequence numbers
``0..expect-1`` on its channel).

Protocol with the parent (all JSON, one object per line on stdout):

1. ``{"phase": "ready", ...}`` once every stream is open (headers received; with
   ``--ready sent``, once every request is sent: for servers that send no headers until the
   first event) or has failed, or ``--connect-timeout`` passed.
2. The parent publishes, then writes ``done`` on our stdin (EOF counts as ``done``).
3. ``{"phase": "result", ...}`` once every client has every expected event after ``done``, or
   ``--drain`` seconds after ``done``, or ``--max-seconds`` after start, whichever is first.
   Then the process exits (the kernel closes the sockets).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import sys
import time
import zlib
from array import array

import gevent
from gevent import socket
from gevent.event import Event
from gevent.lock import Semaphore

CRLF = b"\r\n"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Stats:
    def __init__(self, n: int, expect: int) -> None:
        self.n = n
        self.expect = expect
        self.received = array("l", [0]) * n  # unique expected events per client
        self.duplicates = 0
        self.unexpected = 0  # events with our format but a sequence out of range
        self.other_events = 0  # events that are not ours (for example sse.missed)
        self.latencies = array("d")
        #: Bytes received on every socket (the wire: HTTP framing and compression included).
        self.wire_bytes = 0
        self.event_max = array("d", [0.0]) * expect  # slowest delivery of each event
        self.first_delivery = 0.0
        self.cpu_at_first_delivery = 0.0
        self.last_delivery = 0.0
        self.errors: dict = {}
        self.client_errors = 0
        self.ready_count = 0
        self.settled = 0  # clients that are ready or failed
        self.all_settled = Event()
        self.complete = 0
        self.all_complete = Event()
        if expect == 0:
            self.all_complete.set()

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def settle(self) -> None:
        self.settled += 1
        if self.settled >= self.n:
            self.all_settled.set()


def _errname(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timeout"
    code = getattr(exc, "errno", None)
    if code is not None and code in errno.errorcode:
        return errno.errorcode[code]
    return type(exc).__name__


class Client:
    """One stream: HTTP response head, chunked decoding, SSE parsing."""

    __slots__ = (
        "i",
        "stats",
        "seen",
        "head",
        "chunked",
        "need",
        "skip",
        "raw",
        "sse",
        "skip_lf",
        "failed",
        "gz",
    )

    def __init__(self, i: int, stats: Stats, gz: bool = False) -> None:
        self.i = i
        self.stats = stats
        self.seen = bytearray(stats.expect)
        self.head = bytearray()
        self.chunked: object = None  # None until the head is parsed
        self.need = 0  # chunk payload bytes still to come
        self.skip = 0  # CRLF bytes after a chunk still to come
        self.raw = b""  # undecoded chunked framing
        self.sse = b""  # decoded body not yet parsed into events (line ends made LF)
        self.skip_lf = False
        self.failed = False
        #: With ``--gzip``: the body is a gzip stream, decoded as it comes.
        self.gz = zlib.decompressobj(16 + zlib.MAX_WBITS) if gz else None

    # -- HTTP -----------------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> bool:
        """Feed received bytes; False when the response cannot be streamed (bad status)."""
        if self.chunked is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.stats.error("header_too_large")
                    return False
                return True
            head = bytes(self.head[:end]).decode("latin-1")
            rest = bytes(self.head[end + 4 :])
            self.head = bytearray()
            lines = head.split("\r\n")
            parts = lines[0].split(" ", 2)
            status = parts[1] if len(parts) > 1 else "?"
            if status != "200":
                self.stats.error("http_" + status)
                return False
            lowered = [h.lower() for h in lines[1:]]
            self.chunked = any(h.startswith("transfer-encoding:") and "chunked" in h for h in lowered)
            data = rest
            if not data:
                return True
        if self.chunked:
            self._dechunk(data, now)
        else:
            self._body(data, now)
        return True

    def _body(self, data: bytes, now: float) -> None:
        if self.gz is not None:
            data = self.gz.decompress(data)
        if data:
            self._events(data, now)

    def _dechunk(self, data: bytes, now: float) -> None:
        buf = self.raw + data if self.raw else data
        self.raw = b""
        pos = 0
        end = len(buf)
        out = []
        while pos < end:
            if self.skip:
                take = min(self.skip, end - pos)
                self.skip -= take
                pos += take
                continue
            if self.need:
                take = min(self.need, end - pos)
                out.append(buf[pos : pos + take])
                self.need -= take
                pos += take
                if not self.need:
                    self.skip = 2
                continue
            nl = buf.find(CRLF, pos)
            if nl < 0:
                self.raw = buf[pos:]
                break
            size_text = buf[pos:nl].split(b";", 1)[0].strip()
            pos = nl + 2
            try:
                size = int(size_text, 16)
            except ValueError:
                self.stats.error("bad_chunk_size")
                self.raw = b""
                break
            if size == 0:
                # Last chunk: the response ended. The read loop sees EOF or keep-alive.
                self.skip = 0
                break
            self.need = size
        if out:
            self._body(out[0] if len(out) == 1 else b"".join(out), now)

    # -- SSE ------------------------------------------------------------------------------

    def _events(self, data: bytes, now: float) -> None:
        if self.skip_lf:
            # The last bytes ended in CR, taken as a line end: an LF right after it is the
            # rest of a CRLF, not a second line end.
            self.skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        buf = self.sse + data if self.sse else data
        if b"\r" in data:  # (self.sse is kept normalized)
            # The spec allows CRLF, LF and CR line ends: make them all LF.
            self.skip_lf = data.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        blocks = buf.split(b"\n\n")
        self.sse = blocks.pop()
        stats = self.stats
        for block in blocks:
            if not block:
                continue
            data_lines = []
            event_type = b"message"
            for line in block.split(b"\n"):
                if not line or line[0] == 58:  # empty, or ':' comment (heartbeat)
                    continue
                field, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if field == b"data":
                    data_lines.append(value)
                elif field == b"event":
                    event_type = value
            if not data_lines:
                continue  # no data: nothing is dispatched (for example a lone retry:)
            payload = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
            if event_type != b"message" or payload[:1] != b"E":
                stats.other_events += 1
                continue
            fields = payload.split(b" ", 2)
            try:
                seq = int(fields[0][1:])
                stamp = float(fields[1])
            except (ValueError, IndexError):
                stats.other_events += 1
                continue
            if not 0 <= seq < stats.expect:
                stats.unexpected += 1
                continue
            if self.seen[seq]:
                stats.duplicates += 1
                continue
            self.seen[seq] = 1
            latency = now - stamp
            stats.latencies.append(latency)
            if latency > stats.event_max[seq]:
                stats.event_max[seq] = latency
            if not stats.first_delivery:
                stats.first_delivery = now
                stats.cpu_at_first_delivery = _cpu()
            stats.last_delivery = now
            count = stats.received[self.i] + 1
            stats.received[self.i] = count
            if count == stats.expect:
                stats.complete += 1
                if stats.complete >= stats.n:
                    stats.all_complete.set()


def channel_of(i: int, args: argparse.Namespace) -> str:
    if args.channels:
        return str(args.channels[i % len(args.channels)])
    return str(args.channel) if args.private_prefix is None else f"{args.private_prefix}{i}"


def target_of(i: int, args: argparse.Namespace) -> int:
    """Index in ``args.targets`` of the server client ``i`` connects to."""
    return (i // max(1, len(args.channels or ()))) % len(args.targets)


def run_client(i: int, args: argparse.Namespace, stats: Stats, gate: Semaphore) -> None:
    client = Client(i, stats, args.gzip)
    channel = channel_of(i, args)
    host, port = args.targets[target_of(i, args)]
    request = (
        f"GET {args.path}?channel={channel} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
        + ("Accept-Encoding: gzip\r\n" if args.gzip else "")
        + "\r\n"
    ).encode()
    sock = None
    settled = False
    gate.acquire()
    try:
        try:
            sock = socket.create_connection((host, port), timeout=args.connect_timeout)
            sock.sendall(request)
            if args.ready == "headers":
                # Read until the response head has arrived (it may carry body bytes too).
                while client.chunked is None:
                    data = sock.recv(65536)
                    if not data:
                        stats.error("eof_before_headers")
                        client.failed = True
                        break
                    if not client.feed(data, time.time()):
                        client.failed = True
                        break
        except Exception as exc:  # connect/recv failures are results, not crashes
            stats.error("open_" + _errname(exc))
            client.failed = True
        if not client.failed:
            stats.ready_count += 1
        settled = True
        stats.settle()
    finally:
        gate.release()
        if not settled:
            stats.settle()
    if client.failed:
        stats.client_errors += 1
        if sock is not None:
            sock.close()
        return
    sock.settimeout(None)
    try:
        while True:
            data = sock.recv(65536)
            stats.wire_bytes += len(data)
            if not data:
                if stats.received[i] < stats.expect:
                    stats.error("eof_before_complete")
                    stats.client_errors += 1
                return
            if not client.feed(data, time.time()):
                stats.client_errors += 1
                return
    except Exception as exc:
        stats.error("recv_" + _errname(exc))
        stats.client_errors += 1
    finally:
        sock.close()


def _percentile(sorted_values: list, q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, help="the server's port on 127.0.0.1 (or --targets)")
    p.add_argument(
        "--targets",
        default=None,
        help="comma list of HOST:PORT servers instead of --port; client i connects to "
        "the (i // K) %% H-th (K: --channels names, else 1; H: servers)",
    )
    p.add_argument("--path", default="/stream")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--channel", default="bench", help="the one channel every client reads")
    p.add_argument(
        "--private-prefix", default=None, help="client i reads channel PREFIX<i> instead of --channel"
    )
    p.add_argument(
        "--channels",
        type=lambda v: [c for c in v.split(",") if c],
        default=None,
        help="comma list of K channels: client i reads the (i %% K)-th",
    )
    p.add_argument("--expect", type=int, required=True, help="events each client should get")
    p.add_argument("--ready", choices=("headers", "sent"), default="headers")
    p.add_argument(
        "--connect-concurrency", type=int, default=500, help="connections in flight (not yet ready) at once"
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        help="seconds for one connection to become ready, and for all of them",
    )
    p.add_argument(
        "--drain", type=float, default=10.0, help="seconds to wait for missing events after 'done'"
    )
    p.add_argument("--max-seconds", type=float, default=300.0, help="hard bound on the run")
    p.add_argument("--gzip", action="store_true", help="send Accept-Encoding: gzip and decode the stream")
    args = p.parse_args()
    if not 0 < args.clients <= 50000:
        p.error("--clients must be 1..50000")
    if args.targets:
        args.targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in args.targets.split(",") if t]
    elif args.port:
        args.targets = [("127.0.0.1", args.port)]
    else:
        p.error("give --port or --targets")

    started = time.time()
    cpu_start = _cpu()
    hard_deadline = time.monotonic() + args.max_seconds
    stats = Stats(args.clients, args.expect)
    gate = Semaphore(max(1, args.connect_concurrency))
    for i in range(args.clients):
        gevent.spawn(run_client, i, args, stats, gate)

    stats.all_settled.wait(min(args.connect_timeout, args.max_seconds))
    ready_at = time.time()
    _emit(
        {
            "phase": "ready",
            "start": started,
            "ready_at": ready_at,
            "accept_s": ready_at - started,
            "ready": stats.ready_count,
            "clients": args.clients,
            "all_settled": stats.all_settled.is_set(),
            "errors": dict(stats.errors),
            "wire_bytes": stats.wire_bytes,
        }
    )

    done = Event()

    def read_stdin() -> None:
        from gevent.fileobject import FileObjectPosix

        stdin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
        try:
            while True:
                line = stdin.readline()
                if not line or line.strip() == b"done":
                    break
        except Exception:
            pass
        done.set()

    gevent.spawn(read_stdin)
    cpu_ready = _cpu()
    done.wait(max(0.0, hard_deadline - time.monotonic()))
    done_at = time.time()
    drain_deadline = min(hard_deadline, time.monotonic() + args.drain)
    stats.all_complete.wait(max(0.0, drain_deadline - time.monotonic()))
    finished = time.time()
    cpu_end = _cpu()
    timed_out = not stats.all_complete.is_set()
    if not stats.all_settled.is_set():
        stats.error("not_ready_in_time")

    expected = args.clients * args.expect
    delivered = sum(stats.received)
    missing = [args.expect - r for r in stats.received]
    lossy = [m for m in missing if m > 0]
    worst = sorted(range(args.clients), key=lambda i: missing[i], reverse=True)[:5]
    lat = sorted(stats.latencies)
    per_target: "dict[str, dict[str, int]]" = {}
    for i in range(args.clients):
        host, port = args.targets[target_of(i, args)]
        entry = per_target.setdefault(f"{host}:{port}", {"clients": 0, "delivered": 0, "expected": 0})
        entry["clients"] += 1
        entry["delivered"] += stats.received[i]
        entry["expected"] += args.expect
    result = {
        "phase": "result",
        "clients": args.clients,
        "ready": stats.ready_count,
        "accept_s": ready_at - started,
        "expected": expected,
        "delivered": delivered,
        "loss": (expected - delivered) / expected if expected else 0.0,
        "per_client_loss": {
            "clients_complete": args.clients - len(lossy),
            "clients_lossy": len(lossy),
            "clients_got_nothing": sum(1 for r in stats.received if r == 0) if args.expect else 0,
            "max_missing": max(missing) if missing else 0,
            "mean_missing": (sum(lossy) / args.clients) if args.clients else 0.0,
            "worst": [{"client": i, "received": stats.received[i]} for i in worst if missing[i]],
        },
        "per_target": per_target,
        "duplicates": stats.duplicates,
        "wire_bytes": stats.wire_bytes,
        "unexpected": stats.unexpected,
        "other_events": stats.other_events,
        "latency_s": {
            "count": len(lat),
            "p50": _percentile(lat, 0.50),
            "p95": _percentile(lat, 0.95),
            "p99": _percentile(lat, 0.99),
            "max": lat[-1] if lat else float("nan"),
            "mean": (sum(lat) / len(lat)) if lat else float("nan"),
        },
        # The events whose last delivery came latest: one slow fan-out shows here.
        "slowest_events": [
            {"seq": seq, "max_s": stats.event_max[seq]}
            for seq in sorted(range(args.expect), key=lambda i: stats.event_max[i], reverse=True)[:5]
        ],
        "first_delivery": stats.first_delivery or None,
        "last_delivery": stats.last_delivery or None,
        "start": started,
        "ready_at": ready_at,
        "done_at": done_at,
        "finished": finished,
        "timed_out": timed_out,
        "client_errors": stats.client_errors,
        "errors": stats.errors,
        "loadgen_cpu_s": {"connect": cpu_ready - cpu_start, "receive": cpu_end - cpu_ready},
        "loadgen_receive_wall_s": finished - ready_at,
        # Our CPU share between the first and the last delivery: near 100 %, the load
        # generator (not the server) limits the measured latency and throughput.
        "loadgen_busy_pct": (
            100.0 * (cpu_end - stats.cpu_at_first_delivery) / (stats.last_delivery - stats.first_delivery)
            if stats.last_delivery > stats.first_delivery
            else None
        ),
    }
    _emit(result)
    sys.stdout.flush()
    os._exit(0)  # the kernel closes every socket at once; no greenlet teardown


if __name__ == "__main__":
    main()
