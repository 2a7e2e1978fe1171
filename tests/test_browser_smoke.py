"""A real Chromium's EventSource against the stream under gunicorn: the browser fixture works."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from support.server import StartServer

if TYPE_CHECKING:
    from playwright.sync_api import Page

OPEN_SOURCE = """
(channel) => new Promise((resolve, reject) => {
    const source = new EventSource("/stream?channel=" + encodeURIComponent(channel));
    window.source = source;
    window.received = new Promise((done) => {
        source.onmessage = (e) => done({
            data: e.data, lastEventId: e.lastEventId, origin: e.origin,
        });
    });
    source.onopen = () => resolve(source.readyState);
    source.onerror = () => reject(new Error("EventSource failed, readyState " + source.readyState));
})
"""

RECEIVED = """
() => Promise.race([
    window.received,
    new Promise((_, reject) => setTimeout(() => reject(new Error("no event in 5 s")), 5000)),
]).finally(() => window.source.close())
"""


def test_chromium_event_source_receives_a_published_event(
    start_server: StartServer, page: Page, channel: str
) -> None:
    server = start_server()
    origin = f"http://127.0.0.1:{server.port}"
    # A page of the app's own origin, so that the EventSource needs no CORS.
    response = page.goto(origin + "/stats")
    assert response is not None and response.status == 200
    # onopen fires on the headers and the opening retry: chunk, before any event.
    assert page.evaluate(OPEN_SOURCE, channel) == 1  # EventSource.OPEN
    assert server.stats()["streams"] == 1

    started = time.monotonic()
    event_id = server.publish(data="hello from gunicorn ✓", channel=channel)
    received = page.evaluate(RECEIVED)
    assert time.monotonic() - started < 2
    expected = {"data": "hello from gunicorn ✓", "lastEventId": event_id, "origin": origin}
    assert received == expected
