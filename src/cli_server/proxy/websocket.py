"""Passing a WebSocket upgrade (opencode's terminal, ``/pty/{id}/connect``) through.

We take the browser's connection over from twisted.web, open a connection to the sandbox
(TCP, or a stream of a local sandbox's tunnel), send it the upgrade request (with our header
hygiene applied, credential parameters gone), pass its answer's head on with the same
hygiene as every answer (no sandbox cookie for other hosts or with our names), and from then
on copy bytes both ways. Each side is the other's producer,
so a slow peer slows only this pair.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import cast

from twisted.internet.interfaces import IPushProducer, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from cli_server.plumbing.quiet import connect_quietly
from cli_server.proxy.answer import upgrade_answer
from cli_server.proxy.hygiene import clean_query
from cli_server.proxy.takeover import hand_over


class _Side(Protocol):
    """One end of the splice: what it receives goes to ``peer``. The sandbox's end first reads
    the head of its answer whole and passes it on cleaned (``clean_upgrade_answer``)."""

    def __init__(self, on_data: Callable[[], None], answer: bool = False) -> None:
        self.peer: _Side | None = None
        self._on_data = on_data
        self._pending: list[bytes] = []
        self._head: bytes | None = b"" if answer else None  # until the answer's head is in
        self._ended = False  # an answer that was no 101: nothing more is relayed
        self.lost = False
        self.on_lost: Callable[[], None] | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        self._on_data()
        if self._head is not None:
            data = self._answer_head(self._head + data)
        self._send(data)

    def _answer_head(self, buffered: bytes) -> bytes:
        """Reads the answer's head (``answer.upgrade_answer``): a ``101`` passes cleaned and
        the splice begins; any other answer passes cleaned and the connection ends after it.
        Returns what to relay now (the cleaned 101 and what follows it)."""
        code, cleaned, rest = upgrade_answer(buffered)
        if code is None:
            self._head = rest
        elif code < 0:
            self._abort()  # not a head we can read line by line: not for us
        elif code == 101:
            self._head = None
            return cleaned + rest
        else:
            self._head, self._ended = None, True
            self._send(cleaned)
            self._close_both()
        return b""

    def _send(self, data: bytes) -> None:
        if not data:
            return
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self._pending.append(data)

    def _abort(self) -> None:
        self._head, self._ended = None, True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _close_both(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()

    def flush_to(self, peer: _Side) -> None:
        self.peer = peer
        assert peer.transport is not None
        for data in self._pending:
            peer.transport.write(data)
        self._pending.clear()
        if self._ended:
            peer.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost = True
        if self.on_lost is not None:
            self.on_lost()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _Connection(typing.Protocol):
    """Both ends of a splice, each the other's producer: TCP, TLS and tunnel transports all
    have these, though a TLS layer declares neither IConsumer nor IPushProducer."""

    def registerProducer(self, producer: _Connection, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def stopProducing(self) -> None: ...


def _head(request: Request, headers: Headers, target: bytes | None = None) -> bytes:
    path = clean_query(request.uri) if target is None else target
    lines = [request.method + b" " + path + b" HTTP/1.1"]
    for name, values in headers.getAllRawHeaders():
        lines += [name + b": " + v for v in values]
    for name in (b"connection", b"upgrade"):
        for value in request.requestHeaders.getRawHeaders(name, []):
            lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def splice(
    reactor: IReactorTime,
    request: Request,
    endpoint: IStreamClientEndpoint,
    headers: Headers,
    on_data: Callable[[], None],
    timeout: float = 10.0,
    target: bytes | None = None,
) -> _Side | None:
    """Connect the browser's connection to the sandbox; returns the browser's side, or None
    if the sandbox is unreachable. ``target``: sent instead of the request's cleaned own."""
    upstream = _Side(on_data, answer=True)
    try:
        connecting = connect_quietly(endpoint, upstream)
        connecting.addTimeout(timeout, reactor)
        await connecting
    except Exception:
        return None
    if request.channel is None or request.channel.transport is None:
        upstream.transport.abortConnection()  # type: ignore[union-attr]  # the browser left
        return None
    browser = _Side(on_data)
    transport, request.channel.transport = request.channel.transport, None
    hand_over(transport, browser)
    browser.makeConnection(transport)
    if IPushProducer.providedBy(transport):
        transport.resumeProducing()  # (twisted.web may have paused reading while it served)
    assert upstream.transport is not None
    upstream.transport.write(_head(request, headers, target))
    browser.flush_to(upstream)
    upstream.flush_to(browser)
    other = cast(_Connection, upstream.transport)
    browser_side = cast(_Connection, transport)
    browser_side.unregisterProducer()  # the HTTP channel was its producer until now
    browser_side.registerProducer(other, True)
    other.registerProducer(browser_side, True)
    return browser
