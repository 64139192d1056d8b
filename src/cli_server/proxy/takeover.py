"""Giving a live connection to another protocol (twisted.web → a WebSocket splice, or the
router → twisted.web)."""

from __future__ import annotations

from twisted.internet.interfaces import IProtocol, ITransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel
from twisted.web.server import Request


def client_channel(request: Request) -> HTTPChannel | None:
    """The request's connection, or None once the client left (twisted.web sets ``channel``
    to None then, which its annotation does not say)."""
    return request.channel


def hand_over(transport: ITransport, protocol: IProtocol) -> None:
    """From now on ``protocol`` receives what arrives on ``transport``: a TCP connection, or
    the TLS (or other wrapping) layer above one."""
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    # (a TCP connection's ``protocol``, or a TLS layer's: not declared by ITransport)
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol  # type: ignore[attr-defined]
    else:
        transport.protocol = protocol  # type: ignore[attr-defined]
