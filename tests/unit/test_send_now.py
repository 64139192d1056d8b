"""send_now over real loopback TCP: bytes arrive whole and in order whether they went out at
once or were queued, and the Twisted internals it reads are still there."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from cli_server.proxy.send_now import idle_tcp, send_now

reactor: Any = _global_reactor


class Sink(Protocol):
    def __init__(self, expected: int) -> None:
        self.received = bytearray()
        self.expected = expected
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(bytes(self.received))


@pytest_twisted.ensureDeferred
async def test_bytes_arrive_in_order_whether_sent_at_once_or_queued() -> None:
    pieces = [bytes([n % 251]) * (1000 + 7919 * n) for n in range(120)]  # ~57 MB in all
    total = sum(len(p) for p in pieces)
    sink = Sink(total)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(lambda: sink)
    )
    try:
        sender = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol()
        )
        transport: Any = sender.transport
        assert idle_tcp(transport)  # fails if Twisted renames the queue it keeps
        queued = 0
        for piece in pieces:
            queued += not idle_tcp(transport)
            send_now(transport, piece)
        assert queued  # the socket filled up: some went through Twisted's queue
        received = await sink.done
        assert received == b"".join(pieces)
        transport.loseConnection()
    finally:
        await port.stopListening()
