"""``ActivityRecorder.touch``: at most one write per sandbox per throttle window, on a fake
clock, and a failed write logged rather than raised into the proxy."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from cli_server.db.pool import Database
from cli_server.sandboxes.activity import ActivityRecorder


class RecordingDatabase:
    """Keeps the sandbox ids each UPDATE was sent for; optionally fails every write."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.written: list[str] = []

    async def execute(self, sql: str, args: Any = ()) -> None:
        assert sql.startswith("UPDATE sandboxes SET last_activity_at = now()")
        self.written.append(args[0])
        if self.fail:
            raise RuntimeError("connection refused")


def recorder(db: RecordingDatabase, clock: Clock, throttle: float = 30.0) -> ActivityRecorder:
    return ActivityRecorder(cast(Database, db), clock, throttle)


def test_first_touch_writes() -> None:
    """The first request to a sandbox records its activity at once."""
    db, clock = RecordingDatabase(), Clock()
    recorder(db, clock).touch("s1")
    assert db.written == ["s1"]


def test_touches_within_the_window_write_once() -> None:
    """A burst of proxied requests costs one UPDATE, not one per request."""
    db, clock = RecordingDatabase(), Clock()
    r = recorder(db, clock)
    for _ in range(50):
        r.touch("s1")
        clock.advance(0.5)
    assert db.written == ["s1"]


def test_writes_again_once_the_window_has_passed() -> None:
    """After ``throttle`` seconds the next touch writes again (the idle monitor sees it)."""
    db, clock = RecordingDatabase(), Clock()
    r = recorder(db, clock, throttle=10)
    r.touch("s1")
    clock.advance(9.9)
    r.touch("s1")
    clock.advance(0.1)
    r.touch("s1")
    assert db.written == ["s1", "s1"]


def test_sandboxes_are_throttled_separately() -> None:
    """One busy sandbox does not hide another's activity."""
    db, clock = RecordingDatabase(), Clock()
    r = recorder(db, clock)
    r.touch("s1")
    r.touch("s2")
    r.touch("s1")
    assert db.written == ["s1", "s2"]


def test_prune_keeps_the_throttle_of_recent_sandboxes() -> None:
    """Pruning forgets only what is older than the window: a recent sandbox stays throttled."""
    db, clock = RecordingDatabase(), Clock()
    r = recorder(db, clock, throttle=10)
    r.touch("old")
    clock.advance(8)
    r.touch("recent")
    clock.advance(3)
    r.prune()
    r.touch("recent")
    r.touch("old")
    assert db.written == ["old", "recent", "old"]


def test_many_sandboxes_still_throttled() -> None:
    """Past the memory bound (10,000 sandboxes) the throttle still holds for recent ones."""
    db, clock = RecordingDatabase(), Clock()
    r = recorder(db, clock)
    for n in range(10_001):
        r.touch(f"s{n}")
    r.touch("s10000")
    assert len(db.written) == 10_001


def test_a_failed_write_is_logged_not_raised() -> None:
    """The database being down never breaks the request that touched; a warning names it."""
    db, clock = RecordingDatabase(fail=True), Clock()
    with capturedLogs() as events:
        recorder(db, clock).touch("s1")
    messages = [formatEvent(e) for e in events]
    assert "activity for s1 not recorded: connection refused" in messages
