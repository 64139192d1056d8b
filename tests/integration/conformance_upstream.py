"""A FAKE, hostile sandbox for the proxy's conformance matrix: it speaks raw HTTP/1.1,
records every request line, header block and body exactly as it arrives, and answers with
every header a sandbox must not get through to a browser (in its WebSocket 101 too)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall

# What a sandbox says that the proxy must keep from the browser, one cookie it may set and a
# policy of its own that must hold beside ours.
KEPT_COOKIE = b"kept=1; Path=/"
SANDBOX_CSP = b"script-src 'self'"
HOSTILE_HEADERS = (
    (b"Set-Cookie", KEPT_COOKIE),
    (b"Set-Cookie", b"wide=1; Domain=localhost; Path=/"),
    (b"Set-Cookie", b"dotted=1; Path=/; domain=.localhost"),
    (b"Set-Cookie", b"cli_sandbox=evil; Path=/"),
    (b"Set-Cookie", b"__Host-cli_sandbox=evil; Path=/; Secure"),
    (b"Set-Cookie", b"CLI_Session=evil; Path=/"),
    (b"Set-Cookie", b"__secure-CLI_SESSION=evil; Path=/; Secure"),
    (b"Set-Cookie", b"nameless"),
    (b"Set-Cookie", b"=evil; Path=/"),
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Credentials", b"true"),
    (b"Clear-Site-Data", b'"*"'),
    (b"Alt-Svc", b'h3=":443"; ma=86400'),
    (b"Cross-Origin-Resource-Policy", b"cross-origin"),
    (b"Content-Security-Policy", SANDBOX_CSP),
    (b"X-Sandbox", b"answered"),
)
ANSWER = b"SANDBOX-ANSWER"  # begins every body the sandbox sends
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@attrs.define(eq=False)
class Seen:
    """One request as it reached the sandbox."""

    connection: int
    line: bytes  # the request line, without its CRLF
    block: bytes  # the header lines as sent, blank line included
    body: bytes = b""
    upgraded: bytes = b""  # what came after a 101, on that connection

    @property
    def method(self) -> bytes:
        return self.line.split(b" ")[0]

    @property
    def target(self) -> bytes:
        return self.line.split(b" ")[1]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """(lower-case name, value) in order."""
        out = []
        for line in self.block.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                out.append((name.strip().lower(), value.strip()))
        return out

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


@attrs.define(eq=False)
class Hostile:
    """What the hostile upstream has seen, and its open connections."""

    clock: IReactorTime
    seen: list[Seen] = attrs.field(factory=list)
    open: dict[int, Protocol] = attrs.field(factory=dict)
    streaming: set[int] = attrs.field(factory=set)  # connections with an event stream or 101
    hosts: dict[int, bytes] = attrs.field(factory=dict)  # each connection's last Host
    made: int = 0

    def reset(self) -> None:
        self.seen.clear()

    def stop(self, host: bytes) -> None:
        """The sandbox at ``host`` stops, as a paused one does: its connections end."""
        for number, protocol in list(self.open.items()):
            if self.hosts.get(number) == host:
                protocol.transport.abortConnection()  # type: ignore[union-attr]


class _Answering(Protocol):
    def __init__(self, hostile: Hostile, number: int) -> None:
        self.hostile, self.number = hostile, number
        self.buffer = b""
        self.upgraded: Seen | None = None
        self.ticks: LoopingCall | None = None

    def connectionMade(self) -> None:
        self.hostile.open[self.number] = self

    def connectionLost(self, reason: Any = None) -> None:
        self.hostile.open.pop(self.number, None)
        self.hostile.streaming.discard(self.number)
        self.hostile.hosts.pop(self.number, None)
        if self.ticks is not None and self.ticks.running:
            self.ticks.stop()

    def dataReceived(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.upgraded += data
            self.transport.write(data)  # type: ignore[union-attr]  # (an echo)
            return
        self.buffer += data
        while self.upgraded is None and self.ticks is None:
            request = _take_request(self.buffer)
            if request is None:
                return
            seen, self.buffer = request
            seen.connection = self.number
            self.hostile.hosts[self.number] = b"".join(seen.values(b"host"))
            self.hostile.seen.append(seen)
            self._answer(seen)

    def _answer(self, seen: Seen) -> None:
        write: Any = self.transport.write  # type: ignore[union-attr]
        hostile = b"".join(n + b": " + v + b"\r\n" for n, v in HOSTILE_HEADERS)
        if seen.values(b"upgrade") and seen.values(b"sec-websocket-key"):
            key = seen.values(b"sec-websocket-key")[0]
            accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
            write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n" + hostile
            )
            write(b"\r\n")
            self.upgraded = seen
            self.hostile.streaming.add(self.number)
            seen.upgraded += self.buffer
            self.buffer = b""
            return
        if seen.target.startswith(b"/events"):
            write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n" + hostile + b"\r\n"
            )
            self.hostile.streaming.add(self.number)
            self.ticks = LoopingCall(write, b"c\r\ndata: tick\n\n\r\n")
            self.ticks.clock = self.hostile.clock
            self.ticks.start(0.05)
            return
        body = ANSWER + b" " + seen.line
        write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            + hostile
            # (HEAD: the length of what GET would send, and no body)
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + (b"" if seen.method == b"HEAD" else body)
        )


def dechunk(data: bytes) -> tuple[bytes, bytes] | None:
    """A chunked body at the start of ``data``, decoded, and what follows it; None until
    its last chunk is in."""
    body = b""
    while True:
        size_end = data.find(b"\r\n")
        if size_end < 0:
            return None
        size = int(data[:size_end].split(b";")[0], 16)
        if len(data) < size_end + 2 + size + 2:
            return None
        body += data[size_end + 2 : size_end + 2 + size]
        data = data[size_end + 2 + size + 2 :]
        if size == 0:
            return body, data


def _take_request(buffer: bytes) -> tuple[Seen, bytes] | None:
    """The first whole request in ``buffer`` and what follows it, or None while incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    line_end = buffer.find(b"\r\n")
    seen = Seen(0, buffer[:line_end], buffer[line_end + 2 : end + 4])
    rest = buffer[end + 4 :]
    length = seen.values(b"content-length")
    if b"chunked" in b",".join(seen.values(b"transfer-encoding")).lower():
        whole = dechunk(rest)
        if whole is None:
            return None
        seen.body, rest = whole
        return seen, rest
    if length:
        n = int(length[0])
        if len(rest) < n:
            return None
        seen.body, rest = rest[:n], rest[n:]
    return seen, rest


class HostileFactory(Factory):
    noisy = False

    def __init__(self, hostile: Hostile) -> None:
        self.hostile = hostile

    def buildProtocol(self, addr: Any) -> _Answering:
        self.hostile.made += 1
        return _Answering(self.hostile, self.hostile.made)


def serve_hostile(reactor: Any) -> tuple[Hostile, Any]:
    hostile = Hostile(reactor)
    port = reactor.listenTCP(0, HostileFactory(hostile), interface="127.0.0.1")
    return hostile, port
