"""Request bodies stream through the subdomain proxy: they reach the sandbox while the browser
is still sending, with no size cap, and a sandbox that reads slowly slows the browser down
instead of filling the server's memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from cli_server.proxy import upload as streamed_body
from cli_server.testing import FakeBackend

from .conftest import _reactor, server_config, start_server, stop_server
from .test_proxy import Proxy
from .test_proxy_opencode import Wire
from .test_sandboxes_api import team, wait_status
from .upstream import serve

MiB = 2**20


class RawUpstream(Protocol):
    """A FAKE sandbox at the TCP level: it sees bytes as they arrive, answers once a whole body
    is in, and can stop reading."""

    def __init__(self, owner: Upstreams) -> None:
        self.owner = owner
        self.head = b""
        self.length = 0
        self._body = bytearray()
        self._pending = b""

    def connectionMade(self) -> None:
        self.owner.connections.append(self)
        if self.owner.stalled:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if not self.head:
            self._pending += data
            head, sep, data = self._pending.partition(b"\r\n\r\n")
            if not sep:
                return
            self.head = head
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    self.length = int(line.split(b":", 1)[1])
        self._body += data
        if len(self._body) == self.length:
            digest = hashlib.sha256(self._body).hexdigest().encode()
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(digest), digest)
            )

    def body(self) -> bytes:
        return bytes(self._body)

    @property
    def received(self) -> int:
        return len(self._body)


@attrs.define
class Upstreams(Factory):
    connections: list[RawUpstream] = attrs.field(factory=list)
    stalled: bool = False

    def buildProtocol(self, addr: Any) -> RawUpstream:
        return RawUpstream(self)


@attrs.define
class Setup:
    proxy: Proxy
    upstreams: Upstreams
    cookie: str

    async def send(self, head_length: int, first: bytes) -> Wire:
        wire = Wire()
        endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", self.proxy.app.port.getHost().port)
        await connectProtocol(endpoint, wire)
        assert wire.transport is not None
        wire.transport.write(
            f"POST /upload HTTP/1.1\r\nHost: {self.proxy.host()}\r\n"
            f"Cookie: cli_sandbox={self.cookie}\r\nContent-Length: {head_length}\r\n\r\n".encode()
            + first
        )
        return wire


@pytest_twisted.async_yield_fixture
async def raw(db_url: str) -> AsyncIterator[Setup]:
    reactor = _reactor()
    upstreams = Upstreams()
    port = reactor.listenTCP(0, upstreams, interface="127.0.0.1")
    app = await start_server(
        db_url, backend=FakeBackend(serve_at=port.getHost().port), config=server_config(db_url)
    )
    people, wid = await team(app)
    made = await people["owner"].call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "u"})
    await wait_status(people["owner"], made.body["id"], "running")
    proxy = Proxy(app, None, people, wid, made.body["id"])  # type: ignore[arg-type]
    yield Setup(proxy, upstreams, await proxy.open("developer"))
    await stop_server(app)
    await port.stopListening()


async def wait(check: Any, timeout: float = 20) -> None:
    from .helpers import wait_until

    await wait_until(_reactor(), check, timeout=timeout, step=0.02)


@pytest_twisted.ensureDeferred
async def test_the_body_reaches_the_sandbox_while_it_is_still_being_sent(raw: Setup) -> None:
    body = os.urandom(8 * MiB)
    wire = await raw.send(len(body), body[:MiB])
    await wait(lambda: raw.upstreams.connections and raw.upstreams.connections[-1].received >= MiB)
    upstream = raw.upstreams.connections[-1]
    assert upstream.body() == body[:MiB]  # the first MiB arrived, the rest is not sent yet
    assert b"cli_sandbox" not in upstream.head  # (hygiene holds for streamed requests)
    assert wire.transport is not None
    wire.transport.write(body[MiB:])
    digest = hashlib.sha256(body).hexdigest().encode()
    await wait(lambda: digest in wire.received)
    assert wire.received.startswith(b"HTTP/1.1 200")


@pytest_twisted.ensureDeferred
async def test_a_sandbox_that_reads_nothing_stops_the_upload_not_our_memory(
    raw: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies: list[streamed_body.StreamedBody] = []
    original = streamed_body.StreamedBody.__init__

    def recording(self: streamed_body.StreamedBody, *args: Any) -> None:
        original(self, *args)
        bodies.append(self)

    monkeypatch.setattr(streamed_body.StreamedBody, "__init__", recording)
    raw.upstreams.stalled = True
    body = os.urandom(96 * MiB)
    wire = await raw.send(len(body), body)  # all of it, as fast as the connection takes it
    await wait(lambda: bodies and bodies[-1]._holding)
    history: list[int] = []

    def settled() -> bool:
        history.append(bodies[-1]._buffered)
        return len(history) > 10 and len(set(history[-10:])) == 1

    await wait(settled)
    # Held back: at most about HIGH_WATER in our memory; the rest waits in the socket buffers
    # of the kernel and of the sending client.
    assert bodies[-1]._buffered < streamed_body.HIGH_WATER + 2 * MiB, bodies[-1]._buffered
    upstream = raw.upstreams.connections[-1]
    assert upstream.received < 8 * MiB  # (what the kernel buffers; the rest waits upstream)
    upstream.transport.resumeProducing()  # type: ignore[union-attr]
    digest = hashlib.sha256(body).hexdigest().encode()
    await wait(lambda: digest in wire.received, timeout=60)
    assert upstream.body() == body


@pytest_twisted.async_yield_fixture
async def recorded(db_url: str) -> AsyncIterator[Proxy]:
    reactor = _reactor()
    recorder, port = serve(reactor)
    app = await start_server(
        db_url, backend=FakeBackend(serve_at=port.getHost().port), config=server_config(db_url)
    )
    people, wid = await team(app)
    made = await people["owner"].call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "r"})
    await wait_status(people["owner"], made.body["id"], "running")
    yield Proxy(app, recorder, people, wid, made.body["id"])
    await stop_server(app)
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_uploads_larger_than_the_old_64_mib_cap_arrive_whole(recorded: Proxy) -> None:
    cookie = await recorded.open("developer")
    upload = os.urandom(100 * MiB)
    reply = await recorded.app.client().call(
        "PUT",
        "/digest",
        raw=upload,
        headers={"Host": recorded.host(), "Cookie": f"cli_sandbox={cookie}"},
    )
    assert reply.code == 200, reply
    assert reply.body == {"length": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}


@pytest_twisted.ensureDeferred
async def test_a_slow_upload_is_not_cut_by_the_answer_timeout(raw: Setup) -> None:
    """The proxy waits at most its header timeout for an answer, counted from the end of the
    upload, not from its start."""
    from twisted.internet.task import deferLater

    forwarder = raw.proxy.app.server.site.resource.sandboxes.forwarder
    forwarder.header_timeout = 0.5  # (uploads over 64 MiB, and local sandboxes)
    raw.proxy.app.server.router.routes.timeout = 0.5  # (the router waits that long for a head)
    body = os.urandom(4 * 64 * 1024)
    wire = await raw.send(len(body), b"")
    assert wire.transport is not None
    for n in range(4):  # 4 pieces, 0.3 s apart: 1.2 s in all, over twice the timeout
        await deferLater(_reactor(), 0.3, lambda: None)
        wire.transport.write(body[n * 65536 : (n + 1) * 65536])
    digest = hashlib.sha256(body).hexdigest().encode()
    await wait(lambda: digest in wire.received)
    assert wire.received.startswith(b"HTTP/1.1 200")


@pytest_twisted.ensureDeferred
async def test_an_answer_before_the_body_ends_closes_the_connection_cleanly(raw: Setup) -> None:
    """Refused before the upload is in (here: no valid cookie): the page says Connection:
    close, the connection closes, and what the browser still sends is dropped, not parsed."""
    raw.cookie = "not-a-session"
    wire = await raw.send(64 * MiB, os.urandom(MiB))
    await wait(lambda: b"</html>" in wire.received)
    head = wire.received.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 401") and b"connection: close" in head
    assert wire.transport is not None
    wire.transport.write(os.urandom(MiB) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait(lambda: wire.closed.called)
    assert wire.received.count(b"HTTP/1.1") == 1
    assert raw.upstreams.connections == []  # nothing reached the sandbox
