"""gunicorn integration: hand streams over on shutdown, refuse gunicorn's own HTTP/2, and keep
tokens and tickets out of its logs.

In ``gunicorn.conf.py``::

    from flask_sse_ext.gunicorn import post_worker_init  # noqa: F401  (a server hook)
    logger_class = "flask_sse_ext.gunicorn.RedactingLogger"
"""

from __future__ import annotations

import atexit
import gc
import re
import sys
import threading
import time
from typing import Any, Dict, Tuple

from gunicorn.glogging import Logger

from .hub import shutdown_all
from .serving import HTTP2_REFUSAL
from .state import serve_all

__all__ = ["RedactingLogger", "post_worker_init", "serves_http2"]

_TOKEN = re.compile(r"((?:^|[?&])(?:token|ticket)=)[^&\s\"']*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the value of every ``token=`` and ``ticket=`` query parameter replaced."""
    return _TOKEN.sub(r"\1[redacted]", text)


def _redact_arg(value: Any) -> Any:
    """A log message or argument with its tokens redacted: a str as text; any other object
    (an exception that quotes the request line) replaced by its redacted ``str`` only when
    that ``str`` holds a token, so ``%d`` and friends still get their numbers."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (int, float)):
        return value
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def _redact_all(msg: Any, args: Tuple[Any, ...]) -> Tuple[Any, Tuple[Any, ...]]:
    return _redact_arg(msg), tuple(_redact_arg(arg) for arg in args)


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with ``token=`` and ``ticket=`` values removed from access log lines
    and from error log messages and their arguments: gunicorn logs the request's URI, query
    included, when a request fails ("Error handling request GET /stream?ticket=...") and quotes
    the request line of one it cannot parse."""

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = _redact_all(msg, args)
        super().critical(msg, *args, **kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = _redact_all(msg, args)
        super().error(msg, *args, **kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = _redact_all(msg, args)
        super().warning(msg, *args, **kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = _redact_all(msg, args)
        super().info(msg, *args, **kwargs)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = _redact_all(msg, args)
        super().debug(msg, *args, **kwargs)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = _redact_all(msg, args)
        super().exception(msg, *args, **kwargs)

    def log(self, lvl: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = _redact_all(msg, args)
        super().log(lvl, msg, *args, **kwargs)

    def atoms(self, resp: Any, req: Any, environ: Dict[str, Any], request_time: Any) -> Dict[str, Any]:
        atoms: Dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "q", "U", "{raw_uri}e"):
            if isinstance(atoms.get(key), str):
                atoms[key] = redact(atoms[key])
        return atoms


#: The worker exit code on which gunicorn's arbiter stops for good (``Arbiter.WORKER_BOOT_ERROR``).
_WORKER_BOOT_ERROR = 3


def serves_http2(cfg: Any) -> bool:
    """Whether gunicorn's config lets a client negotiate gunicorn's own HTTP/2 (gunicorn 27+)."""
    protocols = getattr(cfg, "http_protocols", None) or ()
    if "h2" not in protocols:
        return False
    cleartext = getattr(cfg, "http2_cleartext", "off")
    return bool(getattr(cfg, "is_ssl", False)) or cleartext not in ("off", False, None)


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: when this worker starts to stop (SIGTERM, a HUP reload, ``max_requests``),
    end its streams at once, so browsers reconnect to a live worker with ``Last-Event-ID``
    instead of holding this one until ``graceful_timeout``.

    It starts the worker's broker listener (and, with metrics, its shared counters) at once,
    and moves everything loaded so far (the app, its modules) out of the garbage
    collector's sight (``gc.freeze``): a worker with thousands of streams runs full
    collections that stall every stream at once, and these need not scan what lives as long
    as the process anyway.

    A server that can speak its own HTTP/2 (``--http-protocols h2`` with TLS or
    ``--http2-cleartext``) is refused: the worker exits with a boot error and a message that
    says what to do, and gunicorn stops.
    """
    if serves_http2(worker.cfg):
        worker.log.error(HTTP2_REFUSAL)
        sys.exit(_WORKER_BOOT_ERROR)
    # The app is loaded: its listener and shared counters start now, not at the first stream.
    serve_all()
    gc.freeze()
    # Back in sight at exit, so the interpreter's shutdown finalizes them in its usual order.
    atexit.register(gc.unfreeze)

    def watch() -> None:
        while worker.alive:
            time.sleep(0.2)
        shutdown_all()

    threading.Thread(target=watch, name="sse-shutdown-watch", daemon=True).start()
