"""Strict-order shutdown and periodic jobs, with a fake clock."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cli_server.plumbing.services import OrderedMultiService, PeriodicService


class _Child(Service):
    def __init__(self, name: str, log: list[str]) -> None:
        self.setName(name)
        self._log = log
        self.stopping: Deferred[None] = Deferred()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._log.append(f"stop {self.name}")
        return self.stopping


class OrderedMultiServiceTests(SynchronousTestCase):
    def test_stops_one_at_a_time_in_reverse(self) -> None:
        """The next child stops only after the previous one finished stopping."""
        log: list[str] = []
        clock = Clock()
        root = OrderedMultiService(clock)
        a, b = _Child("a", log), _Child("b", log)
        a.setServiceParent(root)
        b.setServiceParent(root)
        root.startService()
        done = root.stopService()
        self.assertEqual(log, ["stop b"])
        b.stopping.callback(None)
        self.assertEqual(log, ["stop b", "stop a"])
        self.assertNoResult(done)
        a.stopping.callback(None)
        self.successResultOf(done)

    def test_hung_child_times_out(self) -> None:
        """A child that never finishes stopping is logged and skipped after the timeout."""
        log: list[str] = []
        clock = Clock()
        root = OrderedMultiService(clock, step_timeout=5)
        a, b = _Child("a", log), _Child("b", log)
        a.setServiceParent(root)
        b.setServiceParent(root)
        root.startService()
        done = root.stopService()
        clock.advance(5)
        self.assertEqual(log, ["stop b", "stop a"])
        a.stopping.callback(None)
        self.successResultOf(done)
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        self.assertEqual(clock.getDelayedCalls(), [])


class PeriodicServiceTests(SynchronousTestCase):
    def test_runs_each_interval_and_survives_errors(self) -> None:
        """No run at start; one per interval; a failing run is logged and the next still runs."""
        clock = Clock()
        calls: list[int] = []

        async def job() -> None:
            calls.append(len(calls))
            if len(calls) == 2:
                raise RuntimeError("boom")

        service = PeriodicService(clock, 10.0, job, "test job")
        service.startService()
        self.assertEqual(calls, [])
        clock.advance(10)
        clock.advance(10)
        clock.advance(10)
        self.assertEqual(calls, [0, 1, 2])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.successResultOf(service.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_waits_for_run_in_progress(self) -> None:
        """Stopping while a run is in flight waits for that run."""
        clock = Clock()
        gate: Deferred[None] = Deferred()

        async def job() -> None:
            await gate

        service = PeriodicService(clock, 10.0, job, "slow job")
        service.startService()
        clock.advance(10)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        gate.callback(None)
        self.successResultOf(stopped)
