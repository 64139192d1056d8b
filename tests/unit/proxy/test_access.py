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


def test_a_session_serves_only_the_origin_it_was_made_on() -> None:
    """A session of the preview of port 5173 is no session on opencode's address or on port
    8000's preview, cached or read; and opencode's is none on a preview."""
    db, clock = FakeDatabase(), Clock()
    access = SandboxAccess(db, clock, 3600.0)  # type: ignore[arg-type]
    first = access.lookup("tok", SID, 5173)
    db.queries[0].callback([{**ROW, "port": 5173}])
    assert first.result is not None and first.result.port == 5173
    assert access.cached("tok", SID, 5173) is not None
    assert access.cached("tok", SID) is None and access.cached("tok", SID, 8000) is None
    assert access.lookup("tok", SID).result is None  # (from the cache, no query)
    assert access.lookup("tok", SID, 8000).result is None and len(db.queries) == 1
    opencode = access.lookup("other", SID, 5173)
    db.queries[1].callback([{**ROW, "port": None}])
    assert opencode.result is None


def test_a_ticket_opens_a_session_only_on_its_own_port() -> None:
    """A ticket minted for port 8000 redeemed on 5173's origin (or opencode's) opens nothing,
    and is burnt all the same."""
    db, clock = FakeDatabase(), Clock()
    access = SandboxAccess(db, clock, 3600.0)  # type: ignore[arg-type]
    for port in (5173, None):
        done = Deferred.fromCoroutine(access.redeem("ticket", SID, port))
        db.queries[-1].callback([{"user_id": "u", "sandbox_id": SID, "port": 8000, "fresh": True}])
        assert done.result is None
    assert len(db.queries) == 2  # (no session was inserted)
    right = Deferred.fromCoroutine(access.redeem("ticket", SID, 8000))
    db.queries[-1].callback([{"user_id": "u", "sandbox_id": SID, "port": 8000, "fresh": True}])
    db.queries[-1].callback([{"user_id": "u"}])
    assert isinstance(right.result, str)
