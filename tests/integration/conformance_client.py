"""A browser's side for the conformance matrix, in raw bytes: requests written exactly as
given, over plain TCP or TLS, and answers read by their own framing."""

from __future__ import annotations

from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.web.client import Agent
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from .conformance_upstream import dechunk
from .conftest import Running
from .helpers import Api


@attrs.define
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]  # (lower-case name, value), in order
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


class Browser(Protocol):
    """One connection; ``received`` holds every byte, ``closed`` fires when it ends."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._waiting: list[Deferred[None]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._wake()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    async def more(self, timeout: float) -> None:
        """Until more bytes arrive or the connection ends (a TimeoutError after ``timeout``)."""
        if self.closed.called:
            raise ConnectionError("the connection has ended")
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        d.addTimeout(timeout, self.reactor)
        await d

    async def answer(self, head_request: bool = False, timeout: float = 10.0) -> Answer:
        """The next whole answer (a 101's head alone), taken off ``received``."""
        while True:
            parsed = parse_answer(self.received, head_request, self.closed.called)
            if parsed is not None:
                answer, self.received = parsed
                return answer
            await self.more(timeout)

    def close(self) -> None:
        if not self.closed.called:
            self.transport.abortConnection()  # type: ignore[union-attr]


def parse_answer(data: bytes, head_request: bool, ended: bool) -> tuple[Answer, bytes] | None:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    answer = Answer(status, headers, b"")
    rest = data[end + 4 :]
    if head_request or status in (101, 204, 304):
        return answer, rest
    te = b",".join(answer.values(b"transfer-encoding")).lower()
    if b"chunked" in te:
        whole = dechunk(rest)
        if whole is None:
            return None
        answer.body, rest = whole
        return answer, rest
    length = answer.values(b"content-length")
    if length:
        n = int(length[0])
        if len(rest) < n:
            return None
        answer.body = rest[:n]
        return answer, rest[n:]
    if not ended:
        return None
    answer.body = rest
    return answer, b""


async def connect(reactor: Any, port: int, tls: bool) -> Browser:
    browser = Browser(reactor)
    if tls:  # (the test's self-signed certificate: nothing to verify it against)
        endpoint: Any = SSL4ClientEndpoint(reactor, "127.0.0.1", port, CertificateOptions())
    else:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await connectProtocol(endpoint, browser)
    return browser


@implementer(IPolicyForHTTPS)
@attrs.frozen
class TrustOurCertificate:
    """The test's self-signed certificate (for ``localhost``), whatever address is dialled."""

    certificate: Certificate

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS("localhost", trustRoot=self.certificate)


@attrs.define(eq=False)
class TlsApi(Api):
    """An API client over TLS: the only way a ``Secure`` session cookie is sent back."""

    policy: TrustOurCertificate | None = None

    @property
    def http(self) -> HTTPClient:
        agent = Agent(self.reactor, contextFactory=self.policy, pool=self.pool)
        jar: Any = self.jar  # (treq's stubs ask for its own jar type; any CookieJar works)
        return HTTPClient(agent, cookiejar=jar)


class OverTls(Running):
    """A running server whose API clients use its TLS listener."""

    def __init__(self, running: Running, port: int, policy: TrustOurCertificate) -> None:
        super().__init__(running.server, running.port, running.reactor)
        self.base = f"https://127.0.0.1:{port}"
        self.policy = policy

    def client(self) -> Api:
        return TlsApi(self.reactor, self.base, self.pool, policy=self.policy)
