"""The embedded PostgreSQL's supervisor: restarts a dead postmaster, with backoff (fake clock)."""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from cli_server.db.embedded import EmbeddedPostgresError, Supervisor
from tests.unit.deferreds import result_of


@define
class FakePostgres:
    """FAKE: a postmaster that is alive or not, and restarts that fail ``failures`` times."""

    wanted: bool = True
    alive: bool = True
    failures: int = 0
    attempts: list[float] = field(factory=list)
    clock: Clock = field(factory=Clock)

    def postmaster(self) -> int | None:
        return 4242 if self.alive else None

    async def restart(self) -> None:
        self.attempts.append(self.clock.seconds())
        if self.failures:
            self.failures -= 1
            raise EmbeddedPostgresError("lock file already exists")
        self.alive = True


def _check(supervisor: Supervisor) -> None:
    result_of(Deferred.fromCoroutine(supervisor.check()))


def test_a_live_postmaster_is_left_alone() -> None:
    """Nothing happens while the postmaster runs, or once the server stopped wanting it."""
    pg = FakePostgres()
    supervisor = Supervisor(pg, pg.clock)
    _check(supervisor)
    pg.alive, pg.wanted = False, False  # stopped on purpose (server shutdown)
    _check(supervisor)
    assert pg.attempts == [] and supervisor.restarts == 0


def test_a_dead_postmaster_is_restarted_with_backoff() -> None:
    """Failed restarts are retried after 1, 2, 4, 8 ... s, capped; success resets the delay."""
    pg = FakePostgres(alive=False, failures=7)
    supervisor = Supervisor(pg, pg.clock, min_delay=1.0, max_delay=30.0)
    for _ in range(200):  # the supervisor is asked every second
        _check(supervisor)
        pg.clock.advance(1.0)
    assert pg.alive and supervisor.restarts == 1
    gaps = [b - a for a, b in zip(pg.attempts, pg.attempts[1:], strict=False)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]

    pg.alive, pg.failures = False, 1  # dies again later: the backoff starts over
    start = len(pg.attempts)
    for _ in range(3):
        _check(supervisor)
        pg.clock.advance(1.0)
    assert pg.alive and supervisor.restarts == 2
    assert [b - a for a, b in zip(pg.attempts[start:], pg.attempts[start + 1 :], strict=False)] == [
        1.0
    ]
