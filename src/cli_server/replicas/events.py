"""The domain's events heard by every replica: written to PostgreSQL, announced by NOTIFY.

``Events`` fans an event out in this process. ``ReplicaEvents`` is one more subscriber: it
writes the event to ``replica_events`` and NOTIFYs the row's id (ids and names only, never a
secret). Every replica LISTENs on a dedicated connection, reads the rows after the last one it
settled and hands each to its own subscribers (``local``), except its own rows: it delivered
those when it fired them.

A write that fails (the database away, a lock timeout) does not fail whoever fired the event:
the local subscribers heard it already, so the event is kept in memory, in order, and written
again after ``first_retry`` seconds, doubling up to ``longest_retry``, until it is written.

Nothing is missed across a dropped listening connection: after reconnecting (bounded backoff)
it reads every row after the last it settled before it waits again. A heartbeat on the
listening connection finds a silent link, and reads too, so a lost NOTIFY costs at most one
heartbeat. Ids are taken at insert and committed in any order, so an id missing below one
already seen is waited for (``gap_wait``) before it is given up as rolled back.

Rows are pruned after ``KEEP`` seconds. A replica that could not read for long enough that
rows it never read may be gone (the first row it reads is not the next id, or none is left)
cannot know what it missed: it takes everything as changed (``forget_everything``: every
cached session dropped, every proxied connection cut; browsers reconnect and are checked
again).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from cli_server.db.pool import Database, Row, Transaction
from cli_server.domain.events import Listener

CHANNEL = "cli_replica_events"
KINDS = frozenset(
    {"user_revoked", "user_disabled", "member_changed", "sandbox_deleted", "sandbox_status_changed"}
)
_BATCH = 500  # rows per read
_BACKLOG = 10_000  # events kept for writing again while the table cannot be written
KEEP = 600.0  # seconds a row stays in the table


class Feed(Protocol):
    """The listening side (``db.notify.ListeningConnection``)."""

    async def listen(self, heard: Callable[[], None], lost: Callable[[], None]) -> None: ...

    async def check(self) -> None: ...

    def close(self) -> None: ...


class Store(Protocol):
    """The table (``EventTable``)."""

    async def newest(self) -> int: ...

    async def taken(self) -> int:
        """The highest id ever taken, whether its row committed, rolled back or was pruned."""

    async def after(self, above: int, limit: int, also: Sequence[int] = ()) -> list[Row]:
        """The first ``limit`` rows, in id order, with an id above ``above`` or in ``also``."""

    async def add(self, origin: str, kind: str, payload: dict[str, str]) -> None: ...


def new_origin() -> str:
    """This process's name on the rows it writes: new at every start."""
    return secrets.token_hex(8)


@define(eq=False)
class EventTable:
    """``replica_events``: an insert and its NOTIFY commit together; rows older than ``keep``
    seconds are pruned by whoever inserts (at most once per ``prune_every``)."""

    _db: Database
    _clock: IReactorTime
    _keep: float = KEEP
    _prune_every: float = 60.0
    _pruned_at: float | None = field(default=None, init=False)

    async def newest(self) -> int:
        rows = await self._db.query("SELECT coalesce(max(id), 0) AS id FROM replica_events")
        return int(rows[0]["id"])

    async def taken(self) -> int:
        rows = await self._db.query(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS id FROM replica_events_id_seq"
        )
        return int(rows[0]["id"])

    async def after(self, above: int, limit: int, also: Sequence[int] = ()) -> list[Row]:
        return await self._db.query(
            "SELECT id, origin, kind, payload FROM replica_events"
            " WHERE id > %s OR id = ANY(%s::bigint[]) ORDER BY id LIMIT %s",
            (above, list(also), limit),
        )

    async def add(self, origin: str, kind: str, payload: dict[str, str]) -> None:
        now = self._clock.seconds()
        prune = self._pruned_at is None or now - self._pruned_at >= self._prune_every

        async def work(tx: Transaction) -> None:
            await tx.execute(
                "WITH made AS (INSERT INTO replica_events (origin, kind, payload)"
                " VALUES (%s, %s, %s::jsonb) RETURNING id)"
                " SELECT pg_notify(%s, id::text) FROM made",
                (origin, kind, json.dumps(payload), CHANNEL),
            )
            if prune:
                await tx.execute(
                    "DELETE FROM replica_events WHERE at < now() - make_interval(secs => %s)",
                    (self._keep,),
                )

        await self._db.transaction(work)
        if prune:
            self._pruned_at = now


@define(eq=False)
class Settled:
    """Which ids are dealt with: all up to ``floor``, and ``above`` it. A missing id below
    one seen is waited for ``gap_wait`` seconds (its transaction may commit late), then given
    up (it rolled back)."""

    _clock: IReactorTime
    floor: int = 0
    _gap_wait: float = 10.0
    _above: set[int] = field(factory=set, init=False)
    _gaps: dict[int, float] = field(factory=dict, init=False)  # missing id -> noticed at

    def take(self, rows: list[Row]) -> list[Row]:
        """The rows not dealt with yet, in id order; they count as dealt with from now."""
        now = self._clock.seconds()
        new = [r for r in rows if int(r["id"]) > self.floor and int(r["id"]) not in self._above]
        new.sort(key=lambda r: int(r["id"]))
        for row in new:
            self._above.add(int(row["id"]))
            self._gaps.pop(int(row["id"]), None)
        top = max(self._above, default=self.floor)
        for missing in range(self.floor + 1, top):
            if missing not in self._above:
                self._gaps.setdefault(missing, now)
        self.advance()
        return new

    def advance(self) -> None:
        """Moves the floor over every id dealt with and every gap waited for long enough."""
        now = self._clock.seconds()
        while True:
            next_id = self.floor + 1
            if next_id in self._above:
                self._above.discard(next_id)
            elif next_id in self._gaps and now - self._gaps[next_id] >= self._gap_wait:
                del self._gaps[next_id]
            else:
                return
            self.floor = next_id

    @property
    def waiting(self) -> int:
        """Ids still waited for."""
        return len(self._gaps)

    @property
    def top(self) -> int:
        """The highest id dealt with."""
        return max(self._above, default=self.floor)

    @property
    def missing(self) -> list[int]:
        """The ids below ``top`` still waited for, lowest first."""
        return sorted(self._gaps)


@define(eq=False)
class ReplicaEvents(Service):
    """Publishes this replica's events (as an ``events.Listener``) and delivers the other
    replicas' to ``local``.

    ``startService`` starts the listening loop: connect and LISTEN, read what came after the
    last settled id (the newest at the first start), then read again on each NOTIFY and each
    ``heartbeat``; a failed heartbeat or a connection the server closed reconnects after
    ``first_retry`` seconds, doubling up to ``longest_retry``.
    """

    _clock: IReactorTime
    _store: Store
    _feed: Feed
    _local: Listener
    origin: str = field(factory=new_origin)
    _heartbeat: float = 5.0
    _first_retry: float = 0.5
    _longest_retry: float = 10.0
    _gap_wait: float = 10.0
    _begin_at_start: bool = True  # else at ``begin`` (once the table exists)
    _keep: float = KEEP  # (the table's: rows older may be gone)
    # Called when events may have been missed for good (see the module's docstring).
    forget_everything: Callable[[], None] = field(default=lambda: None)
    _read_at: float | None = field(default=None, init=False)  # the last read that worked
    _begun: bool = field(default=False, init=False)
    settled: Settled | None = field(default=None, init=False)
    connected: bool = field(default=False, init=False)
    _loop: Deferred[None] | None = field(default=None, init=False)
    _wake: Deferred[None] | None = field(default=None, init=False)
    _lost: bool = field(default=False, init=False)
    _reading: Deferred[None] | None = field(default=None, init=False)
    _again: bool = field(default=False, init=False)
    _backlog: list[tuple[str, dict[str, str]]] = field(factory=list, init=False)
    _writing: Deferred[None] | None = field(default=None, init=False)
    _log = Logger()

    # -- publishing: this replica's events, for the others

    async def user_revoked(self, user_id: str) -> None:
        await self._publish("user_revoked", {"user_id": user_id})

    async def user_disabled(self, user_id: str) -> None:
        await self._publish("user_disabled", {"user_id": user_id})

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        await self._publish("member_changed", {"user_id": user_id, "workspace_id": workspace_id})

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        await self._publish("sandbox_deleted", {"sandbox_id": sandbox_id})

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        await self._publish("sandbox_status_changed", {"sandbox_id": sandbox_id})

    def tell_others(self, kind: str, **payload: str) -> None:
        """For a change this replica already dealt with itself another way (a tunnel came or
        went): only the others hear it."""
        Deferred.fromCoroutine(self._publish(kind, payload))

    @property
    def unwritten(self) -> int:
        """Events fired here that the other replicas cannot read yet (the writes failed)."""
        return len(self._backlog)

    async def _publish(self, kind: str, payload: dict[str, str]) -> None:
        """Writes the event now, or keeps it to write again (never raises)."""
        if not self._backlog:
            try:
                await self._store.add(self.origin, kind, payload)
                return
            except Exception as e:
                self._log.warn(
                    "telling the other replicas of {kind} failed ({why}); trying again",
                    kind=kind,
                    why=e,
                )
        if len(self._backlog) >= _BACKLOG:
            dropped, _ = self._backlog.pop(0)
            self._log.error("too many events unwritten: {kind} dropped", kind=dropped)
        self._backlog.append((kind, payload))
        if self._writing is None:
            writing = Deferred.fromCoroutine(self._write_backlog())
            self._writing = writing
            writing.addErrback(lambda f: f.trap(CancelledError))

    async def _write_backlog(self) -> None:
        """Writes the kept events in order, waiting longer after each failure (bounded)."""
        delay = self._first_retry
        try:
            while self._backlog:
                await deferLater(self._clock, delay)
                kind, payload = self._backlog[0]
                try:
                    await self._store.add(self.origin, kind, payload)
                except Exception as e:
                    delay = min(delay * 2, self._longest_retry)
                    self._log.warn(
                        "{count} events still unwritten ({why}); trying again in {delay}s",
                        count=len(self._backlog),
                        why=e,
                        delay=delay,
                    )
                    continue
                self._backlog.pop(0)
                delay = 0.0  # (the table can be written again: the rest at once)
            self._log.info("the unwritten events are written")
        finally:
            self._writing = None

    # -- listening: the other replicas' events, for this one

    def startService(self) -> None:
        super().startService()
        if self._begin_at_start:
            self._begin()

    async def begin(self) -> None:
        """Starts listening, if the service runs (e.g. once migrations made the table)."""
        if self.running:
            self._begin()

    def _begin(self) -> None:
        if self._begun:
            return
        self._begun = True
        self._loop = Deferred.fromCoroutine(self._listen_loop())
        self._loop.addErrback(lambda f: f.trap(CancelledError))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        writing = self._writing
        if writing is not None:
            self._log.warn("stopping with {count} events unwritten", count=len(self._backlog))
            writing.cancel()
        loop, self._loop = self._loop, None
        self._begun = False
        if loop is not None:
            loop.cancel()
        self._feed.close()
        self.connected = False
        reading = self._reading
        if reading is None:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        reading.addBoth(lambda _: waiting.callback(None))  # (a delivery under way ends)
        return waiting

    async def _listen_loop(self) -> None:
        delay = self._first_retry
        while self.running:
            try:
                self._lost = False
                await self._feed.listen(self._heard, self._on_lost)
                if self.settled is None:  # first start: from the newest row on
                    self.settled = Settled(self._clock, await self._store.newest(), self._gap_wait)
                self.connected = True
                self._log.info("listening for the other replicas' events")
                delay = self._first_retry
                self.read()  # (what came while we were away)
                while await self._sleep(self._heartbeat):
                    await self._feed.check()
                    self.read()
            except CancelledError:
                raise
            except Exception as e:
                self._log.warn(
                    "listening for the other replicas' events failed ({why}); retrying in {delay}s",
                    why=e,
                    delay=delay,
                )
            else:
                self._log.warn(
                    "the listening connection closed; reconnecting in {delay}s", delay=delay
                )
            self.connected = False
            self._feed.close()
            await deferLater(self._clock, delay)
            delay = min(delay * 2, self._longest_retry)

    async def _sleep(self, seconds: float) -> bool:
        """Until ``seconds`` pass (True) or the connection is lost (False)."""
        wake: Deferred[None] = Deferred()
        self._wake = wake
        call: IDelayedCall = self._clock.callLater(seconds, _fire, wake)
        try:
            if not self._lost:
                await wake
        finally:
            self._wake = None
            if call.active():
                call.cancel()
        return not self._lost

    def _heard(self) -> None:
        self.read()

    def _on_lost(self) -> None:
        self._lost = True
        wake = self._wake
        if wake is not None and not wake.called:
            wake.callback(None)

    def read(self) -> None:
        """Reads and delivers the rows not settled yet; a read already under way reads
        again when it is done, so nothing announced meanwhile waits for the next NOTIFY."""
        if self._reading is not None:
            self._again = True
            return
        reading = Deferred.fromCoroutine(self._read())
        self._reading = reading

        def done(_: object) -> None:
            self._reading = None

        reading.addBoth(done)

    async def _read(self) -> None:
        settled = self.settled
        if settled is None:
            return
        while True:
            self._again = False
            began = self._clock.seconds()
            # (rows pruned unread are possible only after half the keep: margin for clocks)
            gone = began - self._read_at if self._read_at is not None else 0.0
            away = gone >= self._keep / 2
            top = settled.top
            try:
                # (only what is not taken yet: the ids waited for and those above the
                # highest taken; every row read is new, so each round makes progress)
                rows = await self._store.after(top, _BATCH, settled.missing)
                taken = await self._store.taken() if away else top
            except Exception as e:
                self._log.warn("reading the other replicas' events failed: {why}", why=e)
                return  # (the next heartbeat or NOTIFY reads again from the same place)
            self._read_at = began
            if away and _skipped(top, rows, taken):
                self._log.warn(
                    "events of the other replicas may have been pruned unread (no read for "
                    "{away:.0f}s): every cached session is dropped and every connection cut",
                    away=gone,
                )
                self.forget_everything()
            for row in settled.take(rows):
                if row["origin"] != self.origin:
                    await self._deliver(row)
            if len(rows) < _BATCH and not self._again:
                return

    async def _deliver(self, row: Row) -> None:
        kind, payload = row["kind"], row["payload"]
        if kind not in KINDS or not isinstance(payload, dict):
            self._log.warn("ignoring an event this replica does not know: {kind}", kind=kind)
            return
        # (by name: ``kind`` is one of KINDS, each a method of Listener)
        call: Callable[..., Awaitable[object]] = getattr(self._local, kind)
        try:
            await call(**payload)
        except Exception:
            # (``Events`` logged each subscriber's failure; the others still heard it)
            self._log.warn("delivering {kind} from another replica failed", kind=kind)


def _skipped(top: int, rows: list[Row], taken: int) -> bool:
    """Whether ids just above ``top`` are missing from what was read (pruned, maybe; a
    rolled-back one looks the same, and costs a needless cut)."""
    above = [int(r["id"]) for r in rows if int(r["id"]) > top]
    return min(above) > top + 1 if above else taken > top


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)
