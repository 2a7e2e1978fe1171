"""Cross-origin EventSource with credentials in a real headless Chromium."""

from __future__ import annotations

import http.server
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from support.client import request
from support.ports import free_port
from support.server import StartServer

if TYPE_CHECKING:
    from playwright.sync_api import Page

PAGE = """<!doctype html><meta charset="utf-8"><title>other origin</title>
<script>
  window.events = [];
  window.errors = 0;
  const source = new EventSource(STREAM_URL, { withCredentials: true });
  window.source = source;
  source.onopen = () => { window.opened = true; };
  source.onmessage = (e) => window.events.push(e.data);
  source.onerror = () => { window.errors += 1; window.state = source.readyState; };
</script>"""


#: The test app, recording the requests it gets (``/requests``).
RECORDING = "support.app:served(record_requests=True)"


class OtherOrigin:
    """A static page server on its own loopback port: another origin than the app's."""

    def __init__(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="origin-"))
        port = free_port()

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args: Any) -> None:
                pass

        self.root = root
        self.origin = f"http://127.0.0.1:{port}"
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Quiet)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, stream_url: str) -> str:
        """The URL of a page of this origin that opens an EventSource on ``stream_url``."""
        (self.root / "page.html").write_text(PAGE.replace("STREAM_URL", repr(stream_url)))
        return f"{self.origin}/page.html"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def other_origin() -> Iterator[OtherOrigin]:
    origin = OtherOrigin()
    yield origin
    origin.close()


def test_allowed_origin_receives_events(
    start_server: StartServer, page: Page, other_origin: OtherOrigin
) -> None:
    server = start_server(config={"SSE_CORS_ORIGINS": [other_origin.origin]})
    page.goto(other_origin.serve(f"http://127.0.0.1:{server.port}/stream?channel=cors"))
    page.wait_for_function("window.opened === true", timeout=5000)
    server.publish(data="across origins", channel="cors")
    page.wait_for_function("window.events.length === 1", timeout=5000)
    assert page.evaluate("window.events") == ["across origins"]
    assert page.evaluate("window.errors") == 0


def test_disallowed_origin_is_refused(
    start_server: StartServer, page: Page, other_origin: OtherOrigin
) -> None:
    server = start_server(app=RECORDING, config={"SSE_CORS_ORIGINS": ["http://127.0.0.1:1"]})
    page.goto(other_origin.serve(f"http://127.0.0.1:{server.port}/stream?channel=cors"))
    # A refused EventSource fails for good: readyState CLOSED (2), no reconnection.
    page.wait_for_function("window.state === 2", timeout=5000)
    assert page.evaluate("[window.events, window.errors, window.opened === true]") == [[], 1, False]
    status, requests = request(server.port, "GET", "/requests?path=/stream")
    assert status == 200
    assert len(requests) == 1, requests  # the one request, refused: the browser never retried
    assert server.stats()["streams"] == 0
