"""Periodic jobs wait for the database: a job is skipped until start-up is done."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from cli_server.compose.periodic import WhenReady
from cli_server.compose.store import Readiness
from tests.unit.deferreds import result_of


class WhenReadyTests(SynchronousTestCase):
    def test_skipped_until_ready(self) -> None:
        """Before the start-up steps are done the job does not run; after, each tick runs it."""
        ran: list[None] = []

        async def job() -> None:
            ran.append(None)

        ready = Readiness()
        tick = WhenReady(ready, job)
        result_of(Deferred.fromCoroutine(tick()))
        self.assertEqual(ran, [])
        ready.ready = True
        result_of(Deferred.fromCoroutine(tick()))
        result_of(Deferred.fromCoroutine(tick()))
        self.assertEqual(ran, [None, None])

    def test_readiness_is_what_the_site_reads(self) -> None:
        """A Readiness answers, when called, whether start-up is done (MainSite calls it)."""
        ready = Readiness()
        self.assertFalse(ready())
        ready.ready = True
        self.assertTrue(ready())
