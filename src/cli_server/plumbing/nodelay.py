"""Turning Nagle's algorithm off where we relay small writes.

Server-sent events, terminal keystrokes and tunnel frames are small writes that must go out
at once; with Nagle a small write can wait for the previous one's ACK (delayed by up to 40 ms
on Linux). Twisted leaves TCP_NODELAY off, so we set it on the connections we relay through.
"""

from __future__ import annotations

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITransport,
)
from zope.interface import implementer


def no_delay(transport: ITransport | None) -> None:
    """Set TCP_NODELAY on ``transport``, or on the TCP connection under a TLS one.

    The probes are of Twisted's transports, which say what they are only by their attributes:
    a TCP one has ``setTcpNoDelay`` (``ITCPTransport``), a TLS one wraps another in
    ``transport``."""
    for _ in range(3):
        if transport is None:
            return
        setter = getattr(transport, "setTcpNoDelay", None)
        if setter is not None:
            setter(True)
            return
        transport = getattr(transport, "transport", None)


@implementer(IStreamClientEndpoint)
@define
class NoDelayEndpoint:
    """An endpoint whose connections have TCP_NODELAY set."""

    _endpoint: IStreamClientEndpoint

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def made(protocol: IProtocol) -> IProtocol:
            no_delay(getattr(protocol, "transport", None))
            return protocol

        return self._endpoint.connect(factory).addCallback(made)
