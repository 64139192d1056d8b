"""Single sign-on across replicas: a sign-in begun on one server finishes on another that shares
its database, with the real OpenID provider (npm oidc-provider on loopback); and the pending
sign-ins' table itself (single use, state, caps, expiry) on the real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import Clock

from cli_server.db.pool import Database
from cli_server.sso.flow import Pending, PendingSignIns

from .conftest import Running, _reactor, start_server, stop_server
from .oidc_provider import Browser, OidcProvider, oidc_provider
from .test_sso_oidc import oidc_config

pytestmark = pytest.mark.integration
__all__ = ["oidc_provider"]  # (the fixture, imported for this module)


@pytest_twisted.async_yield_fixture
async def two(db_url: str, oidc_provider: OidcProvider) -> AsyncIterator[tuple[Running, Running]]:
    """Two servers on one database, as two replicas behind a load balancer."""
    config = oidc_config(db_url, oidc_provider.issuer)
    first = await start_server(db_url, config=config)
    second = await start_server(db_url, config=config)
    yield first, second
    await stop_server(second)
    await stop_server(first)


def on(replica: Running, url: str) -> str:
    """``url`` (on any of the two) sent to ``replica`` instead, as a load balancer might."""
    path = url.split("/api/", 1)[1]
    return f"{replica.base}/api/{path}"


@pytest_twisted.ensureDeferred
async def test_a_sign_in_begun_on_one_replica_finishes_on_another(
    two: tuple[Running, Running], oidc_provider: OidcProvider
) -> None:
    a, b = two
    oidc_provider.account("ann-sub", email="ann@example.com", email_verified=True)
    # (the cookie jar ignores ports: both servers are 127.0.0.1, one browser for both)
    browser = Browser(a.reactor, a.base)
    callback = await browser.at_provider(await browser.start("oidc", "?return_to=/w"), "ann-sub")
    flow = next(c for c in browser.jar if c.name == "cli_sso")
    # The table holds a hash of the cookie, never the cookie.
    rows = await a.db.query("SELECT cookie_hash FROM pending_sign_ins")
    assert rows == [{"cookie_hash": hashlib.sha256(flow.value.encode()).hexdigest()}]

    # A made-up state, at B: refused, and the sign-in stays usable with the right one.
    tampered = callback.replace("state=", "state=x")
    assert (await browser.get(on(b, tampered)))[1] == "/?sso_error=bad_state"
    browser.jar.set_cookie(flow)  # (the refusal cleared the browser's flow cookie)
    code, location, _ = await browser.get(on(b, callback))
    assert (code, location) == (303, "/w")
    for replica in (a, b):
        code, _, body = await browser.get(f"{replica.base}/api/auth/me")
        assert code == 200 and json.loads(body)["email"] == "ann@example.com"
    assert await a.db.query("SELECT 1 FROM pending_sign_ins") == []

    # Replayed on A, cookie and all: the sign-in is finished on every replica.
    browser.jar.set_cookie(flow)
    assert (await browser.get(on(a, callback)))[1] == "/?sso_error=bad_state"

    # And the other way round: begun on B, finished on A.
    other = Browser(b.reactor, b.base)
    callback = await other.at_provider(await other.start(), "ann-sub")
    assert (await other.get(on(a, callback)))[1] == "/"
    assert other.cookie("cli_session")


@pytest_twisted.async_yield_fixture
async def table(db_url: str) -> AsyncIterator[tuple[Database, Clock]]:
    """The migrated database and a clock of our own (expiry without waiting ten minutes)."""
    db = Database(_reactor(), db_url)
    clock = Clock()
    clock.advance(time.time())
    yield db, clock
    db.close()


def begun(started: tuple[str, Pending] | None) -> tuple[str, Pending]:
    assert started is not None
    return started


async def count(db: Database) -> int:
    return int((await db.query("SELECT count(*) AS n FROM pending_sign_ins"))[0]["n"])


@pytest_twisted.ensureDeferred
async def test_pending_sign_ins_are_single_use_and_bound(table: tuple[Database, Clock]) -> None:
    db, clock = table
    here, there = PendingSignIns(db, clock), PendingSignIns(db, clock)  # (two replicas)
    cookie, p = begun(await here.begin("oidc", "/x", None, "192.0.2.1"))
    assert await there.finish(cookie, "oidc", p.state + "x") is None  # wrong state: kept
    assert await there.finish(cookie, "github", p.state) is None  # another provider's
    assert await there.finish(None, "oidc", p.state) is None
    assert await there.finish(cookie, "oidc", None) is None
    assert await there.finish(cookie, "oidc", p.state) == p
    assert await here.finish(cookie, "oidc", p.state) is None  # replayed
    other_cookie, _ = begun(await here.begin("oidc", "/", "user-1"))
    cookie, p = begun(await here.begin("oidc", "/", None))
    assert await there.finish(other_cookie, "oidc", p.state) is None  # swapped cookie
    await there.cancel(cookie)
    assert await here.finish(cookie, "oidc", p.state) is None  # cancelled
    # Two callbacks with one cookie at once: exactly one completes.
    cookie, p = begun(await here.begin("oidc", "/", None))
    both = await DeferredList(
        [ensureDeferred(r.finish(cookie, "oidc", p.state)) for r in (here, there)],
        consumeErrors=True,
    )
    results = [result for _, result in both]
    assert results.count(None) == 1 and p in results


@pytest_twisted.ensureDeferred
async def test_caps_hold_across_replicas_and_none_under_way_is_evicted(
    table: tuple[Database, Clock],
) -> None:
    db, clock = table
    here = PendingSignIns(db, clock, most=6, per_address=2)
    there = PendingSignIns(db, clock, most=6, per_address=2)
    first, p = begun(await here.begin("oidc", "/", None, "198.51.100.7"))
    # A flood from one address, through both replicas at once: it gets its share only.
    flood = await DeferredList(
        [ensureDeferred(r.begin("oidc", "/", None, "203.0.113.9")) for r in [here, there] * 10],
        consumeErrors=True,
    )
    assert [ok for ok, _ in flood] == [True] * 20
    assert sum(1 for _, started in flood if started is not None) == 2
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert await there.begin("oidc", "/", None, address) is not None
    assert await count(db) == 6
    assert await here.begin("oidc", "/", None, "192.0.2.9") is None  # the whole table
    assert await there.finish(first, "oidc", p.state) == p  # the first one still completes
    assert await there.begin("oidc", "/", None, "192.0.2.9") is not None


@pytest_twisted.ensureDeferred
async def test_expired_sign_ins_are_refused_and_pruned(table: tuple[Database, Clock]) -> None:
    db, clock = table
    pending = PendingSignIns(db, clock, most=3, per_address=3)
    cookie, p = begun(await pending.begin("oidc", "/", None, "192.0.2.1"))
    begun(await pending.begin("oidc", "/", None, "192.0.2.1"))
    clock.advance(pending.lifetime)
    assert await pending.finish(cookie, "oidc", p.state) is None  # expired, and taken out
    assert await count(db) == 1
    await pending.prune()
    assert await count(db) == 0
    # Expired ones leave room: a full table of them does not refuse a new sign-in.
    for _ in range(3):
        begun(await pending.begin("oidc", "/", None, "192.0.2.1"))
    clock.advance(pending.lifetime)
    assert await pending.begin("oidc", "/", None, "192.0.2.1") is not None
    assert await count(db) == 1
