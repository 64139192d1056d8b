"""A small self-healing PostgreSQL pool on txpostgres.

txpostgres' own ConnectionPool is fixed-size and never reconnects. Ours opens connections on
demand (up to ``size``), drops any that broke, and turns "the database is not answering" into
one exception, ``DatabaseUnavailable``, that the web layer answers with 503. When PostgreSQL is
back, the next request simply opens a fresh connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import psycopg2
import psycopg2.extras
from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres

T = TypeVar("T")
Row = dict[str, Any]
# A statement's parameters: positional (%s) or named (%(name)s), adapted by psycopg2
Params = Sequence[object] | Mapping[str, object]

# SQLSTATE classes that mean "the server or the link is gone", not "your query is wrong".
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


class DatabaseUnavailable(Exception):
    """PostgreSQL did not answer (down, restarting, unreachable or too slow)."""


class WatchedConnection(txpostgres.Connection):  # type: ignore[misc]
    """A connection that notices when the server goes away while it sits idle.

    txpostgres watches idle connections for NOTIFY; when the server closes one, psycopg2's
    poll() raises inside doRead with nobody to report to, which the reactor would log as an
    unhandled error. We mark the connection broken instead and let the pool drop it.
    """

    broken = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._polling: set[txpostgres.Cursor] = set()  # cursors the reactor watches

    def cursorRunning(self, cursor: txpostgres.Cursor) -> None:
        super().cursorRunning(cursor)
        self._polling.add(cursor)

    def cursorFinished(self, cursor: txpostgres.Cursor) -> None:
        self._polling.discard(cursor)
        super().cursorFinished(cursor)

    def close(self) -> None:
        """Closed mid-query (a timeout), a cursor would stay on the reactor: txpostgres fails
        its Deferred but leaves it there."""
        for cursor in list(self._polling):
            self.reactor.removeReader(cursor)
            self.reactor.removeWriter(cursor)
        super().close()

    def doRead(self) -> None:
        try:
            super().doRead()
        except psycopg2.Error:
            self.broken = True
            self.reactor.removeReader(self)

    def usable(self) -> bool:
        raw = self.pollable()  # (txpostgres' public view of its psycopg2 connection)
        return not self.broken and raw is not None and not raw.closed


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(error, psycopg2.InterfaceError | TimeoutError | DatabaseUnavailable):
        return True
    if isinstance(error, psycopg2.OperationalError):
        code = getattr(error, "pgcode", None)
        return code is None or code.startswith(_UNAVAILABLE_SQLSTATES)
    return False


@define(eq=False)
class Database:
    """Queries and transactions with a bound on connections and on time."""

    # timeouts; txpostgres also adds its connections' sockets as readers (IReactorFDSet):
    # the server's reactor, which is both
    _reactor: IReactorTime
    _dsn: str
    _size: int = 8
    _connect_timeout: float = 5.0
    _query_timeout: float = 30.0
    _idle: list[WatchedConnection] = field(factory=list, init=False)
    _slots: DeferredSemaphore = field(init=False)
    _closed: bool = field(default=False, init=False)
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        self._slots = DeferredSemaphore(self._size)

    async def _connect(self) -> WatchedConnection:
        conn = WatchedConnection(reactor=self._reactor)
        d = conn.connect(self._dsn, cursor_factory=psycopg2.extras.RealDictCursor)
        try:
            await bounded(d, self._reactor, self._connect_timeout, partial(close_quietly, conn))
        except Exception as e:
            close_quietly(conn)
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {first_line(e)}") from e
        return conn

    async def dedicated(self) -> WatchedConnection:
        """A connection of its own, outside the pool and its bound (a session's advisory lock
        lasts as long as the connection that took it); the caller closes it."""
        return await self._connect()

    async def _with_connection(self, use: Callable[[WatchedConnection], Awaitable[T]]) -> T:
        if self._closed:
            raise DatabaseUnavailable("the database pool is closed")
        await self._slots.acquire()
        conn: WatchedConnection | None = None
        try:
            while self._idle:
                candidate = self._idle.pop()
                if candidate.usable():
                    conn = candidate
                    break
                close_quietly(candidate)
            if conn is None:
                conn = await self._connect()
            try:
                result = await use(conn)
            except BaseException as e:
                if isinstance(e, CancelledError) or _is_unavailable(e):
                    # A cancelled query leaves the connection mid-protocol; do not reuse it.
                    close_quietly(conn)
                    conn = None
                if isinstance(e, CancelledError | DatabaseUnavailable) or not _is_unavailable(e):
                    raise
                raise DatabaseUnavailable(f"PostgreSQL failed: {first_line(e)}") from e
            return result
        finally:
            if conn is not None:
                if conn.usable() and not self._closed:
                    self._idle.append(conn)
                else:
                    close_quietly(conn)
            self._slots.release()

    def _timed(self, conn: WatchedConnection, d: Deferred[T]) -> Deferred[T]:
        return bounded(d, self._reactor, self._query_timeout, partial(close_quietly, conn))

    async def query(self, sql: str, args: Params = ()) -> list[Row]:
        """Run one statement that returns rows, in its own transaction."""

        async def use(conn: WatchedConnection) -> list[Row]:
            rows = await self._timed(conn, conn.runQuery(sql, args))
            return [dict(r) for r in rows]

        return await self._with_connection(use)

    async def execute(self, sql: str, args: Params = ()) -> None:
        """Run one statement that returns nothing, in its own transaction."""

        async def use(conn: WatchedConnection) -> None:
            await self._timed(conn, conn.runOperation(sql, args))

        await self._with_connection(use)

    async def transaction(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction: committed if it returns, rolled back if it raises."""

        async def use(conn: WatchedConnection) -> T:
            def interaction(cursor: txpostgres.Cursor) -> Deferred[T]:
                return Deferred.fromCoroutine(_call(work, Transaction(cursor)))

            result: T = await self._timed(conn, conn.runInteraction(interaction))
            return result

        return await self._with_connection(use)

    async def ping(self) -> None:
        await self.query("SELECT 1")

    def close(self) -> None:
        self._closed = True
        while self._idle:
            close_quietly(self._idle.pop())


async def _call(work: Callable[[Transaction], Awaitable[T]], tx: Transaction) -> T:
    return await work(tx)


@define(eq=False)
class Transaction:
    """The statements of one transaction; rows come back as dicts."""

    _cursor: txpostgres.Cursor  # (txpostgres is untyped: its names are Any to mypy)

    async def query(self, sql: str, args: Params = ()) -> list[Row]:
        await self._cursor.execute(sql, args)
        return [dict(r) for r in self._cursor.fetchall()]

    async def one(self, sql: str, args: Params = ()) -> Row | None:
        rows = await self.query(sql, args)
        return rows[0] if rows else None

    async def execute(self, sql: str, args: Params = ()) -> int:
        await self._cursor.execute(sql, args)
        return int(self._cursor.rowcount)


def bounded(
    d: Deferred[T], clock: IReactorTime, seconds: float, close: Callable[[], object]
) -> Deferred[T]:
    """``d``, an operation on a txpostgres connection (connecting, a query), or
    ``DatabaseUnavailable`` once ``seconds`` have passed without its answer; then ``close``
    closes that connection.

    Not ``d.addTimeout``: that cancels ``d``, and txpostgres' canceller calls psycopg2's
    ``cancel()``, which raises while connecting ("asynchronous connection attempt underway")
    and otherwise blocks on a round trip to the server, then leaves ``d`` waiting for the
    server's answer: against a silent server ``d`` never fires and its caller holds its pool
    slot for good. Closing the connection takes its socket off the reactor and fails ``d``
    (that failure is dropped here: the caller has had its answer). Cancelling the answer
    closes the connection the same way."""

    given_up: list[bool] = []

    def cancel(_: Deferred[T]) -> None:  # (a caller gave up: the same, with CancelledError)
        given_up.append(True)  # (``d``'s failure, as the connection closes, is not the answer)
        if timer.active():
            timer.cancel()
        close()

    answer: Deferred[T] = Deferred(cancel)

    def expire() -> None:
        # (the answer first: closing fails ``d`` at once, and that failure is not the answer)
        if not answer.called:
            answer.errback(DatabaseUnavailable(f"PostgreSQL did not answer within {seconds:g} s"))
        close()

    timer = clock.callLater(seconds, expire)

    def done(result: T | Failure) -> None:
        if timer.active():
            timer.cancel()
        if answer.called or given_up:
            return
        if isinstance(result, Failure):
            answer.errback(result)
        else:
            answer.callback(result)

    d.addBoth(done)
    return answer


def close_quietly(conn: WatchedConnection) -> None:
    try:
        raw = conn.pollable()  # (txpostgres' public view of its psycopg2 connection)
        if raw is not None and not raw.closed:
            conn.close()
    except Exception:
        pass


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
