"""The bench's chart: CPU per delivery and p99 latency by client count, one line per target.

``python bench/chart.py bench/results/<stamp>.json docs/performance.svg`` draws it from a saved
run; ``run.py --chart PATH`` draws it at the end of a run. Each point is the median over the
rounds of a ``fanout-N`` scenario (one worker); matplotlib (bench/requirements.txt) draws it.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

#: Line styles per target, so the peers read the same in every chart.
STYLE = {
    "ext-memory": ("#1f6feb", "o", "flask-sse-ext (in-process broker)"),
    "ext-redis": ("#0a3069", "s", "flask-sse-ext (Redis broker)"),
    "ext-redis-queued": ("#8c959f", "s", "flask-sse-ext (Redis, SSE_DIRECT_WRITES off)"),
    "floor": ("#6e7781", "^", "hand-written gevent floor"),
    "node": ("#2da44e", "D", "Node.js/Express + ioredis"),
    "starlette": ("#bf8700", "v", "sse-starlette on uvicorn/uvloop"),
    "flask-sse": ("#cf222e", "x", "flask-sse"),
}


def points(runs: List[Dict[str, Any]]) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """``{metric: {target: [(clients, median over rounds), ...]}}`` of the fanout scenarios."""
    cells: Dict[Tuple[str, str, int], List[float]] = {}
    for r in runs:
        name = r.get("scenario", "")
        if not r.get("ok") or not name.startswith("fanout-") or not r.get("delivered"):
            continue
        clients = int(name.split("-", 1)[1])
        for metric, value in (
            ("cpu", r.get("cpu_us_per_delivery")),
            ("p99", (r.get("latency_ms") or {}).get("p99")),
        ):
            if isinstance(value, (int, float)):
                cells.setdefault((metric, r["target"], clients), []).append(float(value))
    out: Dict[str, Dict[str, List[Tuple[int, float]]]] = {"cpu": {}, "p99": {}}
    for (metric, target, clients), values in sorted(cells.items()):
        out[metric].setdefault(target, []).append((clients, statistics.median(values)))
    return out


def render(runs: List[Dict[str, Any]], path: Path, title: str = "") -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: a small, diffable SVG
    data = points(runs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in (
        (axes[0], "cpu", "worker CPU per delivery (µs)"),
        (axes[1], "p99", "latency p99 (ms)"),
    ):
        for target, series in data[metric].items():
            color, marker, name = STYLE.get(target, ("black", ".", target))
            xs, ys = zip(*series)
            ax.plot(xs, ys, marker=marker, color=color, label=name)
        ax.set_xscale("log")
        if metric == "p99":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("clients (one channel, 20 events/s)")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(title or "SSE fan-out on one worker, lower is better (medians of the rounds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: python bench/chart.py RESULTS.json OUT.svg|OUT.png")
    saved = json.loads(Path(sys.argv[1]).read_text())
    render(saved["runs"], Path(sys.argv[2]))


if __name__ == "__main__":
    main()
