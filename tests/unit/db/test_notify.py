"""``ListeningConnection`` without a PostgreSQL: what its owner sees when no server is there,
and ``check`` and ``close`` before any LISTEN. (Hearing a NOTIFY and a server-side close need
a real server, or a seam to hand in a fake connection: the replica-events integration tests
cover those.)"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from cli_server.db.notify import ListeningConnection
from cli_server.db.pool import DatabaseUnavailable
from tests.unit.db.fake_postgres import SilentServer, pump
from tests.unit.deferreds import failure_of

CHANNEL = "cli_events"


def never(*_: object) -> None:
    raise AssertionError("not expected")


def test_check_before_listening_says_closed() -> None:
    """A connection that never listened is reported closed, not healthy."""
    conn = ListeningConnection(MemoryReactorClock(), "dbname=x", CHANNEL)
    d = Deferred.fromCoroutine(conn.check())
    failure = failure_of(d)
    failure.trap(DatabaseUnavailable)
    assert str(failure.value) == "the listening connection is closed"


def test_close_is_safe_any_time() -> None:
    """Closing before a LISTEN, or twice, is no error."""
    conn = ListeningConnection(MemoryReactorClock(), "dbname=x", CHANNEL)
    conn.close()
    conn.close()


def test_no_server_is_database_unavailable(tmp_path: Path) -> None:
    """Nothing listening at the socket: the owner gets DatabaseUnavailable naming the cause
    in one line, the callbacks are never called, and the connection stays closed."""
    conn = ListeningConnection(MemoryReactorClock(), f"host={tmp_path} dbname=x", CHANNEL)
    failure = failure_of(Deferred.fromCoroutine(conn.listen(never, never)))
    failure.trap(DatabaseUnavailable)
    message = str(failure.value)
    assert message.startswith("cannot LISTEN on PostgreSQL: connection to server on socket")
    assert "\n" not in message
    failure_of(Deferred.fromCoroutine(conn.check())).trap(DatabaseUnavailable)


def test_listen_to_a_silent_server_times_out(tmp_path: Path) -> None:
    """The server takes the connection and never answers: at the timeout ``listen`` fails with
    DatabaseUnavailable, the callbacks are never called and the socket is off the reactor."""
    server = SilentServer(tmp_path)
    try:
        reactor = MemoryReactorClock()
        conn = ListeningConnection(reactor, server.dsn, CHANNEL, timeout=5.0)
        d = Deferred.fromCoroutine(conn.listen(never, never))
        pump(reactor)
        reactor.advance(4.9)
        assert not d.called
        reactor.advance(0.1)
        failure = failure_of(d)
        failure.trap(DatabaseUnavailable)
        assert str(failure.value) == (
            "cannot LISTEN on PostgreSQL: PostgreSQL did not answer within 5 s"
        )
        assert reactor.getReaders() == [] and reactor.getWriters() == []
    finally:
        server.close()


def test_listen_unanswered_after_connecting_times_out(tmp_path: Path) -> None:
    """Connected, the server never answers the LISTEN: the same end at the timeout, with
    nothing left on the reactor, and ``check`` then says the connection is closed."""
    server = SilentServer(tmp_path)
    try:
        reactor = MemoryReactorClock()
        conn = ListeningConnection(reactor, server.dsn, CHANNEL, timeout=5.0)
        d = Deferred.fromCoroutine(conn.listen(never, never))
        pump(reactor)
        server.answer_startup()
        pump(reactor)
        assert not d.called
        reactor.advance(5.0)
        failure_of(d).trap(DatabaseUnavailable)
        assert reactor.getReaders() == [] and reactor.getWriters() == []
        failure_of(Deferred.fromCoroutine(conn.check())).trap(DatabaseUnavailable)
    finally:
        server.close()
