"""gunicorn settings shared by every bench target (``-c bench/gunicorn_bench.py``).

The flask_sse_ext targets run with the hook the project's ``gunicorn.conf.py`` installs
(``flask_sse_ext.gunicorn.post_worker_init``), as a user deploys them. Two knobs, for experiments: ``BENCH_GC_THRESHOLD=N`` (``run.py --gc-threshold N``) sets the
worker's ``gc.set_threshold(N)`` after the fork; unset, Python's default (700) applies, as in a
real deployment. ``BENCH_GC_LOG=1`` (``run.py --gc-log``) prints every garbage collection of
the worker that took over 1 ms, and every full one, to the server log, which ``run.py`` keeps
in its JSON: a long full collection stalls every stream of the worker at once.
"""

import gc
import os
import sys
import time


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    if os.environ.get("BENCH_TRACEMALLOC"):  # idle_memory.py: who allocated what a stream holds
        import tracemalloc

        tracemalloc.start(12)
    if os.environ.get("BENCH_EXT_HOOK"):  # flask_sse_ext targets: as the project's gunicorn.conf.py
        from flask_sse_ext.gunicorn import post_worker_init as ext_hook

        ext_hook(worker)


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    threshold = os.environ.get("BENCH_GC_THRESHOLD")
    if threshold:
        gc.set_threshold(int(threshold))
    if os.environ.get("BENCH_GC_LOG"):
        gc.callbacks.append(_log_collection)


_started = [0.0]


def _log_collection(phase, info):  # type: ignore[no-untyped-def]
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _started[0]) * 1000
    if ms > 1 or info["generation"] == 2:
        print(f"gc gen{info['generation']} {ms:.1f} ms at {time.time():.3f}", file=sys.stderr, flush=True)
