"""The example app under gunicorn's gevent worker, driven by a real headless Chromium.

Each test starts ``example_app:app`` with ``gunicorn.conf.py`` (so a stopping worker ends its
streams at once, as in production) and configures it through the environment, as a deployment
would. The dashboard test also takes a screenshot (into ``docs/screenshot.png`` with
``SSE_UPDATE_SCREENSHOT=1``).

A stopping worker ends its streams at once (``post_worker_init``), but a browser that
reconnects over one of its kept-alive connections reaches that same worker again, and gunicorn
still serves the request: that stream ends right after it opens, and the browser tries again,
once per idle connection it holds. The restart tests allow for those short-lived reconnections.
"""

from __future__ import annotations

import http.client
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from flask_sse_ext import Publisher
from support.client import request
from support.paths import ROOT
from support.ports import free_port
from support.redis import RedisServer
from support.server import Server, StartServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

APP = "example_app:app"
CONF = ["-c", str(ROOT / "gunicorn.conf.py")]
#: The README's and the Quickstart's picture of the dashboard. The dashboard test writes it
#: only when SSE_UPDATE_SCREENSHOT=1 (to refresh it after a change to the page), so that a
#: test run leaves a clone clean; otherwise it writes into the test's tmp_path.
SCREENSHOT = ROOT / "docs" / "screenshot.png"
#: The dashboard's count of metric samples received.
SAMPLES = "Number(document.getElementById('samples').textContent)"


def text(page: Page, selector: str) -> str:
    """The text content of the element ``selector`` finds."""
    content = page.text_content(selector)
    assert content is not None, selector
    return content


def attribute(page: Page, selector: str, name: str) -> str:
    value = page.get_attribute(selector, name)
    assert value is not None, (selector, name)
    return value


def wait_open(page: Page) -> None:
    page.wait_for_selector("#conn-state[data-state=open]", timeout=10_000)


def sign_in(page: Page, base: str, name: str, then: str = "/notifications") -> None:
    page.goto(f"{base}/login?next={then}")
    page.get_by_role("button", name=f"Sign in as {name}").click()
    page.wait_for_url(base + then)
    wait_open(page)


def feed(page: Page) -> List[str]:
    """The broadcast messages on the dashboard, newest first, without their times."""
    texts: List[str] = page.eval_on_selector_all(
        "#messages li:not(.empty)", "items => items.map(li => li.lastChild.textContent)"
    )
    return texts


# --- Dashboard --------------------------------------------------------------------------------


def test_dashboard_chart_grows_with_metric_events(
    start_server: StartServer, browser: Browser, tmp_path: Path
) -> None:
    screenshot = SCREENSHOT if os.environ.get("SSE_UPDATE_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
    server = start_server(app=APP, args=CONF, env={"METRICS_INTERVAL": "0.1"})
    base = server.url
    alice = browser.new_context(viewport={"width": 1000, "height": 700})
    bob = browser.new_context()
    try:
        page = alice.new_page()
        sign_in(page, base, "Alice", then="/")
        points = "document.querySelector('#chart .line').getAttribute('points').split(' ').length"
        page.wait_for_function(f"{points} >= 3")
        labels = set()
        for count in (5, 10, 20):
            page.wait_for_function(f"{SAMPLES} >= {count}")
            labels.add(page.text_content("#load-now"))
        assert len(labels) > 1, labels  # the latest value label changes
        first = page.evaluate(points)
        page.wait_for_function(f"{points} === 60")  # the chart keeps the last 60 samples
        assert page.evaluate(points) > first
        assert int(attribute(page, "#chart", "data-received")) >= 60
        assert page.text_content("#conn-state") == "open"
        assert text(page, "#last-id").startswith("~")  # a compound id: several channels

        # A broadcast from the form, and a notification from bob: the badge counts it.
        page.fill("#broadcast input[name=message]", "Deploy finished")
        page.click("#broadcast button")
        page.wait_for_function("document.querySelectorAll('#messages li:not(.empty)').length === 1")
        assert feed(page) == ["Deploy finished"]
        assert bob.request.post(f"{base}/login", form={"user": "bob"}).ok
        sent = bob.request.post(f"{base}/notify", form={"to": "alice", "text": "Lunch at noon?"})
        assert sent.ok, sent.text()
        page.wait_for_selector("#unread:not([hidden])")
        assert page.text_content("#unread") == "1"
        page.wait_for_selector(".toast:has-text('bob: Lunch at noon?')")
        logged = page.eval_on_selector_all("#event-log tr", "rs => rs.map(r => r.dataset.event)")
        assert {"metric", "message", "notification"} <= set(logged)

        page.screenshot(path=str(screenshot))
    finally:
        alice.close()
        bob.close()
    assert png_size(screenshot.read_bytes()) == (1000, 700)


def png_size(data: bytes) -> Tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- Notifications ----------------------------------------------------------------------------


def test_a_notification_reaches_its_recipient_only(start_server: StartServer, browser: Browser) -> None:
    server = start_server(app=APP, args=CONF)
    base = server.url
    contexts = [browser.new_context(), browser.new_context()]
    try:
        alice, bob = (context.new_page() for context in contexts)
        sign_in(alice, base, "Alice")
        sign_in(bob, base, "Bob")
        inbox = "Array.from(document.querySelectorAll('#inbox li:not(.empty)'), li => li.innerText)"

        alice.select_option("#notify select[name=to]", "bob")
        alice.fill("#notify input[name=text]", "Hello Bob, from Alice")
        alice.click("#notify button")
        alice.wait_for_selector("#notify-status:has-text('Sent to Bob.')")
        bob.wait_for_function(f"{inbox}.length === 1")
        assert "Hello Bob, from Alice" in bob.evaluate(inbox)[0]
        assert "alice" in bob.evaluate(inbox)[0]
        assert bob.text_content("#unread") == "1"

        # Bob answers: alice gets his note, and never got her own note to him.
        bob.select_option("#notify select[name=to]", "alice")
        bob.fill("#notify input[name=text]", "Hi Alice")
        bob.click("#notify button")
        alice.wait_for_function(f"{inbox}.length === 1")
        assert "Hi Alice" in alice.evaluate(inbox)[0]
        alice.wait_for_timeout(300)
        assert len(alice.evaluate(inbox)) == 1 and len(bob.evaluate(inbox)) == 1
        assert alice.text_content("#unread") == "1"

        # Alice's session may not open Bob's private channel at all.
        status = alice.evaluate("fetch('/stream?channel=private:bob').then(r => r.status)")
        assert status == 403

        bob.click("#mark-read")
        bob.wait_for_selector("#unread[hidden]", state="attached")
        # The inbox is kept across pages: the dashboard of the same tab still shows no unread.
        bob.goto(base + "/")
        wait_open(bob)
        assert bob.get_attribute("#unread", "hidden") is not None
    finally:
        for context in contexts:
            context.close()


# --- Jobs and token streaming -----------------------------------------------------------------


def test_job_progress_bar_reaches_100_percent(start_server: StartServer, page: Page) -> None:
    server = start_server(app=APP, args=CONF)
    page.goto(server.url + "/jobs")
    wait_open(page)
    page.click("#start-job button")
    page.wait_for_selector(".job[data-state=running]")
    percent = "parseInt(document.querySelector('.job .percent').textContent)"
    page.wait_for_function(f"{percent} > 0 && {percent} < 100")  # seen on its way
    page.wait_for_selector(".job[data-state=done]")
    assert page.text_content(".job .percent") == "100 %"
    assert page.text_content(".job .state") == "done"
    assert page.evaluate("document.querySelector('.job .fill').style.width") == "100%"


def test_chat_renders_tokens_as_they_arrive(start_server: StartServer, page: Page) -> None:
    server = start_server(app=APP, args=CONF)
    page.goto(server.url + "/chat")
    wait_open(page)
    page.fill("#ask input[name=prompt]", "What is SSE?")
    page.click("#ask button")
    # Part of the answer is on the page while the rest is still being generated.
    page.wait_for_function(
        "(() => { const b = document.querySelector('.bubble.bot');"
        " return b && b.classList.contains('streaming') && Number(b.dataset.tokens) >= 5; })()"
    )
    partial = text(page, ".bubble.bot")
    page.wait_for_selector(".bubble.bot.done", timeout=15_000)
    answer = text(page, ".bubble.bot")
    assert partial and answer.startswith(partial) and len(answer) > len(partial)
    assert answer.startswith("You asked: \u201cWhat is SSE?\u201d.")
    assert answer.endswith("the answer is complete.")
    assert int(attribute(page, ".bubble.bot", "data-tokens")) == len(answer.split())


# --- Restarts -----------------------------------------------------------------------------------


def on_fixed_port(
    start_server: StartServer, env: Optional[Dict[str, str]] = None
) -> Tuple[str, Callable[[], Server]]:
    """The URL of a port of the test's own, and a function that starts a server on it: one
    server after another, as a restart does."""
    port = free_port()

    def start() -> Server:
        return start_server(app=APP, args=CONF, env=env, port=port)

    return f"http://127.0.0.1:{port}", start


def assert_reconnected(states: List[str]) -> None:
    """The states the page showed: open, then reconnecting, and open again at the end.

    There may be more reconnecting/open pairs in between: the browser may first reach the
    stopping worker again over kept-alive connections (see the module docstring).
    """
    assert states[:3] == ["connecting", "open", "reconnecting"], states
    assert states[1:] == ["open", "reconnecting"] * (len(states) // 2 - 1) + ["open"], states


def test_page_reconnects_after_a_restart_and_goes_on(start_server: StartServer, page: Page) -> None:
    """In-process broker: history dies with the process, so the page is told (sse.missed) and
    goes on with the events published after the restart, without a reload."""
    base, start = on_fixed_port(start_server)
    first = start()
    page.goto(base + "/")
    wait_open(page)
    first.publish(message="before the restart")
    page.wait_for_function("document.querySelectorAll('#messages li:not(.empty)').length === 1")
    page.evaluate("window.sameDocument = true")

    first.stop()
    page.wait_for_selector("#conn-state[data-state=reconnecting]")
    second = start()
    wait_open(page)
    page.wait_for_selector(".toast.warn")  # sse.missed: the new process has no history
    second.publish(message="after the restart")
    page.wait_for_function("document.querySelectorAll('#messages li:not(.empty)').length === 2")
    assert feed(page) == ["after the restart", "before the restart"]
    assert page.evaluate("window.sameDocument") is True
    assert_reconnected(page.evaluate("live.states"))
    samples = page.evaluate(SAMPLES)
    page.wait_for_function(f"{SAMPLES} > {samples}")  # the new process publishes metrics


def test_page_resumes_after_a_restart_without_losing_an_event(start_server: StartServer, page: Page) -> None:
    """Redis broker: the event published while no server runs is replayed after the restart,
    from the page's Last-Event-ID, once, in order."""
    redis = RedisServer()
    publisher = Publisher(redis.url)
    try:
        base, start = on_fixed_port(start_server, {"SSE_REDIS_URL": redis.url})
        first = start()
        page.goto(base + "/")
        wait_open(page)
        first.publish(message="one")
        page.wait_for_function("document.querySelectorAll('#messages li:not(.empty)').length === 1")

        first.stop()
        page.wait_for_selector("#conn-state[data-state=reconnecting]")
        publisher.publish({"message": "two"}, event="message", channel="sse")  # no server runs
        second = start()
        wait_open(page)
        page.wait_for_function("document.querySelectorAll('#messages li:not(.empty)').length === 2")
        second.publish(message="three")
        page.wait_for_function("document.querySelectorAll('#messages li:not(.empty)').length === 3")
        page.wait_for_timeout(300)
        assert feed(page) == ["three", "two", "one"]
        assert_reconnected(page.evaluate("live.states"))
        assert page.query_selector(".toast.warn") is None  # nothing was missed
    finally:
        publisher.close()
        redis.cleanup()


# --- Without a browser --------------------------------------------------------------------------


def read_event(response: http.client.HTTPResponse) -> Dict[str, str]:
    """The next event of a stream, as a dict of its fields (comments and heartbeats skipped)."""
    fields: Dict[str, str] = {}
    while True:
        line = response.readline().decode()
        if line == "":
            raise EOFError("the stream ended")
        line = line.rstrip("\n")
        if line == "":
            if "data" in fields:
                return fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def test_a_plain_http_client_reads_published_events(start_server: StartServer) -> None:
    """What ``curl -N 'http://127.0.0.1:8000/stream?channel=news'`` shows."""
    server = start_server(app=APP, args=CONF)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/stream?channel=news&channel=metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
        assert response.readline() == b"retry: 1000\n"
        # The metrics publisher started with the first request of the worker.
        metric = read_event(response)
        assert metric["event"] == "metric" and 0 <= json.loads(metric["data"])["load"] <= 100
        server.publish(message="hello, curl", channel="news")
        while (event := read_event(response))["event"] == "metric":
            pass
        assert event["event"] == "message"
        assert json.loads(event["data"]) == {"message": "hello, curl"}
        assert event["id"].startswith("~")  # one id for both channels
    finally:
        conn.close()


def test_importing_the_app_starts_no_background_work() -> None:
    """The metrics publisher starts with a worker's first request, never at import."""
    code = (
        "import threading, example_app; "
        "assert example_app.app.config['METRICS_INTERVAL'] == 1.0; "
        "print(sorted(t.name for t in threading.enumerate()))"
    )
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['MainThread']"


def test_publish_while_redis_is_down_answers_503_with_a_json_reason(start_server: StartServer) -> None:
    """Regression: ``POST /publish`` answered an HTML 500 with a traceback while Redis was down."""
    redis = RedisServer()
    try:
        server = start_server(app=APP, args=CONF, env={"SSE_REDIS_URL": redis.url})
        assert request(server.port, "POST", "/publish", {"message": "up"})[0] == 200
        redis.stop()
        for body in [{"message": "down"}, {"message": "x", "channel": "news"}]:
            status, answer = request(server.port, "POST", "/publish", body)
            assert status == 503, answer
            assert answer["error"] == "the event broker is unavailable, try again shortly"
            assert "Redis did not take the event" in answer["reason"]
        bad = request(server.port, "POST", "/publish", {"message": "x", "channel": "bad name"})
        assert bad[0] == 400 and "Invalid SSE channel name" in bad[1]["error"]
        assert "Traceback" not in server.log()
    finally:
        redis.cleanup()
