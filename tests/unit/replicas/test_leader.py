"""One leader among replicas: gained, lost with its connection, never two at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from cli_server.replicas.leader import LEADER_LOCK_KEY, Leadership
from cli_server.sandboxes.backend import Observed, State
from cli_server.sandboxes.model import Status
from cli_server.sandboxes.monitor import IdleMonitor, Reconciler


class _Gone(Exception):
    pass


class _Server:
    """PostgreSQL's side of session advisory locks: one holder, freed when its session ends."""

    def __init__(self) -> None:
        self.holder: _Session | None = None
        self.sessions: list[_Session] = []
        self.refuse_connections = False

    def connect(self) -> Deferred[Any]:
        if self.refuse_connections:
            return fail(_Gone("connection refused"))
        session = _Session(self)
        self.sessions.append(session)
        return succeed(session)

    def end(self, session: _Session) -> None:
        if self.holder is session:
            self.holder = None


class _Session:
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.broken = False
        self.closed = False
        self.hang = False  # queries never answer (a network that went silent)
        self.cancels: list[Deferred[Any]] = []  # unanswered queries someone tried to cancel
        self.queries: list[str] = []
        self.waiting: list[Deferred[Any]] = []

    def _cancel(self, d: Deferred[Any]) -> None:
        self.cancels.append(d)
        raise _Gone("cancel in progress")

    def runQuery(self, sql: str, args: Sequence[Any] = ()) -> Deferred[Any]:
        self.queries.append(sql)
        if self.broken or self.closed:
            return fail(_Gone("connection already closed"))
        if self.hang:
            # like txpostgres: cancelling asks the server (which is silent) and raises,
            # leaving the query waiting; only closing the connection ends it
            waiting: Deferred[Any] = Deferred(self._cancel)
            self.waiting.append(waiting)
            return waiting
        if "pg_try_advisory_lock" in sql:
            assert args == (LEADER_LOCK_KEY,)
            if self.server.holder is None:
                self.server.holder = self
            return succeed([{"locked": self.server.holder is self}])
        return succeed([{"?column?": 1}])

    def usable(self) -> bool:
        return not (self.broken or self.closed)

    def close(self) -> None:
        self.closed = True
        self.server.end(self)
        for waiting in self.waiting:
            if not waiting.called:
                waiting.errback(_Gone("connection closed"))

    def kill(self) -> None:
        """The server ended this session (or the link broke): the lock is free."""
        self.broken = True
        self.server.end(self)


def _replica(server: _Server, clock: Clock, name: str) -> Leadership:
    async def connect() -> Any:
        return await server.connect()

    leader = Leadership(clock, connect, name, timeout=5.0)
    leader.startService()
    return leader


class LeadershipTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = _Server()

    def attempt(self, leader: Leadership) -> None:
        self.successResultOf(Deferred.fromCoroutine(leader.attempt()))

    def test_gains_and_runs_the_work_at_once(self) -> None:
        """The first try takes the lock; the gated work runs on gaining and on its ticks."""
        leader = _replica(self.server, self.clock, "a")
        ran: list[str] = []

        async def sweep() -> None:
            ran.append("sweep")

        gated = leader.when_leading(sweep)
        changes: list[bool] = []
        leader.on_change.append(changes.append)
        self.successResultOf(Deferred.fromCoroutine(gated()))
        self.assertEqual(ran, [])  # not leading yet: nothing
        self.attempt(leader)
        self.assertTrue(leader.leading)
        self.assertEqual(ran, ["sweep"])
        self.assertEqual(changes, [True])
        self.successResultOf(Deferred.fromCoroutine(gated()))
        self.assertEqual(ran, ["sweep", "sweep"])
        self.assertIs(self.server.holder, self.server.sessions[0])
        self.attempt(leader)  # a leader's round checks its connection, takes nothing twice
        self.assertEqual(self.server.sessions[0].queries[-1], "SELECT 1")
        self.assertEqual(len(self.server.sessions), 1)

    def test_never_two_leaders(self) -> None:
        """Three replicas trying every period: exactly one leads, round after round."""
        replicas = [_replica(self.server, self.clock, n) for n in "abc"]
        for _ in range(5):
            for r in replicas:
                self.attempt(r)
            self.assertEqual([r.leading for r in replicas], [True, False, False])

    def test_loses_at_once_when_its_connection_drops(self) -> None:
        """The lock's connection breaks: no gated work starts any more, before any new round,
        and another replica takes the lock at its next try."""
        a, b = _replica(self.server, self.clock, "a"), _replica(self.server, self.clock, "b")
        ran: list[str] = []

        async def sweep() -> None:
            ran.append("a")

        gated = a.when_leading(sweep, at_gain=False)
        self.attempt(a)
        self.attempt(b)
        self.assertEqual((a.leading, b.leading), (True, False))
        self.server.sessions[0].kill()
        self.successResultOf(Deferred.fromCoroutine(gated()))
        self.assertEqual(ran, [])
        self.assertFalse(a.leading)
        self.attempt(b)
        self.assertTrue(b.leading)
        self.attempt(a)  # a reconnects, and finds the lock taken
        self.assertEqual((a.leading, b.leading), (False, True))

    def test_a_silent_connection_costs_the_lead(self) -> None:
        """The leader's check does not answer within the timeout: it stops leading and closes
        the connection (which frees the lock), so the other replica takes over."""
        a, b = _replica(self.server, self.clock, "a"), _replica(self.server, self.clock, "b")
        self.attempt(a)
        self.server.sessions[0].hang = True
        round_ = Deferred.fromCoroutine(a.attempt())
        self.assertTrue(a.leading)
        self.assertNoResult(round_)
        self.clock.advance(5.0)
        self.successResultOf(round_)
        self.assertFalse(a.leading)
        self.assertTrue(self.server.sessions[0].closed)
        self.assertEqual(self.server.sessions[0].cancels, [])  # (closed, never cancelled)
        self.attempt(b)
        self.assertTrue(b.leading)

    def test_no_database_no_leader(self) -> None:
        """Connecting fails: not leading, and the next round tries again."""
        self.server.refuse_connections = True
        a = _replica(self.server, self.clock, "a")
        self.attempt(a)
        self.assertFalse(a.leading)
        self.server.refuse_connections = False
        self.attempt(a)
        self.assertTrue(a.leading)

    def test_stopping_lets_go(self) -> None:
        a, b = _replica(self.server, self.clock, "a"), _replica(self.server, self.clock, "b")
        self.attempt(a)
        a.stopService()
        self.assertFalse(a.leading)
        self.assertIsNone(self.server.holder)
        self.attempt(a)  # (stopped: no more rounds)
        self.attempt(b)
        self.assertTrue(b.leading)

    def test_one_run_of_a_job_at_a_time(self) -> None:
        """A tick while the same job still runs (say, from the gain) is skipped."""
        a = _replica(self.server, self.clock, "a")
        pending: list[Deferred[None]] = []

        async def sweep() -> None:
            d: Deferred[None] = Deferred()
            pending.append(d)
            await d

        gated = a.when_leading(sweep)
        gaining = Deferred.fromCoroutine(a.attempt())
        self.assertEqual(len(pending), 1)
        self.successResultOf(Deferred.fromCoroutine(gated()))  # skipped, not queued
        self.assertEqual(len(pending), 1)
        pending[0].callback(None)
        self.successResultOf(gaining)
        d = Deferred.fromCoroutine(gated())
        self.assertEqual(len(pending), 2)
        pending[1].callback(None)
        self.successResultOf(d)

    def test_a_failing_job_keeps_the_lead(self) -> None:
        a = _replica(self.server, self.clock, "a")

        async def sweep() -> None:
            raise RuntimeError("backend down")

        a.when_leading(sweep)
        self.attempt(a)
        self.assertTrue(a.leading)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Sandboxes:
    """The sandboxes table, the manager and the backend as the idle monitor and the
    reconciler see them; ``act`` is called on each action (the test cuts the lead there)."""

    host = None
    replica = None
    name = "fake"

    def __init__(self, act: Callable[[], None], elsewhere: frozenset[str] = frozenset()) -> None:
        self.act = act
        self.elsewhere = elsewhere  # rows another live replica is working on
        self.done: list[tuple[str, str]] = []

    async def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        rows = [
            {"id": f"s{n}", "opencode_password": "secret", "status": "creating"}
            | {"elsewhere": f"s{n}" in self.elsewhere}
            for n in range(3)
        ]
        return rows

    def busy(self, sandbox_id: str) -> bool:
        return False

    async def describe(self, sandbox_id: str) -> Observed:
        return Observed(State.STOPPED)

    async def stop(self, sandbox_id: str) -> None:
        pass

    async def list_owned(self) -> list[str]:
        return ["orphan1", "orphan2"]

    async def delete(self, sandbox_id: str) -> None:
        self.done.append(("delete", sandbox_id))
        self.act()

    async def pause_idle(self, sandbox_id: str) -> bool:
        self.done.append(("pause", sandbox_id))
        self.act()
        return True

    async def force(self, sandbox_id: str, was: Status, to: Status, error: str | None) -> bool:
        self.done.append(("force", sandbox_id))
        self.act()
        return True


class DeposedLeaderTests(SynchronousTestCase):
    """A leader that loses its lock's connection mid-sweep stops within one sandbox."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = _Server()
        self.leader = _replica(self.server, self.clock, "a")
        self.successResultOf(Deferred.fromCoroutine(self.leader.attempt()))
        self.assertTrue(self.leader.leading)
        self.sandboxes = _Sandboxes(self.lose)

    def lose(self) -> None:
        self.server.sessions[-1].broken = True  # (the lock's connection is gone)

    def test_the_idle_monitor_stops_after_the_sandbox_in_hand(self) -> None:
        """Three idle sandboxes; the lead is lost while pausing the first: the others stay."""
        s = self.sandboxes
        monitor = IdleMonitor(s, s, s, s, s, 60.0, self.clock, lambda: self.leader.leading)
        with capturedLogs():
            self.successResultOf(Deferred.fromCoroutine(monitor.sweep()))
        self.assertEqual(s.done, [("pause", "s0")])
        self.assertFalse(self.leader.leading)

    def test_the_reconciler_stops_after_the_sandbox_in_hand(self) -> None:
        """Three rows to repair and two orphans; the lead is lost on the first repair:
        nothing else is repaired and no orphan is removed."""
        s = self.sandboxes
        reconciler = Reconciler(s, s, s, lambda: self.leader.leading)
        with capturedLogs():
            self.successResultOf(Deferred.fromCoroutine(reconciler.sweep()))
        self.assertEqual(s.done, [("force", "s0")])

    def test_another_replicas_work_is_left_alone(self) -> None:
        """A row the query marks as worked on by another live replica is not repaired, and
        its backend object is not taken for an orphan."""
        s = _Sandboxes(lambda: None, elsewhere=frozenset({"s1"}))
        s.list_owned = self._owned  # type: ignore[method-assign]
        reconciler = Reconciler(s, s, s, lambda: self.leader.leading)
        with capturedLogs():
            self.successResultOf(Deferred.fromCoroutine(reconciler.sweep()))
        self.assertEqual(s.done, [("force", "s0"), ("force", "s2"), ("delete", "orphan1")])

    async def _owned(self) -> list[str]:
        return ["s1", "orphan1"]

    def test_a_leader_sweeps_everything(self) -> None:
        """Still leading: every sandbox is dealt with (the check stops nothing else)."""
        s = _Sandboxes(lambda: None)
        reconciler = Reconciler(s, s, s, lambda: self.leader.leading)
        with capturedLogs():
            self.successResultOf(Deferred.fromCoroutine(reconciler.sweep()))
        self.assertEqual(
            s.done,
            [("force", "s0"), ("force", "s1"), ("force", "s2")]
            + [("delete", "orphan1"), ("delete", "orphan2")],
        )
