"""The client matrix: every real client reads one stream of one server (one channel, or
several) while a table of events is published, and each reports exactly what it yields.

``run_matrix`` starts the readers (``support/readers`` for Python, ``tests/node`` for Node)
and two browser clients in one Chromium page (``EventSource`` and the shipped
``sse-client.js``), all at once. It publishes the table in three parts (on a stream of several
channels, the cases go to each channel in turn): ``before`` the server ends every stream of
the channel, ``away`` (right after: the clients are waiting to reconnect,
so these arrive by replay after ``Last-Event-ID``) and ``after`` they came back (live, ending
with the event ``done``). Between ``before`` and the cut the channel idles through heartbeats.
It waits on conditions, never on a guessed time. A client that falls short does not stop the
run: it is reported as it stands, and its own test says what it missed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence, Tuple
from urllib.parse import parse_qs

import pytest

from support.client import HEARTBEAT, RawStream, request
from support.paths import TESTS
from support.server import Server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["Case", "ClientRun", "MatrixRun", "CLIENTS", "NODE_DIR", "install_node_clients", "run_matrix"]

NODE_DIR = TESTS / "node"

#: Every client of the matrix, by the name its test and the docs use.
CLIENTS = (
    "httpx-sse",
    "sseclient-py",
    "aiohttp-sse-client",
    "eventsource",
    "fetch-event-source",
    "chromium",
    "sse-client.js",
)
_BROWSER = ("chromium", "sse-client.js")


@dataclass(frozen=True)
class Case:
    """One published event and what a client that follows the WHATWG rules yields for it."""

    name: str
    #: ``sse.publish``'s arguments, but the channel.
    publish: Dict[str, Any]
    #: The ``data`` a client yields.
    data: str
    type: str = "message"
    #: ``before`` the cut, ``away`` (replayed on reconnect) or ``after`` (live again).
    phase: str = "before"


@dataclass
class ClientRun:
    """What one client reported, and the stream requests the server got from it."""

    name: str
    lines: List[Dict[str, Any]] = field(default_factory=list)
    requests: List[Dict[str, Any]] = field(default_factory=list)
    stderr: str = ""
    #: The reader process exited (nothing more will come from it).
    exited: bool = False

    @property
    def events(self) -> List[Dict[str, Any]]:
        return [line for line in self.lines if "type" in line]

    @property
    def opens(self) -> int:
        return sum(1 for line in self.lines if line.get("open"))

    @property
    def done(self) -> bool:
        return any(event["type"] == "done" for event in self.events)


@dataclass
class MatrixRun:
    #: The channels the stream reads (``?channel=`` each, in this order).
    channels: Sequence[str]
    #: ``{"case", "type", "data", "id", "channel"}`` per published event, in order; ``id`` is
    #: what ``publish`` returned (on several channels, the stream's ids are compound cursors).
    expected: List[Dict[str, Any]]
    #: When the server ended the streams (epoch seconds), and when ``away`` was published.
    cut_at: float
    away_published_at: float
    clients: Dict[str, ClientRun]
    #: Heartbeats a raw reader of the channel saw while the channel idled before the cut.
    heartbeats: int


def _node_minimum(lock: Dict[str, Any]) -> Tuple[int, ...]:
    """The oldest Node.js every package pinned in ``lock`` supports: the highest lower bound
    (``>=X.Y.Z``) of their ``engines.node``."""
    floor: Tuple[int, ...] = (0,)
    for name, package in lock.get("packages", {}).items():
        wanted = package.get("engines", {}).get("node")
        if wanted is None:
            continue
        match = re.fullmatch(r">=\s*v?(\d+(?:\.\d+){0,2})", wanted.strip())
        if match is None:
            pytest.fail(f"{name} in {NODE_DIR / 'package-lock.json'} wants node {wanted!r}: not a >= bound")
        floor = max(floor, tuple(int(part) for part in match.group(1).split(".")))
    return floor


def _installed(lock: Dict[str, Any]) -> bool:
    """node_modules holds what ``lock`` pins: npm's record of what it installed there
    (``node_modules/.package-lock.json``) lists the same packages."""
    try:
        record = json.loads((NODE_DIR / "node_modules" / ".package-lock.json").read_text())
    except (OSError, ValueError):
        return False
    pinned = {path: package for path, package in lock.get("packages", {}).items() if path}
    return bool(record.get("packages") == pinned)


def install_node_clients() -> None:
    """Check Node.js against what the pinned packages need (their ``engines``), and run
    ``npm ci`` in tests/node when node_modules is missing or not what package-lock.json pins."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    minimum = ".".join(map(str, _node_minimum(lock)))
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is missing: the Node clients need Node.js {minimum} or later (apt-get install nodejs npm)"
            )
    version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    found = re.match(r"v(\d+)\.(\d+)\.(\d+)", version.strip())
    if found is None or tuple(map(int, found.groups())) < _node_minimum(lock):
        pytest.fail(
            f"node --version says {version.strip()!r}: the Node clients pinned in "
            f"{NODE_DIR / 'package-lock.json'} need Node.js {minimum} or later (their engines field)"
        )
    if _installed(lock):
        return
    cmd = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    out = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=300, check=False)
    if out.returncode != 0:
        pytest.fail(f"npm ci in {NODE_DIR} failed:\n{out.stdout}\n{out.stderr}")


class _Reader:
    """A reader subprocess: its JSON lines, collected by a thread as they come."""

    def __init__(self, run: ClientRun, cmd: Sequence[str]) -> None:
        self.run = run
        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        self.proc = subprocess.Popen(cmd, cwd=TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stderr: List[bytes] = []
        self.threads = [threading.Thread(target=self._read), threading.Thread(target=self._read_errors)]
        for thread in self.threads:
            thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.run.lines.append(json.loads(raw))
            except ValueError:
                self.run.lines.append({"unparsed": raw.decode(errors="replace")})
        self.run.exited = True

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw)

    def stop(self) -> None:
        """Let it exit (it does after ``done``), else end it."""
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for thread in self.threads:
            thread.join()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.run.stderr = b"".join(self.stderr).decode(errors="replace")


#: Opens both browser clients in the page; ``window.logs[name]`` collects what each reports.
_BROWSER_READERS = """
({urls, types}) => {
  const logs = window.logs = {"chromium": [], "sse-client.js": []};
  const source = new EventSource(urls["chromium"]);
  source.onopen = () => logs["chromium"].push({open: true});
  for (const type of new Set(["message", ...types])) {
    source.addEventListener(type, (e) => {
      logs["chromium"].push({type: e.type, data: e.data, id: e.lastEventId, retry: null});
      if (e.type === "done") source.close();
    });
  }
  const conn = connect(urls["sse-client.js"], {
    onOpen: () => logs["sse-client.js"].push({open: true}),
    onEvent: (e) => {
      logs["sse-client.js"].push({type: e.type, data: e.data, id: e.lastEventId, retry: null});
      if (e.type === "done") conn.close();
    },
  });
}
"""


def _path(channels: Sequence[str], client: str) -> str:
    return "/stream?" + "".join(f"channel={channel}&" for channel in channels) + f"client={client}"


def _commands(port: int, channels: Sequence[str], types: List[str]) -> Dict[str, List[str]]:
    def url(client: str) -> str:
        return f"http://127.0.0.1:{port}" + _path(channels, client)

    python = [sys.executable, "-m"]
    return {
        "httpx-sse": [*python, "support.readers.httpx_sse_reader", url("httpx-sse")],
        "sseclient-py": [*python, "support.readers.sseclient_reader", url("sseclient-py")],
        "aiohttp-sse-client": [*python, "support.readers.aiohttp_reader", url("aiohttp-sse-client")],
        "eventsource": [
            "node",
            str(NODE_DIR / "read_eventsource.mjs"),
            url("eventsource"),
            json.dumps(types),
        ],
        "fetch-event-source": [
            "node",
            str(NODE_DIR / "read_fetch_event_source.mjs"),
            url("fetch-event-source"),
        ],
    }


def _wait_all(
    clients: Dict[str, ClientRun], ready: Callable[[ClientRun], bool], poll: Callable[[], None]
) -> None:
    """Wait until ``ready`` holds for every client still running, or 20 s: one that never gets
    there is left for its own test to report."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        poll()
        if all(ready(run) or run.exited for run in clients.values()):
            return
        time.sleep(0.02)


def run_matrix(
    server: Server, browser: Browser, channels: Sequence[str], cases: Sequence[Case], retry: int
) -> MatrixRun:
    """Run every client of ``CLIENTS`` against ``server`` on one stream of ``channels`` (see the
    module docstring); ``retry`` is the server's ``SSE_RETRY``."""
    types = sorted({case.type for case in cases} | {"sse.missed", "sse.end", "sse.error"})
    clients = {name: ClientRun(name) for name in CLIENTS}
    commands = _commands(server.port, channels, types)
    readers = [_Reader(clients[name], cmd) for name, cmd in commands.items()]
    context = browser.new_context()
    page: Page = context.new_page()
    witness = RawStream(server.port, _path(channels, "witness"))
    try:
        witness.opening(retry)
        page.goto(server.url + "/")
        page.wait_for_function("window.ready === true")
        urls = {name: _path(channels, name) for name in _BROWSER}
        page.evaluate(_BROWSER_READERS, {"urls": urls, "types": types})

        def poll() -> None:
            logs = page.evaluate("() => window.logs")
            for name in _BROWSER:
                clients[name].lines[:] = logs[name]

        expected: List[Dict[str, Any]] = []

        def publish(phase: str) -> None:
            for number, case in enumerate(cases):
                if case.phase == phase:
                    channel = channels[number % len(channels)]
                    event_id = server.publish(**case.publish, channel=channel)
                    expected.append(
                        {
                            "case": case.name,
                            "type": case.type,
                            "data": case.data,
                            "id": event_id,
                            "channel": channel,
                        }
                    )

        _wait_all(clients, lambda run: run.opens >= 1, poll)
        publish("before")
        before = len(expected)
        _wait_all(clients, lambda run: len(run.events) >= before, poll)
        # Every stream of the channel went idle at the same event: they all heartbeat now.
        witness.events(before)
        beats = witness.chunks(3, timeout=5, heartbeats=True)
        cut_at = time.time()
        # Ending the streams of one channel ends every stream that reads it.
        status, _ = request(server.port, "POST", f"/resync/{channels[0]}")
        assert status == 200
        publish("away")
        away_published_at = time.time()
        replayed = len(expected)
        _wait_all(clients, lambda run: run.opens >= 2 and len(run.events) >= replayed, poll)
        publish("after")
        _wait_all(clients, lambda run: run.done, poll)
        poll()
    finally:
        for reader in readers:
            reader.stop()
        context.close()
        witness.close()
    status, recorded = request(server.port, "GET", "/requests?path=/stream")
    assert status == 200
    for entry in recorded:
        # sse-client.js adds parameters of its own (``opening``) after ``client``.
        query = parse_qs(entry["query"])
        client = query.get("client", [""])[0]
        # The server may have served other runs of the matrix: only this stream's requests.
        if client in clients and query.get("channel") == list(channels):
            clients[client].requests.append(entry)
    return MatrixRun(channels, expected, cut_at, away_published_at, clients, beats.count(HEARTBEAT))
