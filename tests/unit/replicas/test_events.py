"""The replica event bus's logic with fakes: the table is a list, the listening connection a
switch, time a Clock. What it must do: deliver the others' events in id order and never its
own, read again after a reconnect so nothing is missed, wait for ids committed late, and keep
local delivery of a revocation when writing it for the others fails."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from cli_server.db.pool import DatabaseUnavailable, Row
from cli_server.domain.events import Events
from cli_server.replicas.events import ReplicaEvents, Settled


@define(eq=False)
class Table:
    """``replica_events`` in memory; ``hidden`` ids are taken but not committed yet."""

    rows: list[Row] = field(factory=list)
    next_id: int = 1
    hidden: set[int] = field(factory=set)
    failing: bool = False
    reads: int = 0
    on_add: Callable[[], None] | None = None

    def insert(self, origin: str, kind: str, payload: dict[str, str], hide: bool = False) -> int:
        row_id = self.next_id
        self.next_id += 1
        self.rows.append({"id": row_id, "origin": origin, "kind": kind, "payload": payload})
        if hide:
            self.hidden.add(row_id)
        return row_id

    async def newest(self) -> int:
        return max((int(r["id"]) for r in self.visible()), default=0)

    async def taken(self) -> int:
        return self.next_id - 1

    async def after(self, above: int, limit: int, also: Sequence[int] = ()) -> list[Row]:
        self.reads += 1
        if self.failing:
            raise DatabaseUnavailable("down")
        return [r for r in self.visible() if r["id"] > above or r["id"] in also][:limit]

    async def add(self, origin: str, kind: str, payload: dict[str, str]) -> None:
        if self.failing:
            raise DatabaseUnavailable("down")
        self.insert(origin, kind, payload)
        if self.on_add is not None:
            self.on_add()

    def visible(self) -> list[Row]:
        return [r for r in self.rows if r["id"] not in self.hidden]


@define(eq=False)
class Switch:
    """The listening connection: ``up`` says whether connecting works; ``notify`` and
    ``drop`` play the server's part."""

    up: bool = True
    healthy: bool = True
    heard: Callable[[], None] | None = None
    lost: Callable[[], None] | None = None
    connects: int = 0
    closes: int = 0

    async def listen(self, heard: Callable[[], None], lost: Callable[[], None]) -> None:
        self.connects += 1
        if not self.up:
            raise DatabaseUnavailable("refused")
        self.heard, self.lost = heard, lost

    async def check(self) -> None:
        if not self.healthy:
            raise DatabaseUnavailable("no answer")

    def close(self) -> None:
        self.closes += 1
        self.heard = self.lost = None

    def notify(self) -> None:
        if self.heard is not None:
            self.heard()

    def drop(self) -> None:
        lost, self.heard, self.lost = self.lost, None, None
        if lost is not None:
            lost()


@define(eq=False)
class Heard:
    said: list[tuple[str, ...]] = field(factory=list)
    hold: Deferred[None] | None = None

    async def user_revoked(self, user_id: str) -> None:
        self.said.append(("user_revoked", user_id))
        if self.hold is not None:
            await self.hold

    async def user_disabled(self, user_id: str) -> None:
        self.said.append(("user_disabled", user_id))

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        self.said.append(("member_changed", user_id, workspace_id))

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        self.said.append(("sandbox_deleted", sandbox_id))

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        self.said.append(("sandbox_status_changed", sandbox_id))


class ReplicaEventsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.table = Table()
        self.switch = Switch()
        self.heard = Heard()
        self.forgotten: list[None] = []
        self.bus = self.make(self.heard, origin="me")

    def make(self, local: Any, origin: str, switch: Switch | None = None) -> ReplicaEvents:
        return ReplicaEvents(
            self.clock,
            self.table,
            switch or self.switch,
            local,
            origin=origin,
            gap_wait=10.0,
            forget_everything=lambda: self.forgotten.append(None),
        )

    def start(self) -> None:
        self.bus.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.bus.running:
            self.successResultOf(self.bus.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_delivers_the_others_events_in_order_never_its_own(self) -> None:
        """Rows from other replicas reach the local subscribers in id order; this replica's
        own rows are skipped (it delivered them when it fired them)."""
        self.start()
        self.table.insert("other", "user_revoked", {"user_id": "u1"})
        self.table.insert("me", "user_revoked", {"user_id": "mine"})
        self.table.insert("other", "member_changed", {"user_id": "u2", "workspace_id": "w"})
        self.table.insert("third", "sandbox_deleted", {"sandbox_id": "s"})
        self.switch.notify()
        self.assertEqual(
            self.heard.said,
            [
                ("user_revoked", "u1"),
                ("member_changed", "u2", "w"),
                ("sandbox_deleted", "s"),
            ],
        )
        assert self.bus.settled is not None
        self.assertEqual(self.bus.settled.floor, 4)

    def test_starts_from_the_newest_row(self) -> None:
        """What happened before this replica started is not replayed to it."""
        self.table.insert("other", "user_revoked", {"user_id": "old"})
        self.start()
        self.switch.notify()
        self.table.insert("other", "user_revoked", {"user_id": "new"})
        self.switch.notify()
        self.assertEqual(self.heard.said, [("user_revoked", "new")])

    def test_publishing_writes_rows_others_hear(self) -> None:
        """An event fired here, as a subscriber of ``Events``, becomes a row another replica
        delivers; the firing replica hears it once, locally."""
        events = Events()
        events.subscribe(self.heard)
        events.subscribe(self.bus)
        there = Heard()
        other = self.make(there, origin="other", switch=Switch())
        other.startService()
        self.start()
        self.successResultOf(Deferred.fromCoroutine(events.member_changed("u", "w")))
        self.successResultOf(Deferred.fromCoroutine(events.sandbox_status_changed("s")))
        other.read()  # (its NOTIFY)
        self.bus.read()  # (ours too: PostgreSQL tells every listener)
        self.assertEqual(
            self.heard.said, [("member_changed", "u", "w"), ("sandbox_status_changed", "s")]
        )
        self.assertEqual(there.said, self.heard.said)
        self.assertEqual(
            [r["payload"] for r in self.table.rows],
            [{"user_id": "u", "workspace_id": "w"}, {"sandbox_id": "s"}],
        )
        self.successResultOf(other.stopService())

    def test_a_failed_write_is_kept_and_written_when_the_table_heals(self) -> None:
        """The table cannot be written: the local subscribers heard the revocation and whoever
        fired it is answered (the cut here is done); the event, and those fired after it, are
        written in order once the table can be written again, and another replica hears
        them."""
        events = Events()
        events.subscribe(self.heard)
        events.subscribe(self.bus)
        there = Heard()
        other = self.make(there, origin="other", switch=Switch())
        other.startService()
        self.start()
        self.table.failing = True
        with capturedLogs() as logged:
            self.successResultOf(Deferred.fromCoroutine(events.user_revoked("u")))
            self.successResultOf(Deferred.fromCoroutine(events.sandbox_deleted("s")))
            self.assertEqual(self.heard.said, [("user_revoked", "u"), ("sandbox_deleted", "s")])
            self.assertEqual(self.bus.unwritten, 2)
            self.clock.pump([0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0])  # (the waits, bounded)
        self.assertEqual(self.table.rows, [])
        self.assertIn(10.0, [e.get("delay") for e in logged])  # (the longest wait)
        self.table.failing = False
        self.clock.advance(10.0)
        self.assertEqual(self.bus.unwritten, 0)
        self.assertEqual([r["kind"] for r in self.table.rows], ["user_revoked", "sandbox_deleted"])
        other.read()
        self.assertEqual(there.said, [("user_revoked", "u"), ("sandbox_deleted", "s")])
        self.successResultOf(other.stopService())

    def test_stop_gives_up_the_unwritten_events(self) -> None:
        """Stopping with events unwritten ends the retries (and says so)."""
        self.start()
        self.table.failing = True
        self.bus.tell_others("sandbox_status_changed", sandbox_id="s")
        self.assertEqual(self.bus.unwritten, 1)
        with capturedLogs() as logged:
            self.stop()
        self.assertTrue(any(e.get("count") == 1 for e in logged))

    def test_catch_up_after_the_connection_drops(self) -> None:
        """Rows written while the listening connection was down (their NOTIFY went nowhere)
        are delivered right after it reconnects, after a bounded, growing wait."""
        self.start()
        self.switch.drop()
        self.switch.up = False
        self.table.insert("other", "user_revoked", {"user_id": "while-down-1"})
        self.table.insert("other", "user_disabled", {"user_id": "while-down-2"})
        self.assertFalse(self.bus.connected)
        self.clock.advance(0.5)  # first retry: refused
        self.assertEqual(self.switch.connects, 2)
        self.clock.advance(0.9)
        self.assertEqual(self.switch.connects, 2)  # (the wait doubled)
        self.switch.up = True
        self.clock.advance(0.1)
        self.assertEqual(self.switch.connects, 3)
        self.assertTrue(self.bus.connected)
        self.assertEqual(
            self.heard.said, [("user_revoked", "while-down-1"), ("user_disabled", "while-down-2")]
        )

    def test_retry_wait_is_bounded(self) -> None:
        """However long PostgreSQL stays away, a retry comes at least every 10 s."""
        self.switch.up = False
        self.start()
        for _ in range(12):
            self.clock.advance(10.0)
        self.assertEqual(self.switch.connects, 13)
        self.switch.up = True
        self.clock.advance(10.0)
        self.assertTrue(self.bus.connected)

    def test_silent_link_is_found_by_the_heartbeat(self) -> None:
        """A connection that stops answering (no close ever arrives) is replaced after one
        failed heartbeat; the heartbeat also reads, so a lost NOTIFY costs one period."""
        self.start()
        self.table.insert("other", "user_revoked", {"user_id": "no-notify"})
        self.clock.advance(5.0)
        self.assertEqual(self.heard.said, [("user_revoked", "no-notify")])
        self.switch.healthy = False
        with capturedLogs() as logged:
            self.clock.advance(5.0)
        self.assertFalse(self.bus.connected)
        self.assertTrue(any("retrying" in str(e.get("log_format")) for e in logged))
        self.switch.healthy = True
        self.clock.advance(0.5)
        self.assertTrue(self.bus.connected)
        self.assertEqual(self.switch.connects, 2)

    def test_late_commit_is_not_skipped(self) -> None:
        """Row 2 commits before row 1: the floor stays below 1, so row 1 is delivered when it
        commits; order among what is delivered follows the commits."""
        self.start()
        first = self.table.insert("other", "user_revoked", {"user_id": "slow"}, hide=True)
        self.table.insert("other", "user_revoked", {"user_id": "quick"})
        self.switch.notify()
        self.assertEqual(self.heard.said, [("user_revoked", "quick")])
        assert self.bus.settled is not None
        self.assertEqual((self.bus.settled.floor, self.bus.settled.waiting), (0, 1))
        self.table.hidden.discard(first)
        self.switch.notify()
        self.assertEqual(self.heard.said, [("user_revoked", "quick"), ("user_revoked", "slow")])
        self.assertEqual((self.bus.settled.floor, self.bus.settled.waiting), (2, 0))

    def test_rolled_back_id_is_given_up_after_the_wait(self) -> None:
        """An id that never commits holds the floor for ``gap_wait`` seconds only."""
        self.start()
        self.table.insert("other", "user_revoked", {"user_id": "gone"}, hide=True)
        self.table.insert("other", "user_revoked", {"user_id": "here"})
        self.switch.notify()
        self.clock.pump([1.0] * 9)
        assert self.bus.settled is not None
        self.assertEqual(self.bus.settled.floor, 0)
        self.clock.advance(1.0)  # (the heartbeat at 10 s reads and settles)
        self.assertEqual(self.bus.settled.floor, 2)

    def test_a_gap_below_many_rows_costs_two_reads(self) -> None:
        """One id not committed yet below more than a batch of rows: one read takes the first
        batch, the next the rest (and the missing id, were it there), and the read stops; the
        rows past the first batch are delivered at once, not after the gap's wait."""
        self.start()
        self.table.insert("other", "user_revoked", {"user_id": "late"}, hide=True)
        for n in range(700):
            self.table.insert("other", "sandbox_status_changed", {"sandbox_id": f"s{n}"})
        reads = self.table.reads
        self.switch.notify()
        self.assertEqual(self.table.reads - reads, 2)
        self.assertEqual(len(self.heard.said), 700)
        assert self.bus.settled is not None
        self.assertEqual((self.bus.settled.floor, self.bus.settled.waiting), (0, 1))
        self.table.hidden.clear()
        self.switch.notify()
        self.assertEqual(self.table.reads - reads, 3)
        self.assertEqual(self.heard.said[-1], ("user_revoked", "late"))
        self.assertEqual((self.bus.settled.floor, self.bus.settled.waiting), (701, 0))

    def away(self, seconds: float) -> None:
        """The listening connection drops and stays away ``seconds``, then comes back."""
        self.switch.drop()
        self.switch.up = False
        self.clock.pump([10.0] * int(seconds // 10))
        self.switch.up = True
        self.clock.advance(10.0)
        self.assertTrue(self.bus.connected)

    def test_a_long_outage_with_rows_pruned_unread_forgets_everything(self) -> None:
        """Away longer than rows are kept, and the first row read is not the next id (the
        ones before it were pruned): everything counts as changed, once; the rows left are
        delivered as usual."""
        forgotten = self.forgotten  # (what the bus was given at construction heard)
        self.start()
        self.table.insert("other", "user_revoked", {"user_id": "seen"})
        self.switch.notify()
        with capturedLogs() as logged:
            self.away(400.0)
            self.assertEqual(forgotten, [])  # (nothing written meanwhile)
            self.away(400.0)
            pruned = self.table.insert("other", "user_revoked", {"user_id": "pruned"})
            self.table.insert("other", "user_disabled", {"user_id": "left"})
            self.table.rows = [r for r in self.table.rows if r["id"] != pruned]
            self.away(400.0)
        self.assertEqual(forgotten, [None])
        self.assertTrue(any("pruned unread" in str(e.get("log_format")) for e in logged))
        self.assertEqual(self.heard.said, [("user_revoked", "seen"), ("user_disabled", "left")])
        self.clock.advance(5.0)  # (the next heartbeat's read is an ordinary one)
        self.assertEqual(forgotten, [None])

    def test_a_long_outage_with_every_row_pruned_forgets_everything(self) -> None:
        """Away that long and every row written meanwhile is gone (the ids were taken): the
        same."""
        forgotten = self.forgotten  # (what the bus was given at construction heard)
        self.start()
        self.switch.drop()
        self.table.insert("other", "user_revoked", {"user_id": "pruned"})
        self.table.insert("other", "user_revoked", {"user_id": "pruned too"})
        self.table.rows = []
        self.away(400.0)
        self.assertEqual(forgotten, [None])
        self.assertEqual(self.heard.said, [])

    def test_a_short_outage_or_a_rolled_back_id_forgets_nothing(self) -> None:
        """A gap after an outage shorter than half the keep is an ordinary gap."""
        forgotten = self.forgotten  # (what the bus was given at construction heard)
        self.start()
        self.table.insert("other", "user_revoked", {"user_id": "rolled-back"}, hide=True)
        self.table.insert("other", "user_revoked", {"user_id": "after"})
        self.away(200.0)
        self.assertEqual(forgotten, [])
        self.assertEqual(self.heard.said, [("user_revoked", "after")])

    def test_notify_during_a_read_reads_again(self) -> None:
        """A NOTIFY while a delivery is under way is not lost: the read goes round again."""
        self.heard.hold = Deferred()
        self.start()
        self.table.insert("other", "user_revoked", {"user_id": "a"})
        self.switch.notify()
        self.table.insert("other", "user_disabled", {"user_id": "b"})
        self.switch.notify()
        self.assertEqual(self.heard.said, [("user_revoked", "a")])
        self.heard.hold.callback(None)
        self.assertEqual(self.heard.said, [("user_revoked", "a"), ("user_disabled", "b")])

    def test_failed_read_is_retried_from_the_same_place(self) -> None:
        """A read that fails settles nothing; the next heartbeat reads the same rows."""
        self.start()
        self.table.insert("other", "user_revoked", {"user_id": "u"})
        self.table.failing = True
        self.switch.notify()
        self.assertEqual(self.heard.said, [])
        self.table.failing = False
        self.clock.advance(5.0)
        self.assertEqual(self.heard.said, [("user_revoked", "u")])

    def test_unknown_kind_is_skipped(self) -> None:
        """A row from a newer replica with an event this one does not know is logged and
        skipped; the ones after it are delivered."""
        self.start()
        self.table.insert("other", "drop_tables", {"x": "y"})
        self.table.insert("other", "user_revoked", {"x": "wrong argument"})
        self.table.insert("other", "user_revoked", {"user_id": "u"})
        with capturedLogs() as logged:
            self.switch.notify()
        self.assertEqual(self.heard.said, [("user_revoked", "u")])
        self.assertEqual(len(logged), 2)

    def test_stop_closes_and_leaves_nothing_behind(self) -> None:
        """Stopping closes the listening connection and cancels every timer."""
        self.start()
        self.stop()
        self.assertEqual(self.switch.closes, 1)
        self.assertFalse(self.bus.connected)

    def test_stop_while_retrying(self) -> None:
        """Stopping between retries cancels the wait."""
        self.switch.up = False
        self.start()
        self.stop()
        self.assertEqual(self.switch.connects, 1)

    def test_tell_others_writes_without_local_delivery(self) -> None:
        """A change dealt with here another way (a tunnel came) is written for the others
        only; a failure to write it is logged, not raised."""
        self.start()
        self.bus.tell_others("sandbox_status_changed", sandbox_id="s")
        self.switch.notify()
        self.assertEqual(self.heard.said, [])
        self.assertEqual(self.table.rows[-1]["kind"], "sandbox_status_changed")
        self.table.failing = True
        with capturedLogs() as logged:
            self.bus.tell_others("sandbox_status_changed", sandbox_id="s")
        self.assertTrue(
            any("telling the other replicas" in str(e.get("log_format")) for e in logged)
        )
        self.flushLoggedErrors(DatabaseUnavailable)


class SettledTests(SynchronousTestCase):
    def test_floor_moves_over_contiguous_ids_only(self) -> None:
        """Ids 1, 2 and 4 seen: the floor is 2 until 3 arrives or its wait is over."""
        clock = Clock()
        settled = Settled(clock, 0, 5.0)
        taken = settled.take([{"id": 4}, {"id": 1}, {"id": 2}])
        self.assertEqual([r["id"] for r in taken], [1, 2, 4])
        self.assertEqual(settled.floor, 2)
        self.assertEqual(settled.take([{"id": 4}]), [])  # (already dealt with)
        clock.advance(5.0)
        settled.advance()
        self.assertEqual(settled.floor, 4)


@define(eq=False)
class Tunnels:
    """The tunnel hub's part that ``DeletedTunnels`` uses: which tunnels are held here."""

    held: set[str] = field(factory=set)
    revoked: list[str] = field(factory=list)
    checked: list[str] = field(factory=list)

    def session(self, sandbox_id: str) -> object | None:
        return object() if sandbox_id in self.held else None

    def revoke(self, sandbox_id: str) -> None:
        self.revoked.append(sandbox_id)
        self.held.discard(sandbox_id)

    async def check_holder(self, sandbox_id: str) -> None:
        self.checked.append(sandbox_id)  # (whether another replica took its row: the hub's)


class DeletedTunnelsTests(SynchronousTestCase):
    def test_a_tunnel_held_here_closes_when_its_sandbox_is_deleted_elsewhere(self) -> None:
        """Only the replica holding the tunnel closes it; other events leave tunnels alone."""
        from cli_server.compose.listeners import DeletedTunnels

        tunnels = Tunnels(held={"here"})
        listener = DeletedTunnels(tunnels)  # type: ignore[arg-type]
        for event in (
            listener.user_revoked("u"),
            listener.user_disabled("u"),
            listener.member_changed("u", "w"),
            listener.sandbox_status_changed("here"),
            listener.sandbox_deleted("elsewhere"),
            listener.sandbox_deleted("here"),
        ):
            self.successResultOf(Deferred.fromCoroutine(event))
        self.assertEqual(tunnels.revoked, ["here"])
        self.assertEqual(tunnels.checked, ["here"])  # (a status change may be a newer tunnel)
