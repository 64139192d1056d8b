"""The stream relay's child process, started for real: it carries a TCP pair handed to it,
comes back when killed, and never outlives the service."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport

from cli_server.proxy.live import Whose
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


@pytest_twisted.ensureDeferred
async def test_the_relay_carries_a_pair_comes_back_when_killed_and_ends_with_the_service() -> None:
    reactor = _reactor()
    relay = StreamRelay(reactor)
    relay.startService()
    try:
        # browser <-> [server side: ours_b]   [ours_s] <-> sandbox
        browser, ours_b = await tcp_pair(0)
        ours_s, sandbox = await tcp_pair(0)
        assert not relay.carry(
            StringTransport(), ours_s.transport, True, Whose("u", "w", "s")
        )  # not TCP
        assert relay.carry(ours_b.transport, ours_s.transport, False, Whose("u", "w", "s"))
        relay.let_go(ours_b.transport, ours_s.transport)
        await ours_b.closed  # Twisted forgot both, without closing them for the child
        sandbox.transport.write(b"data: 1\n\n")  # type: ignore[union-attr]
        await wait_until(reactor, lambda: browser.received == b"9\r\ndata: 1\n\n\r\n", timeout=5)
        assert relay.carrying == 1
        relay.cut(user_id="u")
        await browser.closed
        await sandbox.closed
        await wait_until(reactor, lambda: relay.carrying == 0, timeout=5)

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
