"""The relay's child process, started for real: it carries a TCP pair handed to it, serves
a keep-alive connection and gives it back, comes back when killed, and never outlives the
service."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport

from cli_server.proxy.live import Whose
from cli_server.proxy.relay_wire import Back, Grant
from cli_server.proxy.stream_relay import StreamRelay

from .conftest import _reactor
from .helpers import Wire, wait_until


async def tcp_pair(port: int) -> tuple[Wire, Wire]:
    """A connected pair: the client's end and the listening side's protocol."""
    accepted: list[Wire] = []

    class Accept(Factory):
        def buildProtocol(self, addr: Any) -> Wire:
            accepted.append(Wire())
            return accepted[-1]

    listening = _reactor().listenTCP(port, Accept(), interface="127.0.0.1")
    client = await connectProtocol(
        TCP4ClientEndpoint(_reactor(), "127.0.0.1", listening.getHost().port), Wire()
    )
    await wait_until(_reactor(), lambda: bool(accepted), timeout=5)
    await listening.stopListening()
    return client, accepted[0]


class Lease:
    """What the front door would keep of a connection it gave the relay (FAKE: it renews
    every grant for ``seconds`` and records what comes back)."""

    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds
        self.renewals = 0
        self.backs: list[tuple[bytes, Back]] = []

    def renew(self) -> float:
        self.renewals += 1
        return self.seconds

    def take_back(self, sock: socket.socket, data: bytes, why: Back, sandbox_id: str) -> None:
        self.backs.append((data, why))
        assert sandbox_id == "s1"
        sock.sendall(b"the server again")
        sock.close()


H = b"oc-0b6f1a3e-1111-4222-8333-444455556666.localhost"
GRANT = Grant(H, (b"c=1",), b"Basic eA==", b"127.0.0.1", b"http", b"s1", b"localhost", 2)
FIRST = b"GET /a HTTP/1.1\r\nHost: " + H + b"\r\nCookie: c=1\r\n\r\n"
WHOSE = Whose("u", "w", "s1")


@pytest_twisted.ensureDeferred
async def test_the_relay_streams_is_cut_comes_back_when_killed_and_ends_with_the_service() -> None:
    reactor = _reactor()
    relay = StreamRelay(reactor)
    relay.startService()
    try:
        # browser <-> [server side: ours_b]   [ours_s] <-> sandbox
        browser, ours_b = await tcp_pair(0)
        ours_s, sandbox = await tcp_pair(0)
        lease = Lease()
        assert not relay.serve(StringTransport(), ours_s.transport, GRANT, 5.0, FIRST, WHOSE, lease)
        assert relay.serve(ours_b.transport, ours_s.transport, GRANT, 5.0, FIRST, WHOSE, lease)
        relay.let_go(ours_b.transport, ours_s.transport)
        await ours_b.closed  # Twisted forgot both, without closing them for the child
        await wait_until(reactor, lambda: sandbox.received.endswith(b"\r\n\r\n"), timeout=5)
        sandbox.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
        )
        await wait_until(
            reactor, lambda: browser.received.endswith(b"9\r\ndata: 1\n\n\r\n"), timeout=5
        )
        assert relay.carrying == 1
        relay.cut(user_id="u")
        await browser.closed
        await sandbox.closed
        await wait_until(reactor, lambda: relay.carrying == 0, timeout=5)
        assert not browser.received.endswith(b"0\r\n\r\n")  # cut: no ending

        first = relay._process.pid
        os.kill(first, signal.SIGKILL)
        await wait_until(
            reactor, lambda: relay._process is not None and relay._process.pid != first, timeout=10
        )
        assert relay.ready
    finally:
        child = relay._process.pid if relay._process is not None else None
        await relay.stopService()
    assert child is not None and relay._process is None
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


@pytest_twisted.ensureDeferred
async def test_the_relay_serves_a_keep_alive_connection_and_gives_it_back() -> None:
    reactor = _reactor()
    relayed: list[tuple[str, int]] = []
    relay = StreamRelay(reactor, on_relayed=lambda sandbox, n: relayed.append((sandbox, n)))
    relay.startService()
    lease = Lease()
    try:
        browser, ours_b = await tcp_pair(0)
        ours_s, sandbox = await tcp_pair(0)
        # (a grant of 0.4 s: the second request asks for a renewal, which gives 5 s more)
        assert relay.serve(ours_b.transport, ours_s.transport, GRANT, 0.4, FIRST, WHOSE, lease)
        relay.let_go(ours_b.transport, ours_s.transport)
        for path in (b"/a", b"/b", b"/c"):  # request after request, on both connections
            if path == b"/c":
                await wait_until(reactor, lambda: lease.renewals == 1, timeout=5)
                await deferLater(reactor, 0.5)  # past the first grant
            if path != b"/a":
                browser.transport.write(FIRST.replace(b"/a", path))  # type: ignore[union-attr]
            await wait_until(reactor, lambda: sandbox.received.endswith(b"\r\n\r\n"), timeout=5)
            assert sandbox.received.startswith(b"GET " + path + b" HTTP/1.1\r\n")
            assert b"authorization: Basic eA==\r\n" in sandbox.received
            sandbox.received = b""
            sandbox.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")  # type: ignore[union-attr]
            await wait_until(reactor, lambda: browser.received.endswith(b"hi"), timeout=5)
            browser.received = b""
        assert relay.carrying == 1
        other = b"GET /c HTTP/1.1\r\nHost: " + H + b"\r\nCookie: c=2\r\n\r\n"  # another session
        browser.transport.write(other)  # type: ignore[union-attr]
        await wait_until(reactor, lambda: bool(lease.backs), timeout=5)
        assert lease.backs == [(other, Back.ASK)] and relay.carrying == 0
        await wait_until(reactor, lambda: browser.received == b"the server again", timeout=5)
        await sandbox.closed  # (the relay's sandbox connection is closed, not given back)
        await wait_until(reactor, lambda: sum(n for _, n in relayed) == 3, timeout=5)
    finally:
        await relay.stopService()
