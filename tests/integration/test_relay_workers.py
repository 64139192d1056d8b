"""The relay workers, started for real: each carries the browser connections handed to it
over sandbox connections it opens itself, serves a keep-alive connection and gives it back,
comes back when killed, and never outlives the service."""

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
from cli_server.proxy.relay.wire import Back, Grant
from cli_server.proxy.workers import RelayWorkers

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


async def sandbox_at() -> tuple[Any, list[Wire]]:
    """A sandbox standing in (FAKE: the test answers for it): its listening port, and the
    connections it accepted."""
    accepted: list[Wire] = []

    class Accept(Factory):
        def buildProtocol(self, addr: Any) -> Wire:
            accepted.append(Wire())
            return accepted[-1]

    return _reactor().listenTCP(0, Accept(), interface="127.0.0.1"), accepted


class Lease:
    """What the router would keep of a connection it gave the relay (FAKE: it renews
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
GRANT = Grant(
    H, (b"c=1",), b"Basic eA==", b"127.0.0.1", b"http", b"s1", b"localhost", 2, b"127.0.0.1", 0, 10
)
FIRST = b"GET /a HTTP/1.1\r\nHost: " + H + b"\r\nCookie: c=1\r\n\r\n"
WHOSE = Whose("u", "w", "s1")


@pytest_twisted.ensureDeferred
async def test_a_worker_streams_is_cut_comes_back_when_killed_and_ends_with_the_service() -> None:
    reactor = _reactor()
    relay = RelayWorkers(reactor, 2)
    relay.startService()
    listening, sandboxes = await sandbox_at()
    grant = GRANT._replace(port=listening.getHost().port)
    try:
        browser, ours_b = await tcp_pair(0)
        lease = Lease()
        assert not relay.serve(StringTransport(), grant, 5.0, FIRST, WHOSE, lease)
        assert relay.serve(ours_b.transport, grant, 5.0, FIRST, WHOSE, lease)
        relay.let_go(ours_b.transport)
        await ours_b.closed  # Twisted forgot it, without closing it for the worker
        await wait_until(reactor, lambda: bool(sandboxes), timeout=5)
        sandbox = sandboxes[0]
        await wait_until(reactor, lambda: sandbox.received.endswith(b"\r\n\r\n"), timeout=5)
        sandbox.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
        )
        await wait_until(
            reactor, lambda: browser.received.endswith(b"9\r\ndata: 1\n\n\r\n"), timeout=5
        )
        # A second connection goes to the other worker (the one carrying fewest).
        second, ours_2 = await tcp_pair(0)
        assert relay.serve(ours_2.transport, grant, 5.0, FIRST, WHOSE, lease)
        relay.let_go(ours_2.transport)
        assert relay.carried_count == 2 and [w.carrying for w in relay.workers] == [1, 1]
        relay.cut(user_id="u")  # to every worker
        await browser.closed
        await second.closed
        await sandbox.closed
        await wait_until(reactor, lambda: relay.carried_count == 0, timeout=5)
        assert not browser.received.endswith(b"0\r\n\r\n")  # cut: no ending

        first = relay.workers[0].pid
        os.kill(first, signal.SIGKILL)
        await wait_until(
            reactor,
            lambda: relay.workers[0].pid is not None and relay.workers[0].pid != first,
            timeout=10,
        )
        assert relay.ready
    finally:
        children = [w.pid for w in relay.workers if w.pid is not None]
        await relay.stopService()
        await listening.stopListening()
    assert len(children) == 2 and all(w.pid is None for w in relay.workers)
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)


@pytest_twisted.ensureDeferred
async def test_a_worker_serves_a_keep_alive_connection_and_gives_it_back() -> None:
    reactor = _reactor()
    relayed: list[tuple[str, int]] = []
    relay = RelayWorkers(reactor, 1, on_relayed=lambda sandbox, n: relayed.append((sandbox, n)))
    relay.startService()
    listening, sandboxes = await sandbox_at()
    grant = GRANT._replace(port=listening.getHost().port)
    lease = Lease()
    try:
        browser, ours_b = await tcp_pair(0)
        # (a grant of 0.4 s: the second request asks for a renewal, which gives 5 s more)
        assert relay.serve(ours_b.transport, grant, 0.4, FIRST, WHOSE, lease)
        relay.let_go(ours_b.transport)
        for path in (b"/a", b"/b", b"/c"):  # request after request, on both connections
            if path == b"/c":
                await wait_until(reactor, lambda: lease.renewals == 1, timeout=5)
                await deferLater(reactor, 0.5)  # past the first grant
            if path != b"/a":
                browser.transport.write(FIRST.replace(b"/a", path))  # type: ignore[union-attr]
            await wait_until(reactor, lambda: bool(sandboxes), timeout=5)
            sandbox = sandboxes[0]
            await wait_until(
                reactor, lambda: sandboxes[0].received.endswith(b"\r\n\r\n"), timeout=5
            )
            assert sandbox.received.startswith(b"GET " + path + b" HTTP/1.1\r\n")
            assert b"authorization: Basic eA==\r\n" in sandbox.received
            sandbox.received = b""
            sandbox.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")  # type: ignore[union-attr]
            await wait_until(reactor, lambda: browser.received.endswith(b"hi"), timeout=5)
            browser.received = b""
        assert relay.carried_count == 1 and len(sandboxes) == 1  # one sandbox connection, kept
        other = b"GET /c HTTP/1.1\r\nHost: " + H + b"\r\nCookie: c=2\r\n\r\n"  # another session
        browser.transport.write(other)  # type: ignore[union-attr]
        await wait_until(reactor, lambda: bool(lease.backs), timeout=5)
        assert lease.backs == [(other, Back.ASK)] and relay.carried_count == 0
        await wait_until(reactor, lambda: browser.received == b"the server again", timeout=5)
        await wait_until(reactor, lambda: sum(n for _, n in relayed) == 3, timeout=5)
        await sandbox.closed  # (kept by the worker for another connection: 2 s, then closed)
    finally:
        await relay.stopService()
        await listening.stopListening()
