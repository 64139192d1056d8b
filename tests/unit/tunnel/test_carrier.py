"""What the server's and the agent's WebSocket protocols share (tunnel/carrier.py): a
session's frames go out as binary messages, messages come in to it, and the session is the
connection's producer.

``Carrier`` stands in for the Autobahn protocol the mixin is listed first in: it records what
would have gone on the wire, over a ``StringTransport``."""

from __future__ import annotations

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from cli_server.tunnel.carrier import SessionCarrier
from cli_server.tunnel.frames import decode
from cli_server.tunnel.mux import PING_TIMEOUT, Session


class Carrier(SessionCarrier):
    def __init__(self) -> None:
        self.transport = StringTransport()
        self.state = WebSocketProtocol.STATE_OPEN
        self.messages: list[tuple[bytes, bool]] = []
        self.closes: list[tuple[int, str]] = []
        self.drops: list[bool] = []

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        self.messages.append((payload, isBinary))

    def sendClose(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def dropConnection(self, abort: bool = False) -> None:
        self.drops.append(abort)


def carried(carrier: Carrier, clock: Clock, is_server: bool) -> Session:
    session = Session(clock, carrier.send_frame, carrier.close_tunnel, is_server=is_server)
    carrier.carry(session)
    return session


def test_the_session_becomes_the_streaming_producer() -> None:
    """Carrying a session registers it as the connection's streaming producer."""
    carrier = Carrier()
    session = carried(carrier, Clock(), is_server=True)
    assert carrier.session is session
    assert carrier.transport.producer is session and carrier.transport.streaming


def test_carrying_replaces_the_upgrade_channels_producer() -> None:
    """A connection still registered to twisted.web's channel (before the upgrade) gets the
    session instead (a transport takes only one producer)."""
    carrier = Carrier()
    web_channel = object()
    carrier.transport.registerProducer(web_channel, True)
    session = carried(carrier, Clock(), is_server=True)
    assert carrier.transport.producer is session


def test_frames_go_out_as_binary_messages_while_open() -> None:
    """The agent's hello goes out as one binary message; nothing is sent once the WebSocket
    is closing."""
    carrier = Carrier()
    agent = carried(carrier, Clock(), is_server=False)
    agent.start()
    assert len(carrier.messages) == 1
    message, binary = carrier.messages[0]
    assert binary and decode(message).type == "hello"
    carrier.state = WebSocketProtocol.STATE_CLOSING
    carrier.send_frame(b"anything")
    assert len(carrier.messages) == 1


def test_binary_messages_reach_the_session() -> None:
    """The agent's hello, delivered to the server's carrier, gets the agent welcomed."""
    clock = Clock()
    agent_side, server_side = Carrier(), Carrier()
    agent = carried(agent_side, clock, is_server=False)
    server = carried(server_side, clock, is_server=True)
    server.start()
    agent.start()
    for message, binary in agent_side.messages:
        server_side.deliver(message, binary)
    assert server.ready.called
    assert [decode(m).type for m, _ in server_side.messages] == ["welcome"]
    for message, binary in server_side.messages:
        agent_side.deliver(message, binary)
    assert agent.ready.called and agent.version == server.version


def test_a_text_message_fails_the_session() -> None:
    """Text messages are not part of the protocol: the session says goodbye and the carrier
    closes the WebSocket with 4002."""
    carrier = Carrier()
    session = carried(carrier, Clock(), is_server=True)
    session.start()
    carrier.deliver(b'{"t": "hello"}', False)
    goodbye = decode(carrier.messages[-1][0])
    assert goodbye.type == "goaway" and goodbye["code"] == "protocol"
    assert carrier.closes == [(4002, "protocol")]


def test_messages_before_a_session_are_ignored() -> None:
    carrier = Carrier()
    carrier.deliver(b"early", True)
    carrier.deliver(b"early", False)
    assert carrier.session is None
    assert carrier.messages == [] and carrier.closes == []


def test_a_silent_peer_is_dropped_not_closed() -> None:
    """A ping timeout aborts the connection (a silent peer would not finish a close
    handshake); any other close code closes it cleanly."""
    carrier = Carrier()
    carrier.close_tunnel(PING_TIMEOUT, "ping timeout")
    assert carrier.drops == [True] and carrier.closes == []
    carrier.close_tunnel(4000, "replaced")
    assert carrier.closes == [(4000, "replaced")] and carrier.drops == [True]


def test_a_peer_that_stops_answering_is_dropped() -> None:
    """End to end through the session: no answer for ``dead_after`` seconds aborts the
    connection."""
    clock = Clock()
    carrier = Carrier()
    session = Session(
        clock,
        carrier.send_frame,
        carrier.close_tunnel,
        is_server=True,
        ping_interval=15.0,
        dead_after=45.0,
    )
    carrier.carry(session)
    session.start()
    for _ in range(4):
        clock.advance(15)
    assert carrier.drops == [True]
