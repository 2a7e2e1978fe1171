"""aiohttp-sse-client: ``python -m support.readers.aiohttp_reader URL``.

Its ``EventSource`` reconnects by itself (after twice the ``retry`` it was sent) with
``Last-Event-Id``; it yields ``type`` ``None`` for an event with no ``event:`` field, which
is ``message`` in the EventSource API, and does not expose ``retry``.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp_sse_client.client import EventSource  # type: ignore[import-untyped]

from support.readers import emit, emit_event


async def main(url: str) -> None:
    async with EventSource(url, on_open=lambda: emit(open=True)) as source:
        async for event in source:
            emit_event(event.type or "message", event.data, event.last_event_id, None)
            if event.type == "done":
                return


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
