"""``unix_json_call``: one JSON request and one JSON reply over a unix socket (slirp4netns'
API), on a memory reactor with a string transport standing in for the socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectingCancelledError, ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from cli_server.sandboxes.unixjson import unix_json_call
from tests.unit.deferreds import failure_of, result_of

PATH = "/run/slirp/api.sock"
REQUEST = {"execute": "add_hostfwd", "arguments": {"host_port": 8080}}


def call(reactor: MemoryReactorClock, timeout: float = 5.0) -> Deferred[dict[str, Any]]:
    return Deferred.fromCoroutine(unix_json_call(reactor, reactor, PATH, REQUEST, timeout=timeout))


def accept(reactor: MemoryReactorClock) -> tuple[IProtocol, StringTransport]:
    """The server side accepts the one connection the call made to ``PATH``."""
    [(path, factory, _timeout, _check)] = reactor.unixClients
    assert path == PATH
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def close(protocol: IProtocol) -> None:
    protocol.connectionLost(Failure(ConnectionDone()))


def test_sends_the_request_and_answers_the_reply() -> None:
    """The request goes out as JSON; a complete JSON reply closes the socket and is returned."""
    reactor = MemoryReactorClock()
    d = call(reactor)
    protocol, transport = accept(reactor)
    assert json.loads(transport.value()) == REQUEST
    protocol.dataReceived(b'{"return": {"id": 3}}')
    assert transport.disconnecting
    close(protocol)
    assert result_of(d) == {"return": {"id": 3}}


def test_reply_in_pieces_waits_for_the_whole() -> None:
    """A reply split across reads is not cut short: the socket stays open until it parses."""
    reactor = MemoryReactorClock()
    d = call(reactor)
    protocol, transport = accept(reactor)
    protocol.dataReceived(b'{"return": ')
    assert not transport.disconnecting
    assert not d.called
    protocol.dataReceived(b"{}}")
    assert transport.disconnecting
    close(protocol)
    assert result_of(d) == {"return": {}}


def test_truncated_reply_is_an_error_answer() -> None:
    """The server closing mid-reply gives an ``error`` answer quoting what arrived, not an
    exception."""
    reactor = MemoryReactorClock()
    d = call(reactor)
    protocol, _ = accept(reactor)
    protocol.dataReceived(b'{"return": {"id"')
    close(protocol)
    assert result_of(d) == {"error": 'unreadable reply b\'{"return": {"id"\''}


def test_reply_that_is_not_an_object() -> None:
    """Valid JSON that is not an object (a list, a number) is an error answer too."""
    reactor = MemoryReactorClock()
    d = call(reactor)
    protocol, _ = accept(reactor)
    protocol.dataReceived(b"[1, 2]")
    close(protocol)
    assert result_of(d) == {"error": "reply is not an object"}


def test_connect_timeout() -> None:
    """A socket nobody accepts on fails the call after ``timeout`` seconds (the attempt is
    cancelled; a real reactor's own connect timeout may say TimeoutError instead)."""
    reactor = MemoryReactorClock()
    d = call(reactor, timeout=2)
    reactor.advance(1.9)
    assert not d.called
    reactor.advance(0.1)
    failure_of(d).trap(TimeoutError, ConnectingCancelledError)


def test_silent_server_times_out() -> None:
    """A server that accepts but never answers fails the call after ``timeout`` seconds, and
    the connection is closed (not left open for a reply nobody waits for)."""
    reactor = MemoryReactorClock()
    d = call(reactor, timeout=2)
    _protocol, transport = accept(reactor)
    reactor.advance(2)
    failure_of(d).trap(TimeoutError)
    assert transport.disconnecting


def test_refused_connection_fails() -> None:
    """A missing socket file (connection refused) is the caller's failure to handle."""
    from twisted.internet.error import ConnectionRefusedError

    reactor = MemoryReactorClock()
    d = call(reactor)
    [(_path, factory, _timeout, _check)] = reactor.unixClients
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    with pytest.raises(ConnectionRefusedError):
        failure_of(d).raiseException()
