"""A peer that opens the tunnel and never says hello is closed at ``HELLO_TIMEOUT``, by the
hub's clock: the real server protocol over a ``StringTransport``, time moved by a ``Clock``."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cli_server.tunnel.frames import decode
from cli_server.tunnel.hub import HELLO_TIMEOUT, TunnelHub, TunnelServerFactory

SANDBOX = "22222222-2222-4222-8222-222222222222"
HANDSHAKE = (
    b"GET /api/tunnel/" + SANDBOX.encode() + b" HTTP/1.1\r\n"
    b"Host: localhost:8080\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
BINARY, CLOSE = 0x2, 0x8


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked frame the server wrote after its 101."""
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    frames, i = [], 0
    while i < len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length >= 126:
            size = 2 if length == 126 else 8
            length = int.from_bytes(data[i : i + size], "big")
            i += size
        frames.append((opcode, data[i : i + length]))
        i += length
    return frames


class HelloTimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = TunnelHub(None, self.clock)  # type: ignore[arg-type]  # (no database use)
        factory = TunnelServerFactory(self.hub, SANDBOX)
        # (Autobahn's own handshake timers run on the global reactor: off, this test is about
        # ours, which runs on the hub's clock)
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        self.protocol = protocol
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(HANDSHAKE)

    def test_silent_peer_is_closed_at_the_hello_timeout(self) -> None:
        """Open and silent: nothing is said until HELLO_TIMEOUT, then a ``goaway`` of code
        ``protocol`` and a close with 4002; no welcome; the sandbox has no tunnel."""
        self.assertEqual(server_frames(self.transport.value()), [])  # (open: the 101 alone)
        self.clock.advance(HELLO_TIMEOUT - 0.01)
        self.assertEqual(server_frames(self.transport.value()), [])
        self.assertIsNone(self.hub.session(SANDBOX))

        self.clock.advance(0.01)
        frames = server_frames(self.transport.value())
        self.assertEqual([opcode for opcode, _ in frames], [BINARY, CLOSE])
        goaway = decode(frames[0][1])
        self.assertEqual((goaway.type, goaway["code"]), ("goaway", "protocol"))
        self.assertIn(f"no hello within {HELLO_TIMEOUT:g} s", goaway["message"])
        self.assertEqual(int.from_bytes(frames[1][1][:2], "big"), 4002)

        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.hub.count, 0)
        self.assertIsNone(self.hub.session(SANDBOX))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # (the hello timer is done, too)

    def test_a_peer_gone_before_the_timeout_leaves_no_timer(self) -> None:
        """A connection that ends before the hello timeout cancels it: nothing fires later."""
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(HELLO_TIMEOUT * 2)
        self.assertEqual(server_frames(self.transport.value()), [])
