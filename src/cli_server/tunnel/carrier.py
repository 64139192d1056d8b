"""What the server's and the agent's WebSocket protocols share: a tunnel session's frames go
out as binary messages, and messages come in to it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

from cli_server.tunnel.mux import PING_TIMEOUT, Session


class SessionCarrier:
    """Mixed into an Autobahn WebSocket protocol (listed first among its bases)."""

    session: Session | None = None
    # What the mixin uses of the Autobahn protocol it is mixed into. Autobahn leaves its
    # protocol's transport untyped (a TCP or TLS transport, also the consumer of our
    # session), so it is Any here, and only here.
    transport: Any
    state: int
    sendMessage: Callable[..., None]
    sendClose: Callable[[int, str], None]
    dropConnection: Callable[..., None]

    def carry(self, session: Session) -> None:
        """Carry ``session``: it becomes the producer of our connection, so a full send buffer
        pauses its data frames (and not, say, an event queued behind megabytes of another
        stream's download)."""
        self.session = session
        transport = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()  # (twisted.web's channel, until the upgrade)
        transport.registerProducer(session, True)

    def send_frame(self, message: bytes) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(message, isBinary=True)
        # else the connection is closing: the session hears of it in onClose, and nothing
        # sent now could arrive anyway

    def close_tunnel(self, code: int, reason: str) -> None:
        if code == PING_TIMEOUT:
            self.dropConnection(abort=True)  # a silent peer would not finish a close handshake
        else:
            self.sendClose(code, reason)

    def deliver(self, payload: bytes, is_binary: bool) -> None:
        if self.session is None:
            return
        if not is_binary:
            return self.session.fail("protocol", "text messages are not part of the protocol")
        self.session.message_received(payload)
