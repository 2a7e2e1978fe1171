"""A real headless Chromium (the ``chromium`` on PATH, Debian's from ``apt-get install chromium``)
driven by Playwright's sync API.

Playwright is used as a library only: ``pip install playwright``, never ``playwright install``
(the browser is the system's; scripts/test installs Debian's). A missing browser fails the test
that asks for it, with the command that installs it: it is never skipped.

Playwright's sync API runs an asyncio event loop in a greenlet and leaves that loop marked as
the thread's running loop between calls. Left so, any later test in the session that runs its
own loop (``asyncio.run``, async views through asgiref) would fail with "cannot be called from
a running event loop". It is therefore marked running only inside ``playwright_loop``, which
the function-scoped ``browser`` fixture enters for a test that uses the browser. The test process must not be
monkey-patched by gevent (the suite runs gevent only inside the gunicorn subprocesses).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Optional

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["chromium_path", "launch_chromium", "playwright_loop"]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these, Chromium's background requests take up connections and many of the
    # test's own connections are refused at once.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Playwright's event loop while no browser test runs (see the module docstring).
_parked_loop: Optional[asyncio.AbstractEventLoop] = None


def _park() -> None:
    global _parked_loop
    loop = asyncio._get_running_loop()
    if loop is not None:
        _parked_loop = loop
        asyncio._set_running_loop(None)


def _unpark() -> None:
    global _parked_loop
    if _parked_loop is not None:
        asyncio._set_running_loop(_parked_loop)
        _parked_loop = None


@contextmanager
def playwright_loop() -> Iterator[None]:
    """Playwright's loop marked running inside the block, and no running loop after it."""
    _unpark()
    try:
        yield
    finally:
        _park()


def chromium_path() -> str:
    """The ``chromium`` on PATH (as scripts/test checks), or the test fails saying how to get it."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not on PATH: the browser tests need a Chromium run as 'chromium' "
            "(on Debian: apt-get install chromium; scripts/test installs it)",
            pytrace=False,
        )
    return path


def _check_environment() -> None:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_anything_patched():
        pytest.fail("gevent monkey-patched the test process: Playwright cannot run", pytrace=False)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        pytest.fail("an asyncio loop runs in the test thread: Playwright's sync API cannot start")


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Start Playwright and a headless Chromium (for the session), with Playwright's loop parked
    outside ``playwright_loop`` blocks; both are stopped on exit."""
    executable = chromium_path()
    _check_environment()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: pip install -e '.[test]' (or pip install playwright)")
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
    except BaseException:
        playwright.stop()
        _park()
        raise
    _park()
    try:
        yield chromium
    finally:
        with playwright_loop():
            try:
                chromium.close()
            finally:
                playwright.stop()
