"""Keep-alive HTTP/1.1 connections to sandboxes, for the proxy's fast path.

An ``UpstreamConnection`` carries one request at a time and reads the answer with an
``AnswerReader`` (llhttp). What it reads goes to its ``client``, the browser connection it
is serving, which re-frames it; between requests it waits in the ``UpstreamPool``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from typing import Protocol as Interface

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from cli_server.nodelay import no_delay
from cli_server.proxy.answer import AnswerReader, AnswerSink, Framing, Read, UnaskedUpgrade
from cli_server.proxy.send_now import send_now
from cli_server.proxy.takeover import hand_over
from cli_server.quiet import connect_quietly
from cli_server.sandboxes.backend import Endpoint

__all__ = ["Client", "Framing", "UpstreamConnection", "UpstreamPool"]

if TYPE_CHECKING:
    from cli_server.proxy.fast_path import Route


class Client(AnswerSink, Interface):
    """What an upstream connection reports to (the browser connection it serves)."""

    def response_end(self, keep_alive: bool) -> None: ...

    def flush(self) -> None: ...

    def upstream_lost(self, answered: bool, clean: bool) -> None:
        """The connection ended: ``answered`` once the answer's head was in, ``clean`` if
        closed rather than reset (only a clean close ends an answer framed by its close)."""


class UpstreamConnection(AnswerReader, Protocol):
    pool: UpstreamPool | None = None
    _log = Logger()

    def __init__(self, key: tuple[str, str, int]) -> None:
        AnswerReader.__init__(self)
        self.key = key
        self.client: Client | None = None
        self.idle_since = 0.0  # when it went back to the pool

    def connectionMade(self) -> None:
        no_delay(self.transport)

    def start(self, client: Client, data: bytes) -> None:
        """Send a request head (and what there is of its body) on behalf of ``client``."""
        self.begin(client)
        send_now(self.transport, data)

    def write(self, data: bytes) -> None:
        send_now(self.transport, data)

    def dataReceived(self, data: bytes) -> None:
        client = self.client
        if client is None:  # an idle connection that talks: not one to reuse
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        read = self.feed(data)
        if read is Read.BROKEN:  # (connectionLost tells the client)
            if isinstance(self.error, UnaskedUpgrade):  # a sandbox's doing, not a bug of ours
                self._log.info("sandbox {key} answered 101 to a plain request", key=self.key)
            elif self.error is not None:
                self._log.failure("relaying from {key}", Failure(self.error), key=self.key)
            self.transport.abortConnection()  # type: ignore[union-attr]
        elif read is Read.MORE:
            client.flush()
        else:
            self.client = None
            client.response_end(self.reusable)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.pool is not None:
            self.pool.discard(self)
        client, self.client = self.client, None
        if client is not None:
            client.upstream_lost(self.answered, reason.check(ConnectionDone) is not None)


def _tcp(reactor: Any) -> Callable[[Endpoint, UpstreamConnection], Deferred[Any]]:
    def connect(endpoint: Endpoint, protocol: UpstreamConnection) -> Deferred[Any]:
        tcp = TCP4ClientEndpoint(reactor, endpoint.host, endpoint.port, timeout=10)
        connecting: Deferred[Any] = connect_quietly(tcp, protocol)
        return connecting

    return connect


@define(eq=False)
class UpstreamPool:
    """Idle keep-alive connections per sandbox and address, the most recently used first
    (by sandbox too: a connection is never reused for another sandbox that got its port)."""

    _reactor: Any
    _connector: Callable[[Endpoint, UpstreamConnection], Deferred[Any]] | None = None
    max_idle: int = 64  # per sandbox and address
    idle_seconds: float = 60.0
    _idle: dict[tuple[str, str, int], list[UpstreamConnection]] = field(factory=dict, init=False)
    _sweeper: IDelayedCall | None = field(default=None, init=False)

    def take(self, route: Route) -> UpstreamConnection | None:
        key = (route.sandbox_id, route.endpoint.host, route.endpoint.port)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not idle:
                del self._idle[key]
            if not conn.transport.disconnecting:  # type: ignore[union-attr]
                return conn  # (else the sweeper closed it; connectionLost has not run yet)
        return None

    def connect(self, route: Route) -> Deferred[UpstreamConnection]:
        endpoint = route.endpoint
        conn = UpstreamConnection((route.sandbox_id, endpoint.host, endpoint.port))
        conn.pool = self
        connector = self._connector or _tcp(self._reactor)
        return connector(endpoint, conn).addCallback(self._connected, conn)

    @staticmethod
    def _connected(_: object, conn: UpstreamConnection) -> UpstreamConnection:
        # The endpoint's wrapper only passes calls on; every answer byte would go through it.
        if conn.transport is not None:
            hand_over(conn.transport, conn)
        return conn

    def give_back(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.transport.loseConnection()  # type: ignore[union-attr]
            return
        conn.idle_since = self._reactor.seconds()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._reactor.callLater(self.idle_seconds, self._sweep)

    def _sweep(self) -> None:
        """Closes connections idle for ``idle_seconds``: one timer for the pool, not one per
        connection and request."""
        self._sweeper = None
        stale = self._reactor.seconds() - self.idle_seconds
        for idle in list(self._idle.values()):
            for conn in [c for c in idle if c.idle_since <= stale]:
                conn.transport.loseConnection()  # type: ignore[union-attr]
        if self._idle:
            self._sweeper = self._reactor.callLater(self.idle_seconds / 2, self._sweep)

    def discard(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    def close_idle(self) -> None:
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.transport.loseConnection()  # type: ignore[union-attr]
        self._idle.clear()
