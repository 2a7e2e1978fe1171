"""Shared fixtures: Flask apps in-process, and real gunicorn gevent servers on loopback."""

from __future__ import annotations

import json
import re
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest
from flask import Flask

from flask_sse_ext import SSE
from conftest_ports import free_port
from redis_server import RedisCluster, RedisServer
from browser import browser, browser_session, page  # noqa: F401
from nginx_server import start_nginx  # noqa: F401
from sse_client import OPEN, request

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class Server:
    """A gunicorn server in a subprocess, with helpers that talk to the test app."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    def publish(self, **fields: Any) -> str:
        status, body = request(self.port, "POST", "/publish", fields)
        assert status == 200, body
        return str(body["id"])  # type: ignore[index]

    def stats(self) -> Dict[str, Any]:
        status, body = request(self.port, "GET", "/stats")
        assert status == 200, body
        return body  # type: ignore[return-value]

    def worker_pids(self, at_least: int = 0) -> List[int]:
        """The master's worker processes (waiting, up to 10 s, until there are ``at_least``)."""
        deadline = time.monotonic() + 10
        while True:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as children:
                pids = [int(pid) for pid in children.read().split()]
            if len(pids) >= at_least or time.monotonic() > deadline:
                return pids
            time.sleep(0.05)

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


def _gunicorn_args() -> List[str]:
    import gunicorn.config

    # gunicorn 25+ opens a control socket at a fixed path unless told not to.
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        return ["--no-control-socket"]
    return []


def start_gunicorn(
    app: str = "apps.stream_app:app",
    config: Optional[Dict[str, Any]] = None,
    workers: int = 1,
    args: Sequence[str] = (),
    env: Optional[Dict[str, str]] = None,
    port: Optional[int] = None,
) -> Server:
    """A gunicorn gevent server on ``port`` (default: a free one), once it accepts connections."""
    port = port or free_port()
    log_path = Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1])
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), environ.get("PYTHONPATH", "")])
    environ["SSE_TEST_CONFIG"] = json.dumps(config or {})
    environ.update(env or {})
    cmd = [
        sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers),
        "-b", f"127.0.0.1:{port}", "--graceful-timeout", "3", *_gunicorn_args(), *args, app,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, port, log_path)
    try:
        wait_for_port(port, proc)
    except RuntimeError:
        server.stop()
        raise RuntimeError(server.log())
    return server


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One gevent worker with the in-process broker and a short heartbeat."""
    srv = start_gunicorn(config={"SSE_HEARTBEAT_INTERVAL": 0.5})
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture
def start_server() -> Iterator[Any]:
    """Start a gunicorn server with its own settings; it is stopped after the test."""
    started: List[Server] = []

    def start(**kwargs: Any) -> Server:
        srv = start_gunicorn(**kwargs)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(autouse=True)
def _close_streams() -> Iterator[None]:
    yield
    while OPEN:
        OPEN[-1].close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, shared by the session."""
    srv = RedisServer()
    yield srv
    srv.cleanup()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop and restart: it keeps its
    data across a restart (append-only file), as a production Redis does."""
    srv = RedisServer("--appendonly", "yes", "--appendfsync", "always")
    yield srv
    srv.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    yield cluster
    cluster.cleanup()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A Redis key prefix of this test's own."""
    return "t" + str(abs(hash(request.node.nodeid)) % 10**10)


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="test")
    return app


@pytest.fixture
def sse(app: Flask) -> SSE:
    return SSE(app)


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> str:
    """A channel name of this test's own, so tests that share a server do not meet."""
    return "t-" + re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:150]
