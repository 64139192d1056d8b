"""``Database`` against a server that never answers: each wait ends at its timeout with
``DatabaseUnavailable``, the connection is closed and off the reactor, and the pool slot is
free for the next caller."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock

from cli_server.db.pool import Database, DatabaseUnavailable
from tests.unit.db.fake_postgres import SilentServer, pump
from tests.unit.deferreds import failure_of


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SilentServer]:
    s = SilentServer(tmp_path)
    yield s
    s.close()


def test_connect_to_a_silent_server_times_out(server: SilentServer) -> None:
    """The server takes the connection and never answers its startup: at the connect timeout
    the query fails with DatabaseUnavailable, the socket is no longer watched by the reactor,
    and the one pool slot serves the next query (which times out the same way)."""
    reactor = MemoryReactorClock()
    db = Database(reactor, server.dsn, size=1, connect_timeout=5.0)
    d = Deferred.fromCoroutine(db.query("SELECT 1"))
    pump(reactor)
    assert not d.called
    assert reactor.getReaders()  # (waiting for the server's answer)
    reactor.advance(4.9)
    assert not d.called
    reactor.advance(0.1)
    failure = failure_of(d)
    failure.trap(DatabaseUnavailable)
    assert str(failure.value) == (
        "cannot connect to PostgreSQL: PostgreSQL did not answer within 5 s"
    )
    assert reactor.getReaders() == [] and reactor.getWriters() == []

    again = Deferred.fromCoroutine(db.query("SELECT 1"))
    pump(reactor)
    reactor.advance(5.0)
    failure_of(again).trap(DatabaseUnavailable)
    assert reactor.getReaders() == [] and reactor.getWriters() == []
    db.close()


def test_query_a_silent_server_times_out(server: SilentServer) -> None:
    """Connected, the server never answers the query: at the query timeout it fails with
    DatabaseUnavailable, the connection is closed (not kept for reuse) and off the reactor."""
    reactor = MemoryReactorClock()
    db = Database(reactor, server.dsn, size=1, connect_timeout=5.0, query_timeout=30.0)
    d = Deferred.fromCoroutine(db.query("SELECT 1"))
    pump(reactor)
    server.answer_startup()
    pump(reactor)
    assert not d.called
    assert reactor.getReaders()  # (the query is sent; its answer awaited)
    reactor.advance(29.0)
    assert not d.called
    reactor.advance(1.0)
    failure = failure_of(d)
    failure.trap(DatabaseUnavailable)
    assert str(failure.value) == "PostgreSQL did not answer within 30 s"
    assert reactor.getReaders() == [] and reactor.getWriters() == []
    db.close()


def test_cancelling_a_query_closes_its_connection(server: SilentServer) -> None:
    """A caller that gives up on an unanswered query gets CancelledError at once; the
    connection is closed and off the reactor, and its timeout no longer runs."""
    reactor = MemoryReactorClock()
    db = Database(reactor, server.dsn, size=1, connect_timeout=5.0, query_timeout=30.0)
    d = Deferred.fromCoroutine(db.query("SELECT 1"))
    pump(reactor)
    server.answer_startup()
    pump(reactor)
    assert not d.called
    d.cancel()
    failure_of(d).trap(CancelledError)
    assert reactor.getReaders() == [] and reactor.getWriters() == []
    assert reactor.getDelayedCalls() == []
    db.close()
