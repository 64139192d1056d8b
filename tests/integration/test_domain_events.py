"""The domain fires its own revocation events, once the change is committed: a listener that
looks at the database (through another connection of the pool) when it hears one already sees
the change. No HTTP handler is involved: this is what single sign-on, an admin tool or a future
API get for free."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from attrs import define, field
from twisted.internet.defer import maybeDeferred

from cli_server.auth.passwords import Passwords, cheap_hasher
from cli_server.db.pool import Database
from cli_server.domain.accounts import Accounts
from cli_server.domain.errors import Forbidden
from cli_server.domain.events import Events
from cli_server.domain.instance_admin import InstanceAdmin
from cli_server.domain.roles import Role
from cli_server.domain.workspaces import Workspaces
from cli_server.sandboxes.manager import SandboxManager
from cli_server.testing import FakeBackend

from .conftest import Running, _reactor
from .test_sandboxes_api import team, wait_status


@define(eq=False)
class Witness:
    """Hears each event and writes down what the database shows at that moment."""

    db: Database
    seen: list[tuple[Any, ...]] = field(factory=list)

    async def _user(self, event: str, user_id: str) -> None:
        rows = await self.db.query(
            "SELECT (SELECT count(*) FROM sessions WHERE user_id = %s) AS sessions,"
            " (SELECT disabled_at IS NOT NULL FROM users WHERE id = %s) AS disabled",
            (user_id, user_id),
        )
        self.seen.append((event, user_id, rows[0]["sessions"], rows[0]["disabled"]))

    async def user_revoked(self, user_id: str) -> None:
        await self._user("user_revoked", user_id)

    async def user_disabled(self, user_id: str) -> None:
        await self._user("user_disabled", user_id)

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        rows = await self.db.query(
            "SELECT role FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
            (workspace_id, user_id),
        )
        self.seen.append(("member_changed", user_id, rows[0]["role"] if rows else None))

    async def _sandbox(self, event: str, sandbox_id: str) -> None:
        rows = await self.db.query("SELECT status FROM sandboxes WHERE id = %s", (sandbox_id,))
        self.seen.append((event, sandbox_id, rows[0]["status"] if rows else None))

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        await self._sandbox("sandbox_deleted", sandbox_id)

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        await self._sandbox("sandbox_status_changed", sandbox_id)


def _hook(app: Running) -> tuple[Events, Witness]:
    events, witness = Events(), Witness(app.db)
    events.subscribe(witness)
    return events, witness


@pytest_twisted.ensureDeferred
async def test_accounts_fire_user_revoked_after_commit(app: Running) -> None:
    """A password change, a revoked session and a logout each fire ``user_revoked`` for the
    account, with its sessions already gone."""
    people, _ = await team(app)
    events, witness = _hook(app)
    passwords = Passwords(maybeDeferred, cheap_hasher())
    accounts = Accounts(app.db, passwords, _reactor(), 3600.0, events)
    dev = people["developer"].user
    assert dev is not None
    second = app.client()
    await second.call(
        "POST", "/api/auth/login", {"username": "developer", "password": "password123"}
    )
    assert len(await accounts.sessions(dev["id"], "none")) == 2

    await accounts.set_password(dev["id"], "a brand new one", keep_token=None)
    assert witness.seen == [("user_revoked", dev["id"], 0, False)]

    owner = people["owner"].user
    assert owner is not None
    (session,) = await accounts.sessions(owner["id"], "none")
    assert await accounts.close_session_by_id(owner["id"], session.id, "none") == "other"
    assert await accounts.close_session_by_id(owner["id"], session.id, "none") is None
    assert witness.seen[1:] == [("user_revoked", owner["id"], 0, False)]

    guest = people["guest"]
    assert guest.user is not None
    token = next(c.value for c in guest.jar if c.name == "cli_session")
    assert token is not None
    await accounts.close_session(token)
    await accounts.close_session(token)  # (gone already: nobody to tell)
    assert witness.seen[2:] == [("user_revoked", guest.user["id"], 0, False)]


@pytest_twisted.ensureDeferred
async def test_the_instance_admin_fires_after_commit(app: Running) -> None:
    """Disabling fires ``user_disabled`` with the account disabled and signed out; enabling
    fires nothing; a reset fires ``user_revoked`` with the sessions gone."""
    people, _ = await team(app)
    events, witness = _hook(app)
    admin = InstanceAdmin(app.db, Passwords(maybeDeferred, cheap_hasher()), events)
    owner, dev = people["owner"].user, people["developer"].user
    assert owner is not None and dev is not None
    await admin.set_disabled(owner["id"], dev["id"], True)
    await admin.set_disabled(owner["id"], dev["id"], False)
    assert witness.seen == [("user_disabled", dev["id"], 0, True)]
    guest = people["guest"].user
    assert guest is not None
    await admin.reset_password(guest["id"])
    assert witness.seen[1:] == [("user_revoked", guest["id"], 0, False)]


@pytest_twisted.ensureDeferred
async def test_workspaces_fire_member_changed_after_commit(app: Running) -> None:
    """A role change, a removal, and deleting the workspace (once per member) each fire
    ``member_changed``, with the new state visible; a refused change fires nothing."""
    people, wid = await team(app)
    events, witness = _hook(app)
    workspaces = Workspaces(app.db, events=events)
    ids = {name: client.user["id"] for name, client in people.items() if client.user}
    await workspaces.set_role(wid, ids["owner"], ids["developer"], Role.GUEST)
    assert witness.seen == [("member_changed", ids["developer"], "guest")]
    with pytest.raises(Forbidden):
        await workspaces.remove_member(wid, ids["guest"], ids["developer"])
    assert len(witness.seen) == 1
    await workspaces.remove_member(wid, ids["owner"], ids["developer"])
    assert witness.seen[1:] == [("member_changed", ids["developer"], None)]
    await workspaces.delete(wid, ids["owner"])
    assert sorted(witness.seen[2:]) == sorted(
        ("member_changed", ids[name], None) for name in ("owner", "maintainer", "guest")
    )


@pytest_twisted.ensureDeferred
async def test_the_sandbox_manager_fires_after_commit(app: Running) -> None:
    """A pause fires ``sandbox_status_changed`` with the new status stored; a delete fires it
    and then ``sandbox_deleted``, with the row gone."""
    people, wid = await team(app)
    made = await people["developer"].call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})
    sid = made.body["id"]
    await wait_status(people["owner"], sid, "running")
    events, witness = _hook(app)
    workspaces = Workspaces(app.db, events=events)
    manager = SandboxManager(app.db, FakeBackend(), workspaces, 10, None, events)
    dev = people["developer"].user
    assert dev is not None
    await manager.pause(sid, dev["id"])
    assert witness.seen[0] == ("sandbox_status_changed", sid, "pausing")
    await manager.drain()
    assert witness.seen[1] == ("sandbox_status_changed", sid, "paused")
    await manager.delete(sid, dev["id"])
    assert witness.seen[2:] == [
        ("sandbox_status_changed", sid, None),
        ("sandbox_deleted", sid, None),
    ]
