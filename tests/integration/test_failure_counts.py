"""``Failures`` (PostgreSQL) gives the answers the in-memory ``MemoryFailures`` gives: the same
script of failures, clears, logins and prunes is played on both and read back from both."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from cli_server.auth.ratelimit import Count, Failures, FailureStore
from cli_server.db.pool import Database
from cli_server.testing import MemoryFailures

from .conftest import _reactor


async def play(store: FailureStore) -> list[Any]:
    """A script over every operation; what it reads back along the way."""
    seen: list[Any] = []
    for t in range(7):  # a window of 3: only the latest 3 times stay
        await store.record("registration", "10.0.0.1", 100.0 + t, 60.0, 3)
    seen.append(await store.get("registration", "10.0.0.1"))
    for t in (0.0, 10.0, 200.0):  # a backoff: no times kept; a count forgotten after 60 s
        await store.record("login-pair", "alice\0 10.0.0.1", 1000.0 + t, 60.0, 0)
    seen.append(await store.get("login-pair", "alice\0 10.0.0.1"))
    seen.append(await store.get("login-pair", "alice\\0 10.0.0.1"))  # (another key)
    await store.record("login-account", "bob", 5.0, 60.0, 0)
    await store.clear("login-account", "bob")
    seen.append(await store.get("login-account", "bob"))
    for n, address in enumerate(["a", "b", "c", "b", "d"]):  # at most 2 per account
        await store.saw("carol", address, 50.0 + n, 2)
    seen.append([await store.seen_at("carol", a) for a in "abcd"])
    await store.record("login-address", "old", 10.0, 60.0, 0)
    await store.record("login-address", "new", 90.0, 60.0, 0)
    await store.prune("login-address", 50.0)
    seen.append([await store.get("login-address", k) for k in ("old", "new")])
    await store.prune_addresses(53.5)
    seen.append([await store.seen_at("carol", a) for a in "abcd"])
    for t in (300.0, 301.0, 302.0):  # attempts counted in advance, then given back
        seen.append(await store.record("login-account", "erin", t, 60.0, 4))
    await store.release("login-account", "erin", 302.0)  # the newest: the last goes back
    await store.release("login-account", "erin", 300.0)  # an older one: the last stays
    await store.release("login-account", "erin", 299.0)  # a time not kept: nothing
    seen.append(await store.get("login-account", "erin"))
    return seen


@pytest_twisted.ensureDeferred
async def test_postgres_counts_as_memory_does(db_url: str) -> None:
    """Windows keep the latest times, counts start again after the memory, keys with a NUL
    or a backslash stay apart, a login keeps an account's latest addresses only, prunes
    drop what is old, a failure given back is un-counted: the same in PostgreSQL as in
    memory."""
    db = Database(_reactor(), db_url)  # (a migrated database of its own)
    try:
        expected = await play(MemoryFailures())
        assert await play(Failures(db)) == expected
        assert expected[0].stamps == (104.0, 105.0, 106.0) and expected[0].count == 7
        assert (expected[1].count, expected[1].stamps) == (1, ())
        assert expected[2] is None and expected[3] is None
        assert expected[4] == [None, 53.0, None, 54.0]
        assert expected[5][0] is None and expected[5][1] is not None
        assert expected[6] == [None, None, None, 54.0]
        assert expected[9] == Count(3, 302.0, (300.0, 301.0, 302.0))
        assert expected[10] == Count(1, 301.0, (301.0,))
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_failures_all_count(db_url: str) -> None:
    """Forty failures at once (as from several replicas): the count is forty."""
    db = Database(_reactor(), db_url, size=8)
    try:
        store = Failures(db)
        await DeferredList(
            [
                Deferred.fromCoroutine(store.record("login-account", "dave", 1.0 + n, 3600.0, 5))
                for n in range(40)
            ],
            fireOnOneErrback=True,
        )
        found = await store.get("login-account", "dave")
        assert found is not None and found.count == 40 and len(found.stamps) == 5
    finally:
        db.close()
