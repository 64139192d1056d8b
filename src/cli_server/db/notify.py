"""A dedicated PostgreSQL connection that LISTENs on one channel.

The pool's connections come and go; a LISTEN must stay on one connection for as long as it
hears. This one connects like the pool does (same DSN, same connect timeout), says when a
NOTIFY arrives and when the server closed it, and answers a round trip (``check``) so that a
silent link is found out too. It never reconnects by itself: its owner decides when.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from cli_server.db.pool import (
    DatabaseUnavailable,
    WatchedConnection,
    bounded,
    close_quietly,
    first_line,
)

T = TypeVar("T")


class _Listening(WatchedConnection):
    """Tells ``on_lost`` when the server closes it while it sits listening."""

    on_lost: Callable[[], None] | None = None

    def doRead(self) -> None:
        super().doRead()
        if self.broken and self.on_lost is not None:
            lost, self.on_lost = self.on_lost, None
            lost()


@define(eq=False)
class ListeningConnection:
    _reactor: IReactorTime  # (txpostgres also adds it readers: a full reactor)
    _dsn: str
    _channel: str
    _timeout: float = 5.0
    _conn: _Listening | None = field(default=None, init=False)

    async def listen(self, heard: Callable[[], None], lost: Callable[[], None]) -> None:
        """Connects and LISTENs; from then on ``heard`` is called for each NOTIFY on the
        channel and ``lost`` once if the server closes the connection."""
        self.close()
        conn = _Listening(reactor=self._reactor)
        try:
            await self._timed(conn, conn.connect(self._dsn))
            conn.addNotifyObserver(lambda notify: heard())
            # (a channel name is an identifier, not a value: it is ours, never a caller's)
            await self._timed(conn, conn.runOperation(f"LISTEN {self._channel}"))
        except Exception as e:
            close_quietly(conn)
            raise DatabaseUnavailable(f"cannot LISTEN on PostgreSQL: {first_line(e)}") from e
        conn.on_lost = lost
        self._conn = conn

    async def check(self) -> None:
        """One round trip on the listening connection; raises if it is gone or too slow."""
        conn = self._conn
        if conn is None or not conn.usable():
            raise DatabaseUnavailable("the listening connection is closed")
        try:
            await self._timed(conn, conn.runQuery("SELECT 1"))
        except Exception as e:
            raise DatabaseUnavailable(f"the listening connection failed: {first_line(e)}") from e

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.on_lost = None
            close_quietly(conn)

    def _timed(self, conn: _Listening, d: Deferred[T]) -> Deferred[T]:
        """``d`` bounded by the timeout; past it ``conn`` is closed (see ``bounded``)."""
        return bounded(d, self._reactor, self._timeout, partial(close_quietly, conn))
