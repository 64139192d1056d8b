"""Giving a live connection to another protocol (twisted.web → a WebSocket splice, or the
router → twisted.web)."""

from __future__ import annotations

from typing import Any

from twisted.protocols.policies import ProtocolWrapper


def hand_over(transport: Any, protocol: Any) -> None:
    """From now on ``protocol`` receives what arrives on ``transport``: a TCP connection, or
    the TLS (or other wrapping) layer above one."""
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
