"""Resumable answers (``sse.response(..., resumable=True)``) under real gunicorn gevent workers,
with the in-process broker (one worker) and with Redis (two workers)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from support.client import RawStream, request
from support.parser import ParsedEvent
from support.redis import RedisServer
from support.server import Server, StartServer
from support.waiting import wait_until


@pytest.fixture(params=["memory", "redis"])
def broker_server(
    request: pytest.FixtureRequest,
    start_server: StartServer,
    redis_server: RedisServer,
    prefix: str,
    tmp_path: Path,
) -> Iterator[Server]:
    """One worker with the in-process broker, or two workers sharing Redis; ``TEST_JOURNAL``
    is the test's ``tmp_path``."""
    config: Dict[str, Any] = {"TEST_JOURNAL": str(tmp_path), "SSE_RESUMABLE_IDLE": 1.0}
    workers = 1
    if request.param == "redis":
        config.update(SSE_REDIS_URL=redis_server.url, SSE_REDIS_PREFIX=prefix)
        workers = 2
    yield start_server(config=config, workers=workers)


@pytest.fixture
def broker(request: pytest.FixtureRequest, broker_server: Server) -> str:
    """Which broker ``broker_server`` runs: "memory" or "redis"."""
    name: str = request.node.callspec.params["broker_server"]
    return name


def token(server: Server, identity: str) -> str:
    status, body = request(server.port, "GET", f"/token?identity={identity}")
    assert status == 200, body
    return body.decode() if isinstance(body, bytes) else str(body)


def auth(server: Server, identity: str) -> Dict[str, str]:
    return {"Authorization": "Bearer " + token(server, identity)}


def journal(folder: Path, name: str) -> List[str]:
    path = folder / name
    return path.read_text().splitlines() if path.exists() else []


class Answer:
    """A client of one resumable answer: reads events (many may come in one chunk), remembers
    the last id."""

    def __init__(self, stream: RawStream) -> None:
        self.stream = stream
        assert stream.status == 200, stream.body()
        self.pid = int(stream.headers["x-pid"])
        self.last_id = ""
        self.backlog: List[ParsedEvent] = []

    def read(self, count: int, timeout: float = 10.0) -> List[ParsedEvent]:
        deadline = time.monotonic() + timeout
        while len(self.backlog) < count:
            chunk = self.stream.chunk(max(0.01, deadline - time.monotonic()))
            if chunk is None:
                raise EOFError(f"stream ended after {self.backlog!r}")
            self.backlog += self.stream.parser.feed(chunk)
        events, self.backlog = self.backlog[:count], self.backlog[count:]
        self.last_id = events[-1].last_event_id
        return events

    def until_end(self, timeout: float = 15.0) -> List[ParsedEvent]:
        """Every event up to and with the final one (``sse.end`` or ``sse.error``)."""
        out: List[ParsedEvent] = []
        deadline = time.monotonic() + timeout
        while not out or out[-1].type not in ("sse.end", "sse.error"):
            out += self.read(1, max(0.1, deadline - time.monotonic()))
        return out


def start(
    server: Server, name: str, headers: Dict[str, str], query: str = ""
) -> Tuple[Answer, Dict[str, str]]:
    """POST a new answer; returns its client and the ``sse.stream`` event's ``{id, url}``."""
    stream = RawStream(server.port, f"/answer/{name}?{query}", headers=headers, method="POST")
    answer = Answer(stream)
    first = answer.read(1)[0]
    assert first.type == "sse.stream", first
    info: Dict[str, str] = json.loads(first.data)
    assert first.last_event_id == info["id"] + ".0-0"
    assert answer.stream.headers["x-sse-stream"] == info["id"]
    return answer, info


def resume(
    server: Server, url: str, headers: Dict[str, str], last_id: str, not_pid: Optional[int] = None
) -> Answer:
    """GET the resume URL with ``Last-Event-ID``; with ``not_pid``, until another worker answers."""

    def attempt() -> Optional[Answer]:
        stream = RawStream(server.port, url, headers={**headers, "Last-Event-ID": last_id})
        if not_pid is not None and int(stream.headers["x-pid"]) == not_pid:
            stream.close()
            return None
        return Answer(stream)

    return wait_until(attempt, timeout=10, message="no other worker answered")


def tokens(events: List[ParsedEvent]) -> List[int]:
    return [json.loads(e.data)["n"] for e in events if e.type == "token"]


@pytest.mark.parametrize("backend", ["redis", "cluster"])
def test_reconnect_to_the_other_worker_gets_the_rest_exactly_once(
    request: pytest.FixtureRequest, start_server: StartServer, prefix: str, tmp_path: Path, backend: str
) -> None:
    config: Dict[str, Any] = {"SSE_REDIS_PREFIX": prefix, "TEST_JOURNAL": str(tmp_path)}
    if backend == "cluster":
        config.update(SSE_REDIS_URL=request.getfixturevalue("redis_cluster").url, SSE_REDIS_CLUSTER=True)
    else:
        config.update(SSE_REDIS_URL=request.getfixturevalue("redis_server").url)
    server = start_server(config=config, workers=2)
    server.worker_pids(at_least=2)
    headers = auth(server, "alice")
    first, info = start(server, "forty", headers, "count=40&pace=0.1")
    assert tokens(first.read(10)) == list(range(1, 11))
    first.stream.close()

    second = resume(server, info["url"], headers, first.last_id, not_pid=first.pid)
    assert second.pid != first.pid
    rest = second.until_end()
    assert tokens(rest) == list(range(11, 41))  # in order, each once
    assert {json.loads(e.data)["pid"] for e in rest if e.type == "token"} == {first.pid}
    assert rest[-1].type == "sse.end"
    assert second.stream.chunk() is None  # the response ends with the stream
    wait_until(lambda: len(journal(tmp_path, "forty")) == 2)
    assert journal(tmp_path, "forty")[0] == f"start {first.pid}"  # the generator ran once

    # An ended stream replays to its end, from anywhere in it, on any worker.
    again = resume(server, info["url"], headers, f"{info['id']}.0-0")
    replayed = again.until_end()
    assert tokens(replayed) == list(range(1, 41))
    assert replayed[-1].type == "sse.end" and again.backlog == []  # not sse.error, nothing after
    assert again.stream.chunk() is None  # and the response ends there
    assert [line.split()[0] for line in journal(tmp_path, "forty")] == ["start", "stop"]


def test_last_event_id_to_the_same_view_resumes_without_running_it_again(
    broker_server: Server, tmp_path: Path
) -> None:
    """What a native EventSource does: reconnect to the view's own URL with Last-Event-ID."""
    headers = auth(broker_server, "alice")
    first, info = start(broker_server, "view", headers, "count=6&pace=0.1")
    first.read(2)
    first.stream.close()
    stream = RawStream(
        broker_server.port, "/answer/view?count=6", headers={**headers, "Last-Event-ID": first.last_id}
    )
    rest = Answer(stream).until_end()
    assert tokens(rest) == [3, 4, 5, 6]
    assert len([line for line in journal(tmp_path, "view") if line.startswith("start")]) == 1


def test_client_that_never_returns_stops_the_generator_at_its_idle_limit(
    broker_server: Server, tmp_path: Path
) -> None:
    headers = auth(broker_server, "alice")
    first, info = start(broker_server, "idle", headers, "count=1000&pace=0.1")
    first.read(2)
    left = time.time()
    first.stream.close()
    wait_until(lambda: len(journal(tmp_path, "idle")) == 2, timeout=10)
    stopped = float(journal(tmp_path, "idle")[1].split()[1])
    # SSE_RESUMABLE_IDLE is 1 s; the reader's flag lives that long and the owner looks twice a second.
    assert 0.5 < stopped - left < 1 + 1.5
    late = resume(broker_server, info["url"], headers, first.last_id).until_end()
    assert late[-1].type == "sse.error" and "no reader" in late[-1].data
    # The generator went on after its client left (about 1 s of tokens), then stopped.
    assert tokens(late) == list(range(3, 3 + len(tokens(late))))
    assert len(tokens(late)) >= 5


def connection_to_another_worker(server: Server, not_pid: int) -> http.client.HTTPConnection:
    """A keep-alive connection that a worker other than ``not_pid`` serves (asks ``/stats``)."""

    def attempt() -> Optional[http.client.HTTPConnection]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/stats")
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 200 and not response.will_close, response.headers
        if body["pid"] != not_pid:
            return conn
        conn.close()
        return None

    return wait_until(attempt, timeout=10, message="no other worker answered")


@pytest.mark.parametrize("how", ["http", "api"])
def test_cancel_stops_the_generator_within_a_second(
    broker_server: Server, broker: str, tmp_path: Path, how: str
) -> None:
    """With Redis, the HTTP cancel goes to the worker that does not run the generator."""
    headers = auth(broker_server, "alice")
    two_workers = broker == "redis"
    if two_workers:
        broker_server.worker_pids(at_least=2)
    first, info = start(broker_server, f"cancel-{how}", headers, "count=1000&pace=0.1")
    first.read(2)
    if how == "http":
        if two_workers:
            conn = connection_to_another_worker(broker_server, first.pid)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", broker_server.port, timeout=10)
        asked = time.time()
        conn.request("DELETE", info["url"], headers=headers)
        response = conn.getresponse()
        assert (response.status, response.read()) == (204, b"")
        assert (int(response.headers["X-Pid"]) != first.pid) is two_workers
        conn.close()
    else:
        status, body = request(broker_server.port, "POST", f"/cancel/{info['id']}")
        assert status == 200 and body["cancelled"] is True
        asked = body["at"]
    end = first.until_end()
    assert end[-1].type == "sse.end" and json.loads(end[-1].data) == {"reason": "cancelled"}
    wait_until(lambda: len(journal(tmp_path, f"cancel-{how}")) == 2)
    stopped = float(journal(tmp_path, f"cancel-{how}")[1].split()[1])
    assert stopped - asked < 1.0


def test_cancel_of_an_unknown_stream_says_so(server: Server) -> None:
    status, body = request(server.port, "POST", "/cancel/r." + "x" * 32)
    assert status == 200 and body["cancelled"] is False


def test_sigkilled_worker_leaves_the_stream_ended_with_sse_error(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    server = start_server(config={"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix}, workers=2)
    server.worker_pids(at_least=2)
    headers = auth(server, "alice")
    first, info = start(server, "killed", headers, "count=1000&pace=0.1")
    first.read(3)
    os.kill(first.pid, signal.SIGKILL)
    first.stream.close()
    killed = time.monotonic()
    reader = resume(server, info["url"], headers, first.last_id, not_pid=first.pid)
    rest = reader.until_end(timeout=10)
    assert rest[-1].type == "sse.error"
    assert json.loads(rest[-1].data) == {"error": "the worker running this stream stopped"}
    assert time.monotonic() - killed < 3 + 2  # the owner's lease, and a reader's next look
    # Whatever the owner wrote before it died came first, in order.
    assert tokens(rest) == list(range(4, 4 + len(tokens(rest))))


def _answer_of(port: int, url: str, who: Dict[str, str], method: str, last_id: str) -> Tuple[Any, ...]:
    """Status, body and headers (a ``Set-Cookie`` too): all but the date and the worker's pid."""
    stream = RawStream(port, url, headers={**who, "Last-Event-ID": last_id}, method=method)
    headers = sorted((k, v) for k, v in stream.headers.items() if k not in ("date", "x-pid"))
    return stream.status, stream.body(), headers


def test_another_identity_gets_the_same_answer_as_an_unknown_id(broker_server: Server) -> None:
    port = broker_server.port
    alice = auth(broker_server, "alice")
    first, info = start(broker_server, "mine", alice, "count=100&pace=0.1")
    first.read(1)
    unknown = "r." + "A" * 32
    for who in (auth(broker_server, "bob"), {}):  # another identity, and anonymous
        for method in ("GET", "DELETE"):
            reference = _answer_of(port, f"/stream/resume/{unknown}", who, method, unknown + ".0-0")
            assert reference[:2] == (404, b"No such stream\n")
            assert _answer_of(port, info["url"], who, method, first.last_id) == reference
            assert all(name != "set-cookie" for name, _ in reference[2])  # no session made for it
        # Nor through the view: another identity's Last-Event-ID names an unknown stream.
        reference = _answer_of(port, "/answer/mine", who, "GET", unknown + ".0-0")
        assert reference[:2] == (404, b"No such stream\n")
        assert _answer_of(port, "/answer/mine", who, "GET", first.last_id) == reference
        assert all(name != "set-cookie" for name, _ in reference[2])  # no session made for it
    # The stream went on untouched (the DELETEs cancelled nothing), and alice still reads it.
    mine = Answer(RawStream(port, info["url"], headers={**alice, "Last-Event-ID": first.last_id}))
    assert tokens(mine.read(2)) == [2, 3]


def test_anonymous_streams_are_bound_to_the_session(server: Server) -> None:
    stream = RawStream(server.port, "/answer/anon?count=3&pace=0.05", method="POST")
    cookie = stream.headers["set-cookie"].split(";")[0]
    answer = Answer(stream)
    info = json.loads(answer.read(1)[0].data)
    mine = RawStream(server.port, info["url"], headers={"Cookie": cookie})
    assert tokens(Answer(mine).until_end()) == [1, 2, 3]
    other = RawStream(server.port, info["url"])
    assert other.status == 404 and other.body() == b"No such stream\n"


def test_a_generator_past_its_lifetime_is_stopped(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(config={"TEST_JOURNAL": str(tmp_path), "SSE_RESUMABLE_LIFETIME": 1})
    first, _ = start(server, "old", auth(server, "alice"), "count=1000&pace=0.1")
    end = first.until_end()
    assert end[-1].type == "sse.error"
    assert json.loads(end[-1].data) == {"error": "over the lifetime of 1 s"}
    assert 5 <= len(tokens(end)) <= 15  # about 1 s of tokens, then nothing more
    wait_until(lambda: len(journal(tmp_path, "old")) == 2)


def test_a_failing_generator_ends_the_stream_with_sse_error_for_every_reader(
    start_server: StartServer,
) -> None:
    server = start_server()  # its log gets the traceback, which the session server's must not
    headers = auth(server, "alice")
    first, info = start(server, "fails", headers, "count=10&pace=0.02&fail=3")
    end = first.until_end()
    assert tokens(end) == [1, 2]
    assert (end[-1].type, json.loads(end[-1].data)) == ("sse.error", {"error": "internal error"})
    again = resume(server, info["url"], headers, first.last_id.rpartition(".")[0] + ".0-0")
    assert [e.type for e in again.until_end()] == ["token", "token", "sse.error"]


def test_settings_are_validated() -> None:
    from flask_sse_ext import SSE
    from support.app import create_app

    for key, bad in [("SSE_RESUMABLE_IDLE", 0), ("SSE_RESUMABLE_LIFETIME", "long"), ("SSE_RESUMABLE_TTL", 0)]:
        with pytest.raises(ValueError, match=key):
            create_app({key: bad}, sse=SSE())


def test_a_bad_credential_is_401(server: Server) -> None:
    stream = RawStream(server.port, "/answer/bad", headers={"Authorization": "Bearer junk"}, method="POST")
    assert stream.status == 401 and stream.body() == b"invalid token\n"


def test_without_gevent_the_generator_runs_in_a_thread_and_streams_from_the_log() -> None:
    """The dev server's case (threads): in-process, with Flask's test client."""
    from flask import Flask

    from flask_sse_ext import SSE, Event
    from support.app import create_app

    sse = SSE()
    app: Flask = create_app(sse=sse)

    @app.post("/count")
    def count() -> Any:
        return sse.response((Event(n, event="token") for n in range(1, 4)), resumable=True)

    with app.test_client() as client:
        response = client.post("/count", buffered=True)
        body = response.get_data(as_text=True)
        cookie = response.headers["Set-Cookie"]
    assert response.status_code == 200 and cookie.startswith("session=")
    assert body.startswith("retry: 3000\n")  # one line: the events follow at once
    blocks = body[len("retry: 3000\n") :].split("\n\n")
    assert blocks[0].startswith("event: sse.stream\ndata: ")
    assert [b.split("\n")[:2] for b in blocks[1:5]] == [
        ["event: token", "data: 1"],
        ["event: token", "data: 2"],
        ["event: token", "data: 3"],
        ["event: sse.end", "data: "],
    ]
