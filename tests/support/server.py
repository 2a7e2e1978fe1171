"""The suite's one way to start a server: gunicorn's gevent worker in a subprocess, on loopback.

``start_gunicorn`` serves ``support.app:served()`` (the test views) unless told another app
(``example_app:app``); the ``server`` and ``start_server`` fixtures use it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence

from support.client import request
from support.paths import ROOT, TESTS
from support.ports import free_port
from support.waiting import wait_until

__all__ = ["APP", "Server", "StartServer", "start_gunicorn"]

#: The test app (``support.app``), configured from ``SSE_TEST_CONFIG``.
APP = "support.app:served()"


class Server:
    """A gunicorn server in a subprocess, with helpers that talk to the test app."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, **fields: Any) -> str:
        """``sse.publish(**fields)`` in the server (the test app's ``/publish``); the event's id."""
        status, body = request(self.port, "POST", "/publish", fields)
        assert status == 200, body
        return str(body["id"])

    def stats(self) -> Dict[str, Any]:
        """``sse.stats()`` of the worker that answers, with its ``greenlets``, ``fds`` and ``pid``."""
        status, body = request(self.port, "GET", "/stats")
        assert status == 200, body
        stats: Dict[str, Any] = body
        return stats

    def children(self) -> List[int]:
        """The master's worker processes now."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as children:
            return [int(pid) for pid in children.read().split()]

    def worker_pids(self, at_least: int = 0) -> List[int]:
        """The master's worker processes, once there are ``at_least`` (waiting up to 10 s)."""

        def enough() -> Optional[List[int]]:
            pids = self.children()
            return pids if len(pids) >= at_least else None

        if at_least == 0:
            return self.children()
        return wait_until(enough, timeout=10, message=lambda: f"gunicorn runs workers {self.children()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def listens(self) -> bool:
        """Whether the server accepts connections (raises if the process exited)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True


def _gunicorn_args() -> List[str]:
    import gunicorn.config

    # gunicorn 25+ opens a control socket at a fixed path unless told not to.
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        return ["--no-control-socket"]
    return []


def start_gunicorn(
    app: str = APP,
    config: Optional[Mapping[str, Any]] = None,
    workers: int = 1,
    args: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
    port: Optional[int] = None,
) -> Server:
    """A gunicorn gevent server of ``app`` on ``port`` (default: a free one), once it accepts
    connections. ``config`` reaches the test app as ``SSE_TEST_CONFIG``; ``env`` is added to
    the environment; ``args`` go to gunicorn (``-c gunicorn.conf.py``, ``-k sync``)."""
    port = port or free_port()
    log_path = Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1])
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), environ.get("PYTHONPATH", "")])
    environ["SSE_TEST_CONFIG"] = json.dumps(dict(config or {}))
    environ.update(env or {})
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
    cmd += ["--graceful-timeout", "3", *_gunicorn_args(), *args, app]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, port, log_path)
    try:
        wait_until(server.listens, timeout=20, message=f"nothing listens on port {port}", interval=0.05)
    except (AssertionError, RuntimeError) as exc:
        server.stop()
        raise RuntimeError(f"{exc}\n{server.log()}") from None
    return server


class StartServer(Protocol):
    """The ``start_server`` fixture: ``start_gunicorn``, with the server stopped after the test."""

    def __call__(
        self,
        app: str = APP,
        config: Optional[Mapping[str, Any]] = None,
        workers: int = 1,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        port: Optional[int] = None,
    ) -> Server: ...
