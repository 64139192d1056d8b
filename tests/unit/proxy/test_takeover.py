"""``hand_over``: after it, what arrives on the connection reaches the new protocol, whether
the connection is plain TCP or wrapped (TLS, or another protocol wrapper)."""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from cli_server.proxy.takeover import hand_over


class Collecting(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class PlainTransport(StringTransport):
    """A TCP-like transport: the reactor delivers its bytes to ``transport.protocol``."""

    def __init__(self, protocol: Protocol) -> None:
        super().__init__()
        self.protocol = protocol

    def arrive(self, data: bytes) -> None:
        self.protocol.dataReceived(data)


def test_plain_transport() -> None:
    """On a bare connection, the transport's protocol becomes the new one."""
    old, new = Collecting(), Collecting()
    transport = PlainTransport(old)
    hand_over(transport, new)
    transport.arrive(b"GET / HTTP/1.1\r\n")
    assert new.received == b"GET / HTTP/1.1\r\n"
    assert old.received == b""


def wrapped(old: Protocol) -> ProtocolWrapper:
    wrapper = ProtocolWrapper(WrappingFactory(Factory.forProtocol(Protocol)), old)
    wrapper.makeConnection(StringTransport())
    return wrapper


def test_transport_is_the_wrapper() -> None:
    """When the transport handed in is the wrapping layer itself (what twisted.web sees under
    TLS), the wrapper now feeds the new protocol."""
    old, new = Collecting(), Collecting()
    wrapper = wrapped(old)
    hand_over(wrapper, new)
    wrapper.dataReceived(b"frame")
    assert new.received == b"frame"
    assert old.received == b""


def test_transport_under_a_wrapper() -> None:
    """When the transport is the TCP connection whose protocol is a wrapper, the wrapper is
    kept (it still decrypts) and its inner protocol replaced."""
    old, new = Collecting(), Collecting()
    wrapper = wrapped(old)
    transport = PlainTransport(wrapper)
    hand_over(transport, new)
    assert transport.protocol is wrapper
    transport.arrive(b"frame")
    assert new.received == b"frame"
    assert old.received == b""
