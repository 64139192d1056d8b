"""The sandbox-session cache's early re-read (``SandboxAccess.refresh``), over a FAKE
database whose queries wait for the test (the real one is in the integration tests)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from cli_server.proxy.access import SandboxAccess

SID = "0b6f1a3e-1111-4222-8333-444455556666"
ROW = {
    "user_id": "u",
    "sandbox_id": SID,
    "workspace_id": "w",
    "role": "developer",
    "status": "running",
    "is_local": False,
    "opencode_password": "pw",
}


class FakeDatabase:
    def __init__(self) -> None:
        self.queries: list[Deferred[list[dict[str, Any]]]] = []

    def query(self, sql: str, args: Any = None) -> Deferred[list[dict[str, Any]]]:
        self.queries.append(Deferred())
        return self.queries[-1]


def test_a_session_is_read_again_once_however_many_ask_and_then_cached_afresh() -> None:
    db, clock = FakeDatabase(), Clock()
    access = SandboxAccess(db, clock, 3600.0)  # type: ignore[arg-type]
    first = access.lookup("tok", SID)
    db.queries[0].callback([ROW])
    assert first.result.fetched_at == 0.0
    clock.advance(1.5)
    waiting = [access.refresh("tok", SID) for _ in range(3)]
    assert len(db.queries) == 2 and not any(w.called for w in waiting)  # one read for all
    db.queries[1].callback([ROW])
    assert all(w.called for w in waiting)
    cached = access.cached("tok", SID)
    assert cached is not None and cached.fetched_at == 1.5  # good until 3.5 now
    clock.advance(1.0)
    assert access.cached("tok", SID) is not None
    failed = access.refresh("tok", SID)
    db.queries[2].errback(RuntimeError("the database is down"))
    assert failed.called  # (the next lookup asks again)


def test_a_read_that_overlaps_a_revocation_is_not_cached() -> None:
    db, clock = FakeDatabase(), Clock()
    access = SandboxAccess(db, clock, 3600.0)  # type: ignore[arg-type]
    refreshed = access.refresh("tok", SID)
    access.forget(user_id="u")  # (as a revocation does, while the read is under way)
    db.queries[0].callback([ROW])
    assert refreshed.called and access.cached("tok", SID) is None
