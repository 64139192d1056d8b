"""Request bodies through a real twisted.web Site with our request class: kept in memory,
never in a temporary file; refused at once past a route's cap or the shared budget."""

from __future__ import annotations

import json
import tempfile
from io import BytesIO
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from cli_server.anthropic.listener import MAX_CONNECTIONS, _DoorSite
from cli_server.plumbing.request_line import RequestLineChannel
from cli_server.web.request import BODIES, LINGER, BodyBudget, BoundedRequest, request_site
from cli_server.web.serving import QuietSandboxSite

MIB = 1024 * 1024


class Echo(Resource):
    """Answers with the size of the body it got, and whether it was in memory."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        body = request.content.read()
        answer = {"size": len(body), "memory": isinstance(request.content, BytesIO)}
        return json.dumps(answer).encode()


@pytest.fixture(autouse=True)
def no_temporary_files(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a request body went to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


def site(budget: int = 256 * MIB, share: int | None = None) -> tuple[QuietSandboxSite, Clock]:
    clock = Clock()
    web = QuietSandboxSite(Echo(), b"example.test", requestFactory=BoundedRequest, reactor=clock)
    web.body_budget = BodyBudget(budget, share or budget)  # type: ignore[attr-defined]
    return web, clock


def connect(web: Any, peer: str = "127.0.0.1") -> tuple[Any, StringTransport]:
    address = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 1234)
    protocol = web.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def head(path: str, length: int, host: str = "example.test") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def status(transport: StringTransport) -> int:
    return int(transport.value().split(b" ", 2)[1])


def test_large_body_in_memory() -> None:
    """A body over twisted.web's 100 kB threshold stays in memory and reaches the handler."""
    web, clock = site()
    protocol, transport = connect(web)
    protocol.dataReceived(head("/api/x", 500_000) + b"x" * 500_000)
    clock.advance(0)
    assert status(transport) == 200
    assert json.loads(transport.value().split(b"\r\n\r\n", 1)[1]) == {
        "size": 500_000,
        "memory": True,
    }
    assert web.body_budget.held == 0  # type: ignore[attr-defined]


def test_oversized_length_refused_before_the_body() -> None:
    """A Content-Length above the route's cap is answered 413 with nothing of the body sent,
    and the connection closes."""
    web, clock = site()
    protocol, transport = connect(web)
    protocol.dataReceived(head("/api/auth/login", 2 * MIB))
    clock.advance(0)
    assert status(transport) == 413
    answer = json.loads(transport.value().split(b"\r\n\r\n", 1)[1])
    assert answer["error"]["code"] == "payload_too_large"
    assert "1 MiB" in answer["error"]["message"]
    assert transport.disconnecting


@implementer(ITCPTransport)
class TCPish(StringTransport):
    """A StringTransport that, like TCP, can close for writing only."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def test_refused_connection_lingers_so_the_answer_arrives() -> None:
    """Over TCP the refusal half-closes and drops what still comes for LINGER seconds: an
    immediate close with unread data would reset the connection and lose the answer."""
    web, clock = site()
    protocol = web.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = TCPish(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
    protocol.makeConnection(transport)
    protocol.dataReceived(head("/api/auth/login", 2 * MIB) + b"x" * 1000)
    clock.advance(0)
    assert status(transport) == 413
    assert transport.write_closed and not transport.disconnecting
    protocol.dataReceived(b"y" * MIB)  # dropped, not parsed as a request
    assert transport.value().count(b"HTTP/1.1") == 1
    clock.advance(LINGER)
    assert transport.disconnecting


def test_anthropic_route_cap_and_shape() -> None:
    """The Anthropic path takes up to 32 MiB, and refuses more in Anthropic's error shape."""
    web, clock = site()
    protocol, transport = connect(web)
    protocol.dataReceived(head("/proxy/anthropic/v1/messages", 33 * MIB))
    clock.advance(0)
    assert status(transport) == 413
    answer = json.loads(transport.value().split(b"\r\n\r\n", 1)[1])
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "request_too_large"


def test_chunked_body_refused_when_it_passes_the_cap() -> None:
    """A chunked body (no length) is refused as soon as it grows past the cap."""
    web, clock = site()
    protocol, transport = connect(web)
    protocol.dataReceived(
        b"POST /api/x HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (256 * 1024, b"y" * 256 * 1024)
    for _ in range(5):
        protocol.dataReceived(chunk)
    clock.advance(0)
    assert status(transport) == 413
    assert transport.disconnecting
    assert web.body_budget.held == 0  # type: ignore[attr-defined]


def test_budget_shared_by_unfinished_bodies() -> None:
    """Unfinished bodies hold the budget; past it new bodies get 503 at once; a closed
    connection gives its bytes back."""
    web, clock = site(budget=4 * MIB)
    held = []
    for _ in range(3):
        protocol, transport = connect(web)
        protocol.dataReceived(head("/proxy/anthropic/v1/messages", 2 * MIB) + b"z" * MIB)
        held.append((protocol, transport))
    clock.advance(0)
    assert web.body_budget.held == 3 * MIB  # type: ignore[attr-defined]
    assert all(t.value() == b"" for _, t in held)  # still waiting for their bodies

    # A body that cannot fit is refused as soon as its length is known.
    protocol, transport = connect(web)
    protocol.dataReceived(head("/proxy/anthropic/v1/messages", 2 * MIB))
    clock.advance(0)
    assert status(transport) == 503
    assert b"overloaded_error" in transport.value()

    # A held body that grows past what is left is refused then, and gives its bytes back.
    first, first_transport = held[0]
    first.dataReceived(b"z" * (MIB - 1))
    assert web.body_budget.held == 4 * MIB - 1  # type: ignore[attr-defined]
    assert first_transport.value() == b""
    second, second_transport = held[1]
    second.dataReceived(b"zz")
    clock.advance(0)
    assert status(second_transport) == 503
    assert second_transport.disconnecting
    assert web.body_budget.held == 3 * MIB - 1  # type: ignore[attr-defined]

    first.connectionLost(Failure(ConnectionError("gone")))
    assert web.body_budget.held == MIB  # type: ignore[attr-defined]

    protocol, transport = connect(web)
    protocol.dataReceived(head("/api/x", 1000) + b"a" * 1000)
    clock.advance(0)
    assert status(transport) == 200
    assert web.body_budget.held == MIB  # type: ignore[attr-defined]


def test_one_source_holds_a_share() -> None:
    """One address (or one IPv6 /64) holds at most its share; another still gets in."""
    web, clock = site(budget=8 * MIB, share=2 * MIB)
    sources = ["10.0.0.1", "2001:db8::1", "2001:db8::2", "10.0.0.2"]
    answers = []
    for peer in sources:
        protocol, transport = connect(web, peer)
        protocol.dataReceived(head("/proxy/anthropic/v1/messages", 2 * MIB) + b"s" * (MIB + 1))
        answers.append(transport)
    clock.advance(0)
    # 10.0.0.1 and 10.0.0.2 each hold theirs; the /64's second body does not fit its share.
    assert [t.value()[:12] for t in answers] == [b"", b"", b"HTTP/1.1 503", b""]
    assert web.body_budget.held == 3 * (MIB + 1)  # type: ignore[attr-defined]

    door = _DoorSite(Echo(), requestFactory=BoundedRequest, reactor=clock)
    door.body_budget = web.body_budget  # type: ignore[attr-defined]
    protocol = door.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(head("/proxy/anthropic/v1/messages", 2 * MIB) + b"d" * MIB)
    clock.advance(0)
    assert transport.value() == b""  # a door is a source of its own
    assert web.body_budget.held == 4 * MIB + 3  # type: ignore[attr-defined]


def test_sandbox_uploads_still_stream() -> None:
    """A body for a sandbox's subdomain is not capped or stored: it is rendered early."""
    rendered: list[Any] = []

    class Sandbox(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            rendered.append(request)
            return 1  # NOT_DONE_YET

    clock = Clock()
    web = QuietSandboxSite(Sandbox(), b"example.test", requestFactory=BoundedRequest, reactor=clock)
    protocol, _ = connect(web)
    protocol.dataReceived(head("/upload", 100 * MIB, host="oc-abc.example.test") + b"u" * MIB)
    clock.advance(0)
    assert len(rendered) == 1
    assert rendered[0].streamed_body is not None
    assert rendered[0].content.getvalue() == b""


def test_idle_timeout_is_short() -> None:
    """A connection that stops sending mid-body is closed after a minute."""
    web, clock = site()
    protocol, transport = connect(web)
    protocol.dataReceived(head("/api/x", 1000) + b"a" * 10)
    clock.advance(61)
    assert transport.disconnecting


def test_door_connection_cap() -> None:
    """One sandbox's door keeps at most MAX_CONNECTIONS open; closing one lets another in."""
    door = _DoorSite(Echo(), requestFactory=BoundedRequest, reactor=Clock())
    address = IPv4Address("TCP", "127.0.0.1", 1)
    protocols = [door.buildProtocol(address) for _ in range(MAX_CONNECTIONS)]
    for p in protocols:
        p.makeConnection(StringTransport())
    assert door.buildProtocol(address) is None
    protocols[0].connectionLost(Failure(ConnectionError("gone")))
    assert door.buildProtocol(address) is not None


class _Recorder(Resource):
    """A leaf that keeps the requests it renders and answers later."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list[BoundedRequest] = []

    def render(self, request: Any) -> Any:
        self.rendered.append(request)
        return 1  # NOT_DONE_YET


def test_our_sites_say_what_their_requests_read() -> None:
    """The main site and a sandbox's door are ``RequestSite``s (their requests read their base
    domain, trusted proxies, open requests, door flag and budget); a plain twisted.web Site is
    not, and neither is a channel's missing site (the client left)."""
    web, _ = site()
    door = _DoorSite(Echo(), requestFactory=BoundedRequest, reactor=Clock())
    assert request_site(web) is web
    assert request_site(door) is door
    assert request_site(Site(Echo())) is None
    assert request_site(None) is None


def test_the_main_site_tells_sandbox_hosts_by_its_base_domain() -> None:
    """Only a subdomain of the site's own base domain streams its upload; an "oc-" host of
    another domain is an API request, and its 100 MiB body is refused (413)."""
    clock = Clock()
    recorder = _Recorder()
    web = QuietSandboxSite(recorder, b"example.test", requestFactory=BoundedRequest, reactor=clock)
    protocol, transport = connect(web)
    protocol.dataReceived(head("/upload", 100 * MIB, host="oc-abc.elsewhere.test") + b"u")
    clock.advance(0)
    assert recorder.rendered == []
    assert status(transport) == 413


def test_a_plain_site_gets_the_defaults() -> None:
    """A plain twisted.web Site with our request class (and channel): a sandbox host is told
    by its "oc-" prefix (its upload streams), and an API body is capped and counted in the
    shared budget, which it gives back once answered."""
    clock = Clock()
    recorder = _Recorder()
    plain = Site(recorder, requestFactory=BoundedRequest, reactor=clock)
    plain.protocol = RequestLineChannel  # type: ignore[assignment]
    protocol, _ = connect(plain)
    protocol.dataReceived(head("/upload", 100 * MIB, host="oc-abc.anything.test") + b"u" * MIB)
    clock.advance(0)
    assert len(recorder.rendered) == 1
    assert recorder.rendered[0].streamed_body is not None

    held = BODIES.held
    protocol, transport = connect(plain)
    protocol.dataReceived(head("/api/x", 1000) + b"a" * 1000)
    assert len(recorder.rendered) == 2
    assert BODIES.held == held + 1000  # (the shared budget: the site has none of its own)
    request = recorder.rendered[1]
    request.write(b"{}")
    request.finish()
    assert BODIES.held == held


def test_without_our_channel_an_upload_waits_for_its_body() -> None:
    """On twisted.web's own channel a request learns its line only once its body is in: a
    sandbox's upload is then buffered (capped), not rendered while it arrives."""
    clock = Clock()
    recorder = _Recorder()
    plain = Site(recorder, requestFactory=BoundedRequest, reactor=clock)
    protocol, _ = connect(plain)
    protocol.dataReceived(head("/upload", 2 * MIB, host="oc-abc.anything.test") + b"u" * MIB)
    clock.advance(0)
    assert recorder.rendered == []
    protocol.dataReceived(b"u" * MIB)
    assert len(recorder.rendered) == 1
    assert recorder.rendered[0].streamed_body is None
