"""The tunnel benchmark's upstream: "the laptop's opencode", a small asyncio HTTP/1.1 server.

    python benchmarks/tunnel/upstream.py PORT

- ``GET /small``: 100 bytes.
- ``GET /bulk?n=N``: N bytes (Content-Length), streamed in 256 KiB chunks as fast as the
  connection takes them. The bytes depend on their offset (a seeded random block of a prime
  length, repeated), so two downloads of the same N are byte-identical and a reordered or
  dropped chunk changes the digest (see ``expected_bulk``).
- ``GET /sse``: a Server-Sent Events stream; every 100 ms each open stream gets
  ``data: <time.time() when sent>``.
- ``POST /echo``: the request body back, streamed (Content-Length).
- ``POST /upload``: reads and discards the body, answers ``{"length": N}``.

Keep-alive; one request at a time per connection; request bodies need Content-Length.
Plain asyncio protocols, no framework, so it is not the bottleneck of what it measures.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from urllib.parse import parse_qs, urlsplit

PERIOD = 1_048_583  # a prime: chunk boundaries never line up with the pattern
CHUNK = 256 * 1024
_PATTERN = random.Random(20261128).randbytes(PERIOD)
_DOUBLED = memoryview(_PATTERN + _PATTERN)
SMALL = b"s" * 100


def expected_bulk(n: int) -> bytes:
    """What ``/bulk?n=N`` sends (for integrity checks; builds it in memory)."""
    whole, rest = divmod(n, PERIOD)
    return _PATTERN * whole + _PATTERN[:rest]


class SSE:
    def __init__(self) -> None:
        self.listeners: set[asyncio.Transport] = set()

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += 0.1
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            body = f"data: {time.time():.6f}\n\n".encode()
            chunk = b"%x\r\n%s\r\n" % (len(body), body)
            for transport in list(self.listeners):
                if transport.is_closing():
                    self.listeners.discard(transport)
                else:
                    transport.write(chunk)


class HTTP(asyncio.Protocol):
    def __init__(self, sse: SSE) -> None:
        self.sse = sse
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.body_left = 0  # request body bytes still to come
        self.body_mode: str | None = None  # "echo" | "upload" | "discard"
        self.uploaded = 0
        self.sending = 0  # /bulk bytes still to send
        self.offset = 0
        self.paused = False
        self.busy = False  # a response is in progress: further requests wait
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.sse.listeners.discard(self.transport)
        self.sending = 0

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self.body_left:
            take = min(self.body_left, len(data))
            self._body(data[:take])
            data = data[take:]
        if data:
            self.buf += data
        self._next()

    def _body(self, chunk: bytes) -> None:
        self.body_left -= len(chunk)
        if self.body_mode == "echo":
            assert self.transport is not None
            self.transport.write(chunk)
        else:
            self.uploaded += len(chunk)
        if self.body_left == 0:
            if self.body_mode == "upload":
                self._respond(
                    200, json.dumps({"length": self.uploaded}).encode(), "application/json"
                )
            else:
                self._done()

    def _next(self) -> None:
        while not self.busy and not self.body_left:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self._error(431)
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            line, *lines = head.split("\r\n")
            try:
                method, target, version = line.split(" ")
            except ValueError:
                return self._error(400)
            headers = {}
            for h in lines:
                name, _, value = h.partition(":")
                headers[name.strip().lower()] = value.strip()
            conn = headers.get("connection", "").lower()
            self.keep_alive = conn != "close" and (version == "HTTP/1.1" or conn == "keep-alive")
            if "chunked" in headers.get("transfer-encoding", "").lower():
                return self._error(411)
            length = int(headers.get("content-length", "0") or 0)
            if length and headers.get("expect", "").lower() == "100-continue":
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.busy = True
            self._route(method, target, length)
            self._buffered_body()

    def _buffered_body(self) -> None:
        """Request body bytes that came with the head."""
        if self.body_left and self.buf:
            take = min(self.body_left, len(self.buf))
            chunk = bytes(self.buf[:take])
            del self.buf[:take]
            self._body(chunk)

    def _route(self, method: str, target: str, length: int) -> None:
        parts = urlsplit(target)
        path = parts.path
        if path == "/small" and method in ("GET", "HEAD"):
            self._expect_body(length, "discard")
            return self._respond(200, SMALL, "text/plain")
        if path == "/bulk" and method == "GET":
            n = int(parse_qs(parts.query).get("n", ["1048576"])[0])
            self._expect_body(length, "discard")
            self._head(200, "application/octet-stream", n)
            self.sending, self.offset = n, 0
            return self._pump()
        if path == "/sse" and method == "GET":
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
                b"9\r\n: hello\n\n\r\n"
            )
            self.sse.listeners.add(self.transport)
            return  # busy for ever: an event stream is the connection's last response
        if path == "/echo" and method == "POST":
            self._head(200, "application/octet-stream", length)
            self.body_left, self.body_mode = length, "echo"
            if not length:
                self._done()
            return
        if path == "/upload" and method in ("POST", "PUT"):
            self.body_left, self.body_mode, self.uploaded = length, "upload", 0
            if not length:
                self._respond(200, b'{"length": 0}', "application/json")
            return
        self._expect_body(length, "discard")
        self._respond(404, b"not found\n", "text/plain")

    def _expect_body(self, length: int, mode: str) -> None:
        self.body_left, self.body_mode = length, mode

    def _head(self, code: int, content_type: str, length: int) -> None:
        assert self.transport is not None
        reason = {200: "OK", 404: "Not Found"}.get(code, "Error")
        self.transport.write(
            f"HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {length}\r\n\r\n".encode()
        )

    def _respond(self, code: int, body: bytes, content_type: str) -> None:
        self._head(code, content_type, len(body))
        assert self.transport is not None
        self.transport.write(body)
        if not self.body_left:
            self._done()

    def _pump(self) -> None:
        transport = self.transport
        if transport is None or not self.sending:
            return
        while self.sending and not self.paused and not transport.is_closing():
            at = self.offset % PERIOD
            n = min(CHUNK, self.sending)
            transport.write(_DOUBLED[at : at + n])
            self.offset += n
            self.sending -= n
        if not self.sending and not transport.is_closing():
            self._done()

    def _done(self) -> None:
        self.busy = False
        self.body_mode = None
        if not self.keep_alive:
            assert self.transport is not None
            self.transport.close()
            return
        if self.buf:
            asyncio.get_running_loop().call_soon(self._next)

    def _error(self, code: int) -> None:
        assert self.transport is not None
        self.transport.write(f"HTTP/1.1 {code} Error\r\ncontent-length: 0\r\n\r\n".encode())
        self.transport.close()


async def main(port: int) -> None:
    sse = SSE()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HTTP(sse), "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    ticker = asyncio.ensure_future(sse.tick())
    print(f"upstream listening on 127.0.0.1:{port}", flush=True)
    try:
        await server.serve_forever()
    finally:
        ticker.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
