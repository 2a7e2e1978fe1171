"""Resumable answers in a real headless Chromium: the JS client resumes a POST at its stream's
URL, and the example chat page survives a reload mid-answer."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, List

from support.client import request
from support.paths import ROOT
from support.redis import RedisServer
from support.server import StartServer

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request


def test_js_client_resumes_a_post_at_the_stream_url_not_by_posting_again(
    start_server: StartServer, page: Page, tmp_path: Path
) -> None:
    # Every response of a stream ends after 1 s (SSE_MAX_CONNECTION_AGE): the client must
    # reconnect several times during a 2 s answer.
    config = {"SSE_MAX_CONNECTION_AGE": 1, "SSE_RETRY": 100, "TEST_JOURNAL": str(tmp_path)}
    server = start_server(app="support.app:served(record_requests=True)", config=config)
    page.goto(server.url + "/")
    page.wait_for_function("window.ready === true")
    page.evaluate(
        """() => {
          window.got = [];
          window.conn = connect("/answer/js?count=20&pace=0.1", {
            method: "POST", headers: {"Content-Type": "text/plain"}, body: "a prompt",
            onEvent: (e) => window.got.push([e.type, e.data, e.lastEventId]),
          });
        }"""
    )
    page.wait_for_function("window.got.length && window.got.at(-1)[0] === 'sse.end'", timeout=15_000)
    got: List[List[str]] = page.evaluate("window.got")
    assert got[0][0] == "sse.stream"
    info = json.loads(got[0][1])
    assert [json.loads(data)["n"] for kind, data, _ in got if kind == "token"] == list(range(1, 21))
    assert page.evaluate("[window.conn.streamId, window.conn.readyState]") == [info["id"], 2]

    status, recorded = request(server.port, "GET", "/requests")
    assert status == 200
    posts = [r for r in recorded if r["path"] == "/answer/js"]
    resumes = [r for r in recorded if r["path"] == info["url"]]
    assert [r["method"] for r in posts] == ["POST"]  # posted once
    assert len(resumes) >= 1 and {r["method"] for r in resumes} == {"GET"}
    # Each resume named the last event the page had.
    ids = [last_id for _, _, last_id in got]
    assert all(r["last_event_id"] in ids for r in resumes)
    assert (tmp_path / "js").read_text().count("start") == 1  # the generator ran once


def test_chat_page_reload_mid_answer_completes_without_a_second_model_run(
    start_server: StartServer, page: Page
) -> None:
    redis = RedisServer()
    try:
        server = start_server(
            app="example_app:app",
            args=["-c", str(ROOT / "gunicorn.conf.py")],
            workers=2,
            env={"SSE_REDIS_URL": redis.url, "WEB_CONCURRENCY": "2"},
        )
        posts: List[str] = []

        def note(req: Request) -> None:
            if req.method == "POST" and req.url.endswith("/chat"):
                posts.append(req.url)

        page.on("request", note)
        page.goto(server.url + "/chat")
        page.fill("#ask input[name=prompt]", "What is SSE?")
        page.click("#ask button")
        page.wait_for_function(
            "Number(document.querySelector('.bubble.bot')?.dataset.tokens) >= 5 && "
            "sessionStorage.getItem('chat.pending') !== null"
        )
        # The answer is unfinished when the page goes: no sse.end yet (chat.js marks the bubble
        # "done" on it), the stream still open ("streaming"), and not every token is shown.
        reply = importlib.import_module("example_app.demo").REPLY
        shown = page.evaluate(
            "(() => { const b = document.querySelector('.bubble.bot');"
            " return [b.classList.contains('done'), b.classList.contains('streaming'),"
            " Number(b.dataset.tokens)]; })()"
        )
        page.reload()
        words = len(re.findall(r"\S+\s*", reply.format(prompt="What is SSE?")))
        assert shown[:2] == [False, True] and 5 <= shown[2] < words, (shown, words)
        page.wait_for_selector(".bubble.bot.done", timeout=15_000)
        answer = page.text_content(".bubble.bot")
        # All of it, each token once. (Imported by name: type-checking the example app's
        # Flask-Login views is not this test's business.)
        assert answer == reply.format(prompt="What is SSE?")
        assert page.text_content(".bubble.user") == "What is SSE?"
        assert page.evaluate("sessionStorage.getItem('chat.pending')") is None
        assert len(posts) == 1
        # One answer was ever started: the broker holds one answer log.
        logs: List[Any] = list(redis.client().scan_iter(match="sse:log:{r.*}:m"))
        assert len(logs) == 1, logs
        assert re.fullmatch(rb"sse:log:\{r\.[A-Za-z0-9_-]{32}\}:m", logs[0])
    finally:
        redis.cleanup()
