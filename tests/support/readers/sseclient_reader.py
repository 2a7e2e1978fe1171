"""sseclient-py over urllib3, as its README shows: ``python -m support.readers.sseclient_reader URL``.

sseclient-py parses a response it is given; reconnecting is the caller's part, with the last
``event.id`` it yielded and the ``event.retry`` it reported.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

import sseclient
import urllib3

from support.readers import emit, emit_event


def main(url: str) -> None:
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10.0, read=None))
    last_id, retry_ms = "", 1000
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        response = http.request("GET", url, preload_content=False, headers=headers)
        assert response.status == 200, response.status
        emit(open=True)
        for event in sseclient.SSEClient(response).events():
            retry: Optional[int] = None if event.retry is None else int(event.retry)
            emit_event(event.event, event.data, event.id, retry)
            if event.id is not None:
                last_id = event.id
            if retry is not None:
                retry_ms = retry
            if event.event == "done":
                return
        response.release_conn()
        time.sleep(retry_ms / 1000)


if __name__ == "__main__":
    main(sys.argv[1])
