"""A stream end that records what it is sent, shared by the tunnel's and the agent's tests."""

from __future__ import annotations

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure


class RecordingPeer(Protocol):
    """The server's end of a tunnel stream (a proxied browser request, or the proxy's request
    to a preview): keeps the bytes it receives and how it was closed."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)
