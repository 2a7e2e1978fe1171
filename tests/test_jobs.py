"""Job progress: written from a script (``Publisher.job``), the CLI or a view (``sse.job``), read
by a page late with ``sse.job_response``: everything so far, then live, to the end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import List

import pytest

from flask_sse_ext import SSE, JobEnded, Publisher
from support.app import create_app
from support.client import RawStream, request
from support.parser import ParsedEvent
from support.paths import ROOT
from support.redis import RedisServer
from support.server import Server, StartServer


def read(stream: RawStream, count: int) -> List[ParsedEvent]:
    """``count`` events, however many each chunk carries."""
    out: List[ParsedEvent] = []
    while len(out) < count:
        chunk = stream.chunk(10)
        if chunk is None:
            raise EOFError(f"stream ended after {out!r}")
        out += stream.parser.feed(chunk)
    assert len(out) == count, out
    return out


def progress(events: List[ParsedEvent]) -> List[int]:
    return [json.loads(e.data)["percent"] for e in events if e.type == "progress"]


def test_a_script_published_job_read_late_gets_all_so_far_then_live(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    server = start_server(config={"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix})
    # A separate process, as a Celery or RQ task would be: no Flask, no gevent.
    script = textwrap.dedent(
        f"""
        from flask_sse_ext import Publisher
        job = Publisher({redis_server.url!r}, prefix={prefix!r}).job("build-7")
        for percent in (10, 20, 30):
            job.publish({{"percent": percent}}, event="progress")
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=30)

    stream = RawStream(server.port, "/job/build-7")
    assert stream.status == 200
    assert stream.chunk() == b"retry: 3000\n"
    early = read(stream, 3)
    assert progress(early) == [10, 20, 30]

    publisher = Publisher(redis_server.url, prefix=prefix)
    job = publisher.job("build-7")  # the same job: its log is kept as it was
    job.publish({"percent": 40}, event="progress")
    assert progress(read(stream, 1)) == [40]
    job.end({"url": "/builds/7"})
    [end] = read(stream, 1)
    assert (end.type, json.loads(end.data)) == ("sse.end", {"url": "/builds/7"})
    assert stream.chunk() is None
    with pytest.raises(JobEnded, match="'build-7' has ended"):
        job.publish({"percent": 50}, event="progress")

    # A page that resumes after the second event gets the rest, once.
    again = RawStream(server.port, "/job/build-7", headers={"Last-Event-ID": early[1].last_event_id})
    again.chunk()
    assert [e.type for e in read(again, 3)] == ["progress", "progress", "sse.end"]
    publisher.close()


def test_a_job_that_raises_ends_with_sse_error(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    server = start_server(config={"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix})
    publisher = Publisher(redis_server.url, prefix=prefix)
    with pytest.raises(OSError):
        with publisher.job("import-3") as job:
            job.publish({"percent": 5}, event="progress")
            raise OSError("disk full")
    stream = RawStream(server.port, "/job/import-3")
    stream.chunk()
    events = read(stream, 2)
    assert events[-1].type == "sse.error"
    assert json.loads(events[-1].data) == {"error": "OSError: disk full"}
    publisher.close()


def test_the_cli_publishes_to_a_job(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    config = {"SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix}
    server = start_server(config=config)
    runner = create_app(config, sse=SSE()).test_cli_runner()

    def publish(percent: int) -> str:
        out = runner.invoke(
            args=["sse", "job", "cli-1", f'{{"percent": {percent}}}', "--json", "--event", "progress"]
        )
        assert out.exit_code == 0, out.output
        assert out.stdout.startswith("j.cli-1.")
        return out.stdout.strip()

    ids = [publish(percent) for percent in (10, 20, 30)]  # before anyone reads the job
    stream = RawStream(server.port, "/job/cli-1")
    assert stream.chunk() == b"retry: 3000\n"
    early = read(stream, 3)
    assert progress(early) == [10, 20, 30]  # all of them, in order
    assert [e.last_event_id for e in early] == ids
    for percent in (40, 50):  # then live ones
        publish(percent)
        assert progress(read(stream, 1)) == [percent]
    done = runner.invoke(args=["sse", "job", "cli-1", "all good", "--end"])
    assert done.exit_code == 0, done.output
    assert [(e.type, e.data) for e in read(stream, 1)] == [("sse.end", "all good")]
    assert stream.chunk() is None
    late = runner.invoke(args=["sse", "job", "cli-1", "x"])
    assert late.exit_code == 2 and "has ended" in late.output
    bad = runner.invoke(args=["sse", "job", "no spaces", "x"])
    assert bad.exit_code == 2 and "Invalid job id" in bad.output


def test_an_unknown_job_is_404_and_a_view_published_job_reads_late(server: Server) -> None:
    """With the in-process broker: the job lives in the one worker, published by a view."""
    unknown = RawStream(server.port, "/job/never-made")
    assert unknown.status == 404 and unknown.body() == b"No such stream\n"
    for percent in (25, 50):
        status, _ = request(
            server.port, "POST", "/job/view-1", {"data": {"percent": percent}, "event": "progress"}
        )
        assert status == 200
    stream = RawStream(server.port, "/job/view-1")
    stream.chunk()
    assert progress(read(stream, 2)) == [25, 50]
    status, _ = request(server.port, "POST", "/job/view-1", {"end": True})
    assert status == 200
    assert [e.type for e in read(stream, 1)] == ["sse.end"]


def test_job_ids_are_checked() -> None:
    sse = SSE()
    with create_app(sse=sse).app_context():
        for bad in ["", "a b", "x" * 129, "new\nline"]:
            with pytest.raises(ValueError, match="Invalid job id"):
                sse.job(bad)
