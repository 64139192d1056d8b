"""One leader among the replicas: a PostgreSQL session advisory lock on a dedicated connection.

PostgreSQL releases a session lock when its connection ends, so a leader that dies (killed,
host gone, network cut and the server's keepalives noticed) frees it for the next replica's
try. The leader checks its connection every period and stops leading the moment it is lost
or does not answer in time: it never goes on working while another replica may have taken
the lock. Work that must run once per cluster is wrapped in ``when_leading``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from cli_server.db.pool import bounded

# "cli-lead" in ASCII: one fixed key for every replica of every version.
LEADER_LOCK_KEY = 0x636C692D6C656164

# The server drops a lost leader's session (and its lock) within about 10 + 3 * 5 s of
# silence, instead of the kernel's default two hours of TCP keepalive.
_KEEPALIVES = (
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"
)


T = TypeVar("T")

# A row as a cursor returns it: a dict from our cursors, a tuple from a plain one
LockRow = Mapping[str, object] | Sequence[object]


class LockConnection(Protocol):
    """A database connection of its own, outside the pool (a txpostgres one in production)."""

    def runQuery(self, sql: str, args: Sequence[object] = ()) -> Deferred[list[LockRow]]: ...

    def usable(self) -> bool: ...

    def close(self) -> object: ...  # (txpostgres': a Deferred, not waited for)


@define(eq=False)
class Leadership(Service):
    """Tries to become, or checks it still is, the leader on each ``attempt`` (every period)."""

    _clock: IReactorTime
    _connect: Callable[[], Awaitable[LockConnection]]
    _name: str  # this replica, in the lock connection's application_name
    _timeout: float = 5.0  # every wait on the network: connect, lock, check
    _key: int = LEADER_LOCK_KEY
    _conn: LockConnection | None = field(default=None, init=False)
    _leading: bool = field(default=False, init=False)
    _attempting: bool = field(default=False, init=False)
    # run at once when leadership is gained (the last leader may have died mid-sweep)
    _at_gain: list[Callable[[], Awaitable[None]]] = field(factory=list, init=False)
    on_change: list[Callable[[bool], None]] = field(factory=list, init=False)
    _log = Logger()

    @property
    def leading(self) -> bool:
        """True only while the lock's connection is open; asked before each piece of work."""
        if self._leading and (self._conn is None or not self._conn.usable()):
            self._lose("the lock's connection was lost")
        return self._leading

    def when_leading(
        self, job: Callable[[], Awaitable[None]], *, at_gain: bool = True
    ) -> Callable[[], Awaitable[None]]:
        """``job`` gated on leadership; never two runs of it at once (a tick and a gain)."""
        running = False

        async def run() -> None:
            nonlocal running
            if running or not self.leading:
                return
            running = True
            try:
                await job()
            finally:
                running = False

        if at_gain:
            self._at_gain.append(run)
        return run

    async def attempt(self) -> None:
        """One round: connect if need be, then take the lock or check we still hold it.
        Never raises; whatever fails costs leadership and the connection."""
        if self._attempting or not self.running:
            return
        self._attempting = True
        try:
            await self._round()
        except Exception as e:
            if self._leading:
                self._lose(f"the lock's connection failed: {_why(e)}")
            else:
                self._log.debug("leader election: {why}", why=_why(e))
            self._drop()
        finally:
            self._attempting = False

    async def _round(self) -> None:
        if self._conn is not None and not self._conn.usable():
            if self._leading:
                self._lose("the lock's connection was lost")
            self._drop()
        if self._conn is None:
            conn = await self._timed(Deferred.fromCoroutine(_awaited(self._connect)))
            if not self.running:  # stopped while connecting
                conn.close()
                return
            self._conn = conn
            name = f"cli-server {self._name}"[:63]
            await self._answered(
                conn.runQuery(f"SET application_name = %s; {_KEEPALIVES}; SELECT 1", (name,))
            )
        if self._leading:
            await self._answered(self._conn.runQuery("SELECT 1"))
            return
        rows = await self._answered(
            self._conn.runQuery("SELECT pg_try_advisory_lock(%s) AS locked", (self._key,))
        )
        if rows and _first(rows[0]) and self.running:
            await self._gain()

    async def _gain(self) -> None:
        self._leading = True
        self._log.info("this replica ({name}) now leads the periodic work", name=self._name)
        for notify in self.on_change:
            notify(True)
        for job in self._at_gain:
            try:
                await job()
            except Exception:
                self._log.failure("the work on taking the lead failed", level=LogLevel.error)

    def _lose(self, why: str) -> None:
        self._leading = False
        self._log.warn("this replica ({name}) no longer leads: {why}", name=self._name, why=why)
        for notify in self.on_change:
            notify(False)
        self._drop()  # (closing it frees the lock on the server, if it still holds it)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass  # (already closed)

    def _timed(self, d: Deferred[T]) -> Deferred[T]:
        d.addTimeout(self._timeout, self._clock)
        return d

    def _answered(self, query: Deferred[T]) -> Deferred[T]:
        """A query's rows, or ``DatabaseUnavailable`` after the timeout, never by cancelling
        it (``db.pool.bounded`` says why); then the connection is dropped, which ends the
        query, and the round fails."""
        return bounded(query, self._clock, self._timeout, self._drop)

    def stopService(self) -> None:
        """Let go at once, so another replica takes over at its next try."""
        super().stopService()
        if self._leading:
            self._leading = False
            self._log.info("this replica ({name}) steps down (stopping)", name=self._name)
            for notify in self.on_change:
                notify(False)
        self._drop()


async def _awaited(connect: Callable[[], Awaitable[LockConnection]]) -> LockConnection:
    return await connect()


def _first(row: LockRow) -> object:
    """The first column of a row (a dict from our cursors, a tuple from a plain one)."""
    return next(iter(row.values())) if isinstance(row, Mapping) else row[0]


def _why(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
