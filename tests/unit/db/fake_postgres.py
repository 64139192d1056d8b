"""A PostgreSQL server played by hand on a unix socket in a test's directory, for psycopg2
(a C library: it needs a real socket), and the I/O of a ``MemoryReactorClock`` run by hand.

``SilentServer`` takes connections and says nothing (a hung server or link); ``answer_startup``
lets one connection in (trust authentication) so that a test can then leave its queries
unanswered."""

from __future__ import annotations

import select
import socket
import struct
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock


class SilentServer:
    """Listens at ``directory``/.s.PGSQL.5432; the kernel completes each connection and
    nothing ever answers it, unless a test answers a connection's startup itself."""

    def __init__(self, directory: Path) -> None:
        self.dsn = f"host={directory} port=5432 dbname=test user=test connect_timeout=0"
        self._listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listening.bind(str(directory / ".s.PGSQL.5432"))
        self._listening.listen(8)
        self._accepted: list[socket.socket] = []

    def answer_startup(self) -> None:
        """Take the next connection and let it in: authentication OK, the parameters psycopg2
        reads, ready for a query. Nothing the client sends afterwards is answered."""
        self._listening.settimeout(1.0)  # (the connection is queued already: no wait)
        client, _ = self._listening.accept()
        self._accepted.append(client)
        client.settimeout(1.0)
        (length,) = struct.unpack("!I", client.recv(4))
        client.recv(length - 4)  # the startup packet
        reply = _message(b"R", struct.pack("!I", 0))
        for name, value in (
            (b"client_encoding", b"UTF8"),
            (b"DateStyle", b"ISO, MDY"),
            (b"server_version", b"16.0"),
            (b"integer_datetimes", b"on"),
            (b"standard_conforming_strings", b"on"),
        ):
            reply += _message(b"S", name + b"\0" + value + b"\0")
        reply += _message(b"K", struct.pack("!II", 1, 2))
        reply += _message(b"Z", b"I")
        client.sendall(reply)

    def close(self) -> None:
        for s in self._accepted:
            s.close()
        self._listening.close()


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def pump(reactor: MemoryReactorClock, rounds: int = 20) -> None:
    """Play the reactor's I/O: each reader or writer whose socket is ready now is told so,
    until none is (bounded), then the calls due now run."""
    for _ in range(rounds):
        reactor.advance(0)
        readers = [r for r in reactor.getReaders() if r.fileno() >= 0]
        writers = [w for w in reactor.getWriters() if w.fileno() >= 0]
        if not readers and not writers:
            return
        ready_r, ready_w, _ = select.select(readers, writers, [], 0)
        if not ready_r and not ready_w:
            return
        for w in ready_w:
            w.doWrite()
        for r in ready_r:
            r.doRead()
    reactor.advance(0)
