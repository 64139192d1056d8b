"""Issue 16: a role taken away while a request is in flight counts as never held.

The attack: a maintainer (or owner) who sees they are being removed fires requests at once,
hoping those that passed their role check before the removal committed still make their change
afterwards (an invitation their puppet accepts, a promotion to owner). Each change must check
the caller's role again under the workspace lock, in its own transaction.

The deterministic tests hold one request right after its early role check (``Hold``), make the
removal or demotion commit, then let the request go on: exactly the interleaving a lucky race
gets. The parallel test races real HTTP requests without any help. Against real PostgreSQL,
with a FAKE sandbox backend (membership does not depend on processes).
"""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from cli_server.domain.workspaces import Workspaces

from .conftest import Running, server_config, start_server, stop_server
from .helpers import Api, Reply
from .test_invitations import people


@attrs.define
class Hold:
    """One user's next call of a ``Workspaces`` check, held after it passed until released."""

    reached: Deferred[None] = attrs.field(factory=Deferred)
    release: Deferred[None] = attrs.field(factory=Deferred)


def hold_after(monkeypatch: pytest.MonkeyPatch, method: str, user_id: str) -> Hold:
    """Make ``Workspaces.<method>`` (``require``, ``role_of``) stop, once, for ``user_id``
    after answering: the request is authorized and has not made its change yet."""
    hold = Hold()
    real = getattr(Workspaces, method)

    async def held(self: Workspaces, workspace_id: str, uid: str, *rest: Any) -> Any:
        answer = await real(self, workspace_id, uid, *rest)
        if uid == user_id and not hold.reached.called:
            hold.reached.callback(None)
            await hold.release
        return answer

    monkeypatch.setattr(Workspaces, method, held)
    return hold


async def interleave(app: Running, hold: Hold, held: Deferred[Reply], meanwhile: Any) -> Reply:
    """Wait until the held request passed its check, run ``meanwhile`` (which commits), then
    let the held request finish and return its answer."""
    hold.reached.addTimeout(30, app.reactor)
    await hold.reached
    await meanwhile()
    hold.release.callback(None)
    return await held


async def workspace(owner: Api) -> str:
    made = await owner.call("POST", "/api/workspaces", {"name": f"w {uuid.uuid4()}"})
    assert made.code == 201, made
    return str(made.body["id"])


def uid(client: Api) -> str:
    assert client.user is not None
    return str(client.user["id"])


async def role(app: Running, wid: str, user: Api) -> str | None:
    rows = await app.db.query(
        "SELECT role FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
        (wid, uid(user)),
    )
    return str(rows[0]["role"]) if rows else None


async def invitations(app: Running, wid: str) -> list[Any]:
    return await app.db.query("SELECT * FROM workspace_invitations WHERE workspace_id = %s", (wid,))


@pytest_twisted.ensureDeferred
async def test_removed_maintainer_cannot_invite_in_flight(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removed after the check: the invite answers as to a stranger and leaves nothing for
    the puppet to accept."""
    p = await people(app, "owner", "mal", "puppet")
    owner, mal, puppet = p["owner"], p["mal"], p["puppet"]
    wid = await workspace(owner)
    await owner.add_member(wid, mal, "maintainer")
    hold = hold_after(monkeypatch, "require", uid(mal))
    inviting = mal.call(
        "POST", f"/api/workspaces/{wid}/members", {"username": "puppet", "role": "maintainer"}
    )

    async def remove() -> None:
        removed = await owner.call("DELETE", f"/api/workspaces/{wid}/members/{uid(mal)}")
        assert removed.code == 204, removed

    invited = await interleave(app, hold, inviting, remove)
    assert (invited.code, invited.error_code) == (404, "workspace_not_found"), invited
    assert await invitations(app, wid) == []
    assert (await puppet.call("GET", "/api/invitations")).body == []
    assert await role(app, wid, puppet) is None


@pytest_twisted.ensureDeferred
async def test_demoted_owner_cannot_invite_an_owner_in_flight(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Demoted to maintainer after the check: an owner invitation is refused with the 403 a
    maintainer gets, and none is made."""
    p = await people(app, "alice", "bob", "puppet")
    alice, bob = p["alice"], p["bob"]
    wid = await workspace(alice)
    await alice.add_member(wid, bob, "owner")
    hold = hold_after(monkeypatch, "require", uid(bob))
    inviting = bob.call(
        "POST", f"/api/workspaces/{wid}/members", {"username": "puppet", "role": "owner"}
    )

    async def demote() -> None:
        path = f"/api/workspaces/{wid}/members/{uid(bob)}"
        demoted = await alice.call("PUT", path, {"role": "maintainer"})
        assert demoted.code == 200, demoted

    invited = await interleave(app, hold, inviting, demote)
    assert invited.code == 403, invited
    assert await invitations(app, wid) == []


@pytest_twisted.ensureDeferred
async def test_removed_maintainer_cannot_add_directly_in_flight(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the operator allows direct adds (--direct-members '*'), the add made after the
    removal would make the puppet a member at once: it must not."""
    config = attrs.evolve(server_config(db_url), direct_members=("*",))
    app = await start_server(db_url, config=config)
    try:
        p = await people(app, "owner", "mal", "puppet")
        owner, mal, puppet = p["owner"], p["mal"], p["puppet"]
        wid = await workspace(owner)
        await owner.add_member(wid, mal, "maintainer")
        hold = hold_after(monkeypatch, "require", uid(mal))
        adding = mal.call(
            "POST", f"/api/workspaces/{wid}/members", {"username": "puppet", "role": "maintainer"}
        )

        async def remove() -> None:
            removed = await owner.call("DELETE", f"/api/workspaces/{wid}/members/{uid(mal)}")
            assert removed.code == 204, removed

        added = await interleave(app, hold, adding, remove)
        assert (added.code, added.error_code) == (404, "workspace_not_found"), added
        assert await role(app, wid, puppet) is None
        assert (await puppet.call("GET", "/api/workspaces")).body == []
    finally:
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_removed_owner_cannot_promote_in_flight(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await people(app, "alice", "bob", "puppet")
    alice, bob, puppet = p["alice"], p["bob"], p["puppet"]
    wid = await workspace(alice)
    await alice.add_member(wid, bob, "owner")
    await bob.add_member(wid, puppet, "guest")
    hold = hold_after(monkeypatch, "require", uid(bob))
    promoting = bob.call("PUT", f"/api/workspaces/{wid}/members/{uid(puppet)}", {"role": "owner"})

    async def remove() -> None:
        removed = await alice.call("DELETE", f"/api/workspaces/{wid}/members/{uid(bob)}")
        assert removed.code == 204, removed

    promoted = await interleave(app, hold, promoting, remove)
    assert (promoted.code, promoted.error_code) == (404, "workspace_not_found"), promoted
    assert await role(app, wid, puppet) == "guest"


@pytest_twisted.ensureDeferred
async def test_removed_owner_cannot_remove_in_flight(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three owners: the one removed cannot take a third with them."""
    p = await people(app, "alice", "bob", "carol")
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    wid = await workspace(alice)
    await alice.add_member(wid, bob, "owner")
    await alice.add_member(wid, carol, "owner")
    hold = hold_after(monkeypatch, "require", uid(bob))
    removing = bob.call("DELETE", f"/api/workspaces/{wid}/members/{uid(carol)}")

    async def remove() -> None:
        removed = await alice.call("DELETE", f"/api/workspaces/{wid}/members/{uid(bob)}")
        assert removed.code == 204, removed

    answer = await interleave(app, hold, removing, remove)
    assert (answer.code, answer.error_code) == (404, "workspace_not_found"), answer
    assert await role(app, wid, carol) == "owner"
    assert await role(app, wid, alice) == "owner"


@pytest_twisted.ensureDeferred
async def test_two_owners_removing_each_other(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second removal comes from someone no longer a member: it gets the stranger's 404,
    not a last-owner 409 that would tell them about the workspace, and one owner remains."""
    p = await people(app, "alice", "bob")
    alice, bob = p["alice"], p["bob"]
    wid = await workspace(alice)
    await alice.add_member(wid, bob, "owner")
    hold = hold_after(monkeypatch, "require", uid(bob))
    removing = bob.call("DELETE", f"/api/workspaces/{wid}/members/{uid(alice)}")

    async def remove() -> None:
        removed = await alice.call("DELETE", f"/api/workspaces/{wid}/members/{uid(bob)}")
        assert removed.code == 204, removed

    answer = await interleave(app, hold, removing, remove)
    assert (answer.code, answer.error_code) == (404, "workspace_not_found"), answer
    assert await role(app, wid, alice) == "owner"
    assert await role(app, wid, bob) is None


@pytest_twisted.ensureDeferred
async def test_demoted_owner_cannot_set_the_budget_in_flight(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await people(app, "alice", "bob")
    alice, bob = p["alice"], p["bob"]
    wid = await workspace(alice)
    await alice.add_member(wid, bob, "owner")
    hold = hold_after(monkeypatch, "require", uid(bob))
    setting = bob.call("PUT", f"/api/workspaces/{wid}/budget", {"monthly_tokens": 0})

    async def demote() -> None:
        path = f"/api/workspaces/{wid}/members/{uid(bob)}"
        demoted = await alice.call("PUT", path, {"role": "developer"})
        assert demoted.code == 200, demoted

    answer = await interleave(app, hold, setting, demote)
    assert answer.code == 403, answer
    rows = await app.db.query("SELECT monthly_token_budget FROM workspaces WHERE id = %s", (wid,))
    assert rows[0]["monthly_token_budget"] is None


@pytest_twisted.ensureDeferred
async def test_invitation_of_a_sender_without_the_right_is_not_accepted(app: Running) -> None:
    """Whatever left an invitation behind (a race of an older version, a manual change), it
    admits no one once its sender is no longer a member who could send it; it is used up."""
    p = await people(app, "owner", "maint", "friend", "pal")
    owner, maint, friend, pal = p["owner"], p["maint"], p["friend"], p["pal"]
    wid = await workspace(owner)
    await owner.add_member(wid, maint, "owner")
    path = f"/api/workspaces/{wid}/members"
    as_owner = await maint.call("POST", path, {"username": "friend", "role": "owner"})
    as_dev = await maint.call("POST", path, {"username": "pal", "role": "developer"})
    assert as_owner.code == as_dev.code == 201
    # Taken away behind the API's back, so the invitations are not withdrawn with it.
    await app.db.execute(
        "UPDATE workspace_members SET role = 'maintainer' WHERE workspace_id = %s AND user_id = %s",
        (wid, uid(maint)),
    )
    late = await friend.call("POST", f"/api/invitations/{as_owner.body['invitation_id']}/accept")
    assert (late.code, late.error_code) == (404, "invitation_not_found"), late
    assert await role(app, wid, friend) is None
    assert (await friend.call("GET", "/api/invitations")).body == []
    # A maintainer may still invite developers: that one stands.
    joined = await pal.call("POST", f"/api/invitations/{as_dev.body['invitation_id']}/accept")
    assert (joined.code, joined.body["role"]) == (200, "developer"), joined

    again = await maint.call("POST", path, {"username": "friend", "role": "developer"})
    assert again.code == 201, again
    await app.db.execute(
        "DELETE FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
        (wid, uid(maint)),
    )
    late = await friend.call("POST", f"/api/invitations/{again.body['invitation_id']}/accept")
    assert (late.code, late.error_code) == (404, "invitation_not_found"), late
    assert await role(app, wid, friend) is None


@pytest_twisted.ensureDeferred
async def test_parallel_invites_racing_a_removal(app: Running) -> None:
    """Real concurrent HTTP, no help: a burst of invites around the maintainer's removal.
    Every answer is a clean 201/200 (before) or 404 (after), never a 500, and nothing the
    removed maintainer sent survives. Bounded: 3 rounds of 16 requests."""
    p = await people(app, "owner", "mal", "puppet")
    owner, mal, puppet = p["owner"], p["mal"], p["puppet"]
    for attempt in range(3):
        wid = await workspace(owner)
        await owner.add_member(wid, mal, "maintainer")
        path = f"/api/workspaces/{wid}/members"
        calls = [
            mal.call("POST", path, {"username": "puppet", "role": "maintainer"}) for _ in range(15)
        ]
        calls.insert(7, owner.call("DELETE", f"{path}/{uid(mal)}"))
        answers = await gatherResults(calls)
        assert answers[7].code == 204, answers[7]
        codes = [a.code for i, a in enumerate(answers) if i != 7]
        assert set(codes) <= {200, 201, 404}, (attempt, codes)
        assert await role(app, wid, mal) is None
        assert await invitations(app, wid) == [], (attempt, codes)
        assert (await puppet.call("GET", "/api/invitations")).body == []
        assert await role(app, wid, puppet) is None
