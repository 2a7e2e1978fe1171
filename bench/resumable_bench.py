"""Resumable logs on a real Redis: how fast an owner appends, and how soon a waiting reader
sees an event. Run: ``python bench/resumable_bench.py redis://127.0.0.1:6379/0``.

Figures are for one owner and one reader in one process (threads), over loopback; they show
the cost of a log next to a plain publish, not a capacity.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from typing import List

from flask_sse_ext.brokers import open_broker


def main(url: str, count: int = 2000) -> None:
    broker = open_broker(url, prefix="bench-resumable")
    log = f"j.bench-{time.time_ns()}"
    broker.log_create(log, {"kind": "job", "owner": ""}, 60)
    started = time.perf_counter()
    for i in range(count):
        broker.log_append(log, b"data: %d\n" % i, 60)
    appended = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(count):
        broker.publish("bench-resumable", b"data: %d\n" % i)
    published = time.perf_counter() - started
    print(f"append: {count / appended:,.0f} events/s ({appended / count * 1e6:.0f} us each)")
    print(f"publish (for comparison): {count / published:,.0f} events/s")

    live = f"j.bench-live-{time.time_ns()}"
    broker.log_create(live, {"kind": "job", "owner": ""}, 60)
    delays: List[float] = []
    sent: List[float] = []

    def read() -> None:
        after = (0, 0)
        while len(delays) < 200:
            entries = broker.log_read(live, after, 1.0) or []
            for _ in entries:
                delays.append(time.perf_counter() - sent[len(delays)])
            if entries:
                after = entries[-1].position

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        time.sleep(0.005)  # a token every 5 ms: the reader is waiting each time
        sent.append(time.perf_counter())
        broker.log_append(live, b"data: %d\n" % i, 60)
    reader.join()
    delays.sort()
    print(
        f"append -> waiting reader: median {statistics.median(delays) * 1e3:.2f} ms, "
        f"p99 {delays[int(len(delays) * 0.99) - 1] * 1e3:.2f} ms"
    )
    broker.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0")
