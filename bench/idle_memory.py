"""What an idle stream holds: RSS, traced Python allocations and live objects per stream.

    python bench/idle_memory.py                 # 1,000 idle streams: about 30 seconds
    python bench/idle_memory.py --streams 5000 --top 15

One ``gunicorn -k gevent -w 1`` of ``bench/ext_app.py`` (in-process broker, the project's
hook) with tracemalloc running in the worker (``BENCH_TRACEMALLOC=1``: it slows the worker,
so no timing here). Three measurements of the worker: before any stream, after one stream
opened and closed (the warm-up), and with ``--streams`` idle streams open (``loadgen.py``).
Printed per stream: the RSS it grows by, the part of it tracemalloc sees (Python
allocations, greenlet stacks included: greenlet saves them with Python's allocator), the
allocation sites that hold the most (grouped by the innermost frames), and the objects by
type. What RSS shows beyond the traced part is C memory (libev watchers, malloc overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Dict

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import TARGETS, LoadGen, Server, _cleanup, rss_kib  # noqa: E402


def measure(port: int, path: str) -> Dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/memory?path={path}", timeout=120) as answer:
        return json.load(answer)  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    os.environ["BENCH_TRACEMALLOC"] = "1"
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    server = Server(TARGETS["ext-memory"], "")
    loadgen = None
    try:
        rss = {"start": rss_kib(server.worker)}
        measure(server.port, str(tmp / "start"))
        warm = LoadGen(
            server.port,
            1,
            0,
            TARGETS["ext-memory"],
            private=False,
            drain=1,
            connect_timeout=30,
            max_seconds=60,
        )
        warm.next("ready", 60)
        warm.done()
        warm.next("result", 60)
        warm.stop()
        rss["warm"] = rss_kib(server.worker)
        objects_warm = measure(server.port, str(tmp / "warm"))
        loadgen = LoadGen(
            server.port,
            args.streams,
            0,
            TARGETS["ext-memory"],
            private=False,
            drain=1,
            connect_timeout=120,
            max_seconds=600,
        )
        ready = loadgen.next("ready", 180)
        rss["open"] = rss_kib(server.worker)
        objects_open = measure(server.port, str(tmp / "open"))
    finally:
        if loadgen is not None:
            loadgen.stop()
        server.stop()
        _cleanup()
    n = ready["ready"]
    start = tracemalloc.Snapshot.load(str(tmp / "start"))
    warm_snap = tracemalloc.Snapshot.load(str(tmp / "warm"))
    open_snap = tracemalloc.Snapshot.load(str(tmp / "open"))

    def traced(s: tracemalloc.Snapshot) -> int:
        return sum(stat.size for stat in s.statistics("filename"))

    print(f"{n} idle streams; KiB per stream:")
    print(f"  RSS, from before any stream  {(rss['open'] - rss['start']) / n:8.2f}")
    print(f"  RSS, from after the warm-up  {(rss['open'] - rss['warm']) / n:8.2f}")
    print(f"  traced, from before any      {(traced(open_snap) - traced(start)) / 1024 / n:8.2f}")
    print(f"  traced, from after warm-up   {(traced(open_snap) - traced(warm_snap)) / 1024 / n:8.2f}")
    print(f"  first stream (warm-up)       {(rss['warm'] - rss['start']):8.0f} KiB in all")
    print("\nallocation sites (innermost 3 frames), bytes per stream:")
    for stat in open_snap.compare_to(warm_snap, "traceback")[: args.top]:
        if stat.size_diff <= 0:
            continue
        frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[-3:][::-1])
        print(f"  {stat.size_diff / n:8.0f}  {frames}")
    print("\nobjects per stream, by type:")
    per_type = {t: (objects_open.get(t, 0) - objects_warm.get(t, 0)) / n for t in objects_open}
    for name, count in sorted(per_type.items(), key=lambda kv: -kv[1])[: args.top]:
        if count >= 0.5:
            print(f"  {count:6.2f}  {name}")


if __name__ == "__main__":
    main()
