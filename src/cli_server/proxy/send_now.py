"""Writing to a TCP connection at once instead of on the reactor's next turn.

A Twisted transport's ``write`` only queues: it asks the reactor to watch the socket for
writability, sends on the next turn, then stops watching. For a proxy relaying small
answers and events that is two ``epoll_ctl`` calls and one more reactor turn per write, the
largest single cost the profile showed. When nothing is queued, ``send_now`` sends directly
(the transport's own ``writeSomeData``) and queues only what the socket did not take, so the
order of bytes and the transport's flow control (pausing its producer) are kept.

It reads two attributes of ``twisted.internet.abstract.FileDescriptor`` that are not public
(the queue); ``tests/unit/test_send_now.py`` fails if a Twisted release changes them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Connection


def idle_tcp(transport: Any) -> bool:
    """A plain (not TLS) TCP connection with nothing queued to send."""
    return bool(
        isinstance(transport, Connection)
        and not getattr(transport, "TLS", False)
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    )


def send_now(transport: Any, data: bytes) -> None:
    if idle_tcp(transport):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):  # (else the connection is lost: write() lets it report so)
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)
