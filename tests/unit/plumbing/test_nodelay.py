"""TCP_NODELAY on relayed connections: set on a real loopback TCP socket, found under a
wrapping layer (TLS), and left alone where there is no TCP."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from cli_server.plumbing.nodelay import NoDelayEndpoint, no_delay
from tests.unit.deferreds import result_of


@pytest.fixture
def loopback() -> Iterator[socket.socket]:
    """The client end of a real TCP connection on 127.0.0.1 (Nagle on, as the kernel makes it)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    server, _ = listener.accept()
    try:
        yield client
    finally:
        for s in (client, server, listener):
            s.close()


def nodelay_of(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def tcp_transport(sock: socket.socket) -> tcp.Connection:
    """A Twisted TCP transport over ``sock`` (never registered with a reactor)."""
    return tcp.Connection(sock, Protocol(), reactor=MemoryReactor())


def test_sets_nodelay_on_a_tcp_transport(loopback: socket.socket) -> None:
    """The kernel reports TCP_NODELAY on after ``no_delay``."""
    assert not nodelay_of(loopback)
    no_delay(tcp_transport(loopback))
    assert nodelay_of(loopback)


def test_finds_the_tcp_connection_under_a_wrapping_layer(loopback: socket.socket) -> None:
    """A layer without ``setTcpNoDelay`` (e.g. TLS) is looked through to its ``transport``."""

    class Layer:
        def __init__(self, transport: object) -> None:
            self.transport = transport

    no_delay(Layer(Layer(tcp_transport(loopback))))
    assert nodelay_of(loopback)


def test_gives_up_after_three_layers(loopback: socket.socket) -> None:
    """The walk is bounded: a connection buried deeper is left alone (no endless loop)."""

    class Layer:
        def __init__(self, transport: object) -> None:
            self.transport = transport

    no_delay(Layer(Layer(Layer(tcp_transport(loopback)))))
    assert not nodelay_of(loopback)


def test_no_tcp_no_error() -> None:
    """A transport that is not TCP (a unix socket, a test transport) or none at all is fine."""
    no_delay(None)
    no_delay(StringTransport())


def test_endpoint_sets_nodelay_on_its_connections(loopback: socket.socket) -> None:
    """Connections made through ``NoDelayEndpoint`` have TCP_NODELAY on, and the caller gets
    the protocol the wrapped endpoint made."""

    class OneConnection:
        """An endpoint stand-in whose one connection is the loopback socket."""

        def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
            protocol = factory.buildProtocol(None)  # type: ignore[arg-type]
            assert protocol is not None
            protocol.makeConnection(tcp_transport(loopback))
            return succeed(protocol)

    made = result_of(NoDelayEndpoint(OneConnection()).connect(Factory.forProtocol(Protocol)))
    assert isinstance(made, Protocol)
    assert nodelay_of(loopback)
