"""A raw-socket HTTP/1.1 client for event streams: what a test reads is the bytes on the wire.

Every ``RawStream`` not closed by its test is closed after it (the ``_close_streams`` fixture).
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

from support.parser import ParsedEvent, SSEParser

__all__ = ["HEARTBEAT", "OPEN", "RawStream", "request"]

HEARTBEAT = b":\n"

#: Streams not closed yet; the suite closes them after each test.
OPEN: List["RawStream"] = []


class RawStream:
    """One connection: sends a GET, parses the status and headers, then de-chunks the body."""

    def __init__(
        self,
        port: int,
        path: str,
        headers: Optional[Dict[str, str]] = None,
        timeout: float = 5.0,
        host: str = "127.0.0.1",
        rcvbuf: Optional[int] = None,
        method: str = "GET",
        body: bytes = b"",
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            # Set before connecting, so the window the server sees is small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        OPEN.append(self)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self._buf = b""
        self.parser = SSEParser()
        self.backlog: List[ParsedEvent] = []
        self.ended = False
        head = self._read_until(b"\r\n\r\n", timeout)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers: Dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding") == "chunked"

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the server in time") from None
        if not data:
            raise EOFError("connection closed by the server")
        self._buf += data

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self._buf:
            self._fill(deadline)
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _read_exact(self, size: int, deadline: float) -> bytes:
        while len(self._buf) < size:
            self._fill(deadline)
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def body(self, timeout: float = 5.0) -> bytes:
        """The whole body of a non-streaming (error) response."""
        deadline = time.monotonic() + timeout
        if self.chunked:
            return b"".join(iter(lambda: self.chunk(timeout), None))
        return self._read_exact(int(self.headers.get("content-length", "0")), deadline)

    def json(self) -> Any:
        return json.loads(self.body())

    def chunk(self, timeout: float = 5.0) -> Optional[bytes]:
        """The next HTTP chunk, exactly as the server wrote it; ``None`` at the end of the body.

        A chunk is taken off the buffer only once all of it arrived, so after a
        ``TimeoutError`` the next call reads the same chunk on.
        """
        if self.ended:
            return None
        deadline = time.monotonic() + timeout
        while True:
            size_line, crlf, _ = self._buf.partition(b"\r\n")
            if crlf:
                start = len(size_line) + 2
                size = int(size_line, 16)
                if len(self._buf) >= start + size + 2:
                    data, self._buf = self._buf[start : start + size], self._buf[start + size + 2 :]
                    if size == 0:
                        self.ended = True
                        return None
                    return data
            self._fill(deadline)

    def chunks(self, count: int, timeout: float = 5.0, heartbeats: bool = False) -> List[bytes]:
        """The next ``count`` chunks, skipping heartbeat-only chunks unless ``heartbeats``."""
        out: List[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            data = self.chunk(max(0.01, deadline - time.monotonic()))
            if data is None:
                raise EOFError(f"stream ended after {out!r}")
            if heartbeats or data != HEARTBEAT:
                out.append(data)
        return out

    def events(self, count: int, timeout: float = 5.0) -> List[ParsedEvent]:
        """The next ``count`` events as a browser would dispatch them."""
        out, self.backlog = self.backlog, []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            data = self.chunk(max(0.01, deadline - time.monotonic()))
            if data is None:
                raise EOFError(f"stream ended after {out!r}")
            out.extend(self.parser.feed(data))
        if len(out) > count:
            raise AssertionError(f"expected {count} events, got more: {out!r}")
        return out

    def opening(self, retry: int = 3000) -> bytes:
        """Read the first chunk, check that it starts with the ``retry:`` hint, and keep the
        events it carries (a replay) for ``events``. Returns the chunk."""
        first = self.chunk()
        assert first is not None and first.startswith(b"retry: %d\n" % retry), first
        self.backlog.extend(self.parser.feed(first))
        return first

    def idle(self, seconds: float) -> List[bytes]:
        """Every chunk that arrives within ``seconds`` (for checking that nothing else does)."""
        out: List[bytes] = []
        deadline = time.monotonic() + seconds
        while True:
            try:
                data = self.chunk(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return out
            if data is None:
                return out
            out.append(data)

    def close(self, abrupt: bool = False) -> None:
        """Close; ``abrupt`` sends a TCP RST, as a crashed browser or a dropped phone does."""
        if abrupt:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        if self in OPEN:
            OPEN.remove(self)


def request(port: int, method: str, path: str, body: object = None) -> Tuple[int, Any]:
    """A plain HTTP request (JSON in, JSON out) on a fresh connection: the status, and the body
    parsed as JSON when it is an object or an array, else its bytes."""
    payload = b"" if body is None else json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        sock.sendall(head.encode() + payload)
        data = b""
        while True:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return status, json.loads(rest) if rest.startswith((b"{", b"[")) else rest
