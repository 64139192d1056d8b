"""One JSON request/response over a unix socket (slirp4netns' API socket)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime, IReactorUNIX
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from cli_server.plumbing.quiet import connect_quietly


class _OneShot(Protocol):
    def __init__(self, request: bytes) -> None:
        self._request = request
        self._buffer = b""
        self.reply: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        try:
            json.loads(self._buffer)
        except ValueError:
            return  # not complete yet
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if not self.reply.called:
            self.reply.callback(self._buffer)


async def unix_json_call(
    reactor: IReactorUNIX,
    clock: IReactorTime,
    path: str,
    request: Mapping[str, object],
    *,
    timeout: float,
) -> dict[str, Any]:
    """Send ``request`` to the socket at ``path``; its JSON object reply (or ``{"error": …}``).

    ``reactor`` connects, ``clock`` bounds the connection and the reply (the same reactor)."""
    proto = _OneShot(json.dumps(request).encode())
    connecting = connect_quietly(UNIXClientEndpoint(reactor, path, timeout=timeout), proto)
    connecting.addTimeout(timeout, clock)
    await connecting
    proto.reply.addTimeout(timeout, clock)
    try:
        raw = await proto.reply
    finally:
        if proto.transport is not None:  # (a reply that never came: nobody reads the socket)
            proto.transport.loseConnection()
    try:
        reply = json.loads(raw)
    except ValueError:
        return {"error": f"unreadable reply {raw[:200]!r}"}
    return reply if isinstance(reply, dict) else {"error": "reply is not an object"}
