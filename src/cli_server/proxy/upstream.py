"""Keep-alive HTTP/1.1 connections to sandboxes, for the proxy's fast path.

An ``UpstreamConnection`` carries one request at a time and reads the answer with httptools
(llhttp, Node's parser, in C). What it reads goes to its ``client``, the browser connection it
is serving, which re-frames it; between requests it waits in the ``UpstreamPool``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any
from typing import Protocol as Interface

import httptools
from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from cli_server.nodelay import no_delay
from cli_server.proxy.send_now import send_now
from cli_server.proxy.takeover import hand_over
from cli_server.sandboxes.backend import Endpoint

if TYPE_CHECKING:
    from cli_server.proxy.fast_path import Route


class Framing(Enum):
    NONE = "none"  # 204, 304: no body
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"  # neither: the body ends when the connection does


class Client(Interface):
    """What an upstream connection reports to (the browser connection it serves)."""

    def response_head(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Framing:
        """Relays the head; says how the body is framed (it reads the headers anyway)."""

    def response_body(self, data: bytes) -> None: ...

    def response_end(self, keep_alive: bool) -> None: ...

    def flush(self) -> None: ...

    def upstream_lost(self, answered: bool) -> None: ...


class UpstreamConnection(Protocol):
    pool: UpstreamPool | None = None
    _log = Logger()

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.client: Client | None = None
        self.received = False  # any byte of an answer on this connection's current request
        self.idle_since = 0.0  # when it went back to the pool
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._framing = Framing.NONE
        self._in_head = False  # between a message's start and its headers' end (no trailers)
        self._answered = False  # the final (not 1xx) head is in
        self._ended = False  # the final answer is complete
        self._extra = False  # bytes after it: the connection is not reused
        self._keep_alive = False
        # Stopped between two chunks of a chunked answer (or right after its head), as far as
        # the callbacks tell; ``resumable`` adds what they cannot (a size line begun).
        self._between_chunks = False
        self._last_crlf = False  # the last read ended in CRLF
        self._lost = False

    def connectionMade(self) -> None:
        no_delay(self.transport)

    def start(self, client: Client, data: bytes) -> None:
        """Send a request head (and what there is of its body) on behalf of ``client``."""
        self.client, self.received = client, False
        self._answered = self._ended = self._extra = False
        send_now(self.transport, data)

    def write(self, data: bytes) -> None:
        send_now(self.transport, data)

    def dataReceived(self, data: bytes) -> None:
        client = self.client
        if client is None:  # an idle connection that talks: not one to reuse
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.received = True
        self._last_crlf = data.endswith(b"\r\n")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            if not self._ended:  # connectionLost tells the client
                if isinstance(e, httptools.HttpParserCallbackError) and e.__context__:
                    self._log.failure("relaying from {key}", Failure(e.__context__), key=self.key)
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            self._extra = True  # garbage after a whole answer: that answer still stands
        if not self._ended:
            client.flush()
            return
        self.client = None
        client.response_end(self._keep_alive and not self._extra)

    # httptools callbacks, called from feed_data

    def on_message_begin(self) -> None:
        if self._ended:
            self._extra = True  # a second answer to one request: ignored, and no reuse
            return
        self._headers, self._reason, self._in_head = [], b"", True

    def on_status(self, reason: bytes) -> None:
        if not self._ended:
            self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head and not self._ended:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._ended:
            return
        self._in_head = False
        code = self._parser.get_status_code()
        headers, self._headers = self._headers, []
        reason, self._reason = self._reason, b""
        if 100 <= code < 200:
            if code == 101:  # we never ask for an upgrade here
                raise _Unasked101()
            return  # 100 Continue, 103 Early Hints: informational, not relayed
        self._answered = True
        self._between_chunks = True
        assert self.client is not None
        self._framing = self.client.response_head(code, reason or b"-", headers)

    def on_body(self, data: bytes) -> None:
        if self.client is not None and not self._ended:
            self.client.response_body(data)

    def on_chunk_header(self) -> None:
        self._between_chunks = False

    def on_chunk_complete(self) -> None:
        self._between_chunks = True

    @property
    def resumable(self) -> bool:
        """Whether a parser that starts fresh after the head would read the rest of this
        answer exactly as this one would: the answer is being relayed, not complete, and (if
        chunked) the last read ended right after a chunk or the head. A partial size line
        fires no callback, but cannot end in CRLF without completing."""
        if not self._answered or self._ended or self._extra or self._lost:
            return False
        return self._framing is Framing.UNTIL_CLOSE or (self._between_chunks and self._last_crlf)

    def on_message_complete(self) -> None:
        if self._answered and not self._ended:
            self._ended = True
            # (asked now: once feed_data returns, the parser has moved on to the next message)
            keep = self._framing is not Framing.UNTIL_CLOSE and self._parser.should_keep_alive()
            self._keep_alive = keep

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self._lost = True
        if self.pool is not None:
            self.pool.discard(self)
        client, self.client = self.client, None
        if client is not None:
            client.upstream_lost(self._answered)


class _Unasked101(Exception):
    pass


def _tcp(reactor: Any) -> Callable[[Endpoint, UpstreamConnection], Deferred[Any]]:
    def connect(endpoint: Endpoint, protocol: UpstreamConnection) -> Deferred[Any]:
        tcp = TCP4ClientEndpoint(reactor, endpoint.host, endpoint.port, timeout=10)
        connecting: Deferred[Any] = connectProtocol(tcp, protocol)
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
