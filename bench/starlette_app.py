"""The sse-starlette peer: ``uvicorn --loop uvloop --http httptools starlette_app:app``.

What a team on asyncio would write instead: sse-starlette's ``EventSourceResponse`` per
stream, ONE ``redis.asyncio`` pub/sub connection per process that subscribes to a channel when
its first local client arrives, each event encoded once (``ServerSentEvent.encode``) and put
on a bounded ``asyncio.Queue`` per client; a stream drains its queue into one chunk.
``GET /stream?channel=NAME``; ``GET /ping``. Redis from ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any, AsyncIterator, Dict, Optional, Set

import redis.asyncio as aioredis
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

QUEUE_SIZE = 1000
_CHANNEL = re.compile(r"[A-Za-z0-9_\-.:@/]{1,200}")


class Fanout:
    """One pub/sub connection per process; channel -> local client queues."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.Redis.from_url(url)
        self.pubsub = self.redis.pubsub()
        self.clients: Dict[str, Set["asyncio.Queue[bytes]"]] = {}
        self.reader: Optional["asyncio.Task[None]"] = None

    async def attach(self, channel: str, queue: "asyncio.Queue[bytes]") -> None:
        clients = self.clients.get(channel)
        if clients is None:
            self.clients[channel] = {queue}
            await self.pubsub.subscribe(channel)  # returns once Redis confirmed it
            if self.reader is None:
                self.reader = asyncio.create_task(self._read())
        else:
            clients.add(queue)

    async def detach(self, channel: str, queue: "asyncio.Queue[bytes]") -> None:
        clients = self.clients.get(channel)
        if clients is None:
            return
        clients.discard(queue)
        if not clients:
            del self.clients[channel]
            await self.pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        while True:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None or message["type"] != "message":
                continue
            clients = self.clients.get(message["channel"].decode())
            if not clients:
                continue
            frame = ServerSentEvent(data=message["data"].decode()).encode()
            for queue in clients:
                try:
                    queue.put_nowait(frame)
                except asyncio.QueueFull:
                    pass  # the floor cuts such a client; here it just misses events


_fanout: Dict[str, Fanout] = {}


def fanout() -> Fanout:
    if "f" not in _fanout:
        _fanout["f"] = Fanout(os.environ["BENCH_REDIS_URL"])
    return _fanout["f"]


async def stream(request: Request) -> Response:
    channel = request.query_params.get("channel", "sse")
    if not _CHANNEL.fullmatch(channel):
        return JSONResponse({"error": "bad channel"}, status_code=400)
    queue: "asyncio.Queue[bytes]" = asyncio.Queue(QUEUE_SIZE)
    hub = fanout()
    await hub.attach(channel, queue)

    async def events() -> AsyncIterator[Any]:
        try:
            yield b"retry: 3000\n\n"
            while True:
                chunk = await queue.get()
                if not queue.empty():
                    parts = [chunk]
                    while not queue.empty():
                        parts.append(queue.get_nowait())
                    chunk = b"".join(parts)
                yield chunk
        finally:
            await hub.detach(channel, queue)

    return EventSourceResponse(events(), ping=15, headers={"X-Accel-Buffering": "no"})


async def ping(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid()})


app = Starlette(routes=[Route("/stream", stream), Route("/ping", ping)])
