"""The suite's fixtures, loaded by ``tests/conftest.py`` through ``pytest_plugins``.

In-process: ``app`` (``support.app.create_app()``), ``sse``, ``channel``, ``prefix``.
Real servers, started on free loopback ports: ``server`` (one gunicorn gevent worker for the
session), ``start_server`` (gunicorn with a test's own settings), ``redis_server`` (for the
session), ``own_redis`` (a test's own, to stop and restart), ``redis_cluster``,
``start_nginx``; and a headless Chromium: ``browser``, ``page``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List, Mapping, Optional, Sequence

import pytest
from flask import Flask

from flask_sse_ext import SSE
from support.app import create_app
from support.browser import launch_chromium, playwright_loop
from support.client import OPEN
from support.nginx import NginxServer, StartNginx
from support.redis import RedisCluster, RedisServer
from support.server import APP, Server, StartServer, start_gunicorn

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


# -- in-process --------------------------------------------------------------------------------


@pytest.fixture
def app() -> Flask:
    return create_app()


@pytest.fixture
def sse(app: Flask) -> SSE:
    return SSE(app)


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> str:
    """A channel name of this test's own, so tests that share a server do not meet."""
    return "t-" + re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:150]


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A Redis key prefix of this test's own."""
    return "t" + str(abs(hash(request.node.nodeid)) % 10**10)


@pytest.fixture(autouse=True)
def _close_streams() -> Iterator[None]:
    """Close every ``RawStream`` a test left open."""
    yield
    while OPEN:
        OPEN[-1].close()


# -- gunicorn ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One gevent worker with the in-process broker and a short heartbeat."""
    srv = start_gunicorn(config={"SSE_HEARTBEAT_INTERVAL": 0.5})
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start a gunicorn server with its own settings (see ``start_gunicorn``); it is stopped
    after the test. ``port=`` starts one on a port of the test's choosing, to restart a server
    in place."""
    started: List[Server] = []

    def start(
        app: str = APP,
        config: Optional[Mapping[str, Any]] = None,
        workers: int = 1,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        port: Optional[int] = None,
    ) -> Server:
        srv = start_gunicorn(app=app, config=config, workers=workers, args=args, env=env, port=port)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


# -- Redis -------------------------------------------------------------------------------------


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
    """A three-master Redis Cluster, shared by the session."""
    cluster = RedisCluster()
    yield cluster
    cluster.cleanup()


# -- nginx -------------------------------------------------------------------------------------


@pytest.fixture
def start_nginx() -> Iterator[StartNginx]:
    """Start nginx in front of a gunicorn port: ``start_nginx(server.port)``, or
    ``start_nginx(server.port, site=DOCS_SITE)``; each is stopped after the test."""
    started: List[NginxServer] = []

    def start(upstream_port: int, site: Optional[Path] = None) -> NginxServer:
        srv = NginxServer(upstream_port, site=site)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.cleanup()


# -- Chromium ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_session() -> Iterator[Browser]:
    """One headless Chromium for the session; tests use ``browser`` or ``page``."""
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def browser(browser_session: Browser) -> Iterator[Browser]:
    """The session's Chromium, usable for the duration of this test."""
    with playwright_loop():
        yield browser_session


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh browser context (no shared cookies or cache), closed after the test."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()
