"""gunicorn settings shared by every bench target (``-c bench/gunicorn_bench.py``).

Only one knob, for experiments: ``BENCH_GC_THRESHOLD=N`` (``run.py --gc-threshold N``) sets
the worker's ``gc.set_threshold(N)`` after the fork; unset, Python's default (700) applies, as
in a real deployment.
"""

import gc
import os


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    threshold = os.environ.get("BENCH_GC_THRESHOLD")
    if threshold:
        gc.set_threshold(int(threshold))
