"""httpx-sse (the client of many LLM and agent SDKs): ``python -m support.readers.httpx_sse_reader URL``.

httpx-sse parses; reconnecting is the caller's part: its README resends ``event.id`` as
``Last-Event-ID`` after waiting ``event.retry`` milliseconds (as UTF-8 bytes here: httpx
refuses a ``str`` header value that is not ASCII).
"""

from __future__ import annotations

import sys
import time

import httpx
from httpx_sse import connect_sse

from support.readers import emit, emit_event


def main(url: str) -> None:
    last_id, retry_ms = "", 1000
    with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
        while True:
            # httpx refuses a str header value that is not ASCII: send the id's UTF-8 bytes.
            headers = {"Last-Event-ID": last_id.encode("utf-8")} if last_id else {}
            with connect_sse(client, "GET", url, headers=headers) as source:
                source.response.raise_for_status()
                emit(open=True)
                for event in source.iter_sse():
                    emit_event(event.event, event.data, event.id, event.retry)
                    last_id = event.id
                    if event.retry is not None:
                        retry_ms = event.retry
                    if event.event == "done":
                        return
            time.sleep(retry_ms / 1000)


if __name__ == "__main__":
    main(sys.argv[1])
