"""The sandbox manager's own answers that need no backend: counts by status."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred

from cli_server.db.pool import Database
from cli_server.domain.workspaces import Workspaces
from cli_server.sandboxes.manager import SandboxManager
from cli_server.sandboxes.model import Status
from cli_server.testing import FakeBackend
from tests.unit.deferreds import result_of


class StatusCounts:
    """A FAKE database answering the status count query with fixed rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.sent: list[str] = []

    async def query(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        self.sent.append(sql)
        return self.rows


def test_count_by_status_names_every_status_even_absent_ones() -> None:
    """Statuses the database has no rows for count 0, so a gauge set from it never sticks at
    an old value."""
    db = StatusCounts([{"status": Status.RUNNING.value, "n": 4}])
    manager = SandboxManager(
        cast(Database, db), FakeBackend(), cast(Workspaces, None), max_sandboxes=10
    )
    counts = result_of(Deferred.fromCoroutine(manager.count_by_status()))
    assert counts == {s.value: 4 if s is Status.RUNNING else 0 for s in Status}
    db.rows = []
    counts = result_of(Deferred.fromCoroutine(manager.count_by_status()))
    assert set(counts.values()) == {0} and len(db.sent) == 2
