"""The API's real Klein routes, in process: ``StubTreq`` over each app's resource, no port.

The route objects and the domain's authorization code (``Workspaces.require``, the
``SandboxManager``'s ``authorized``, the events fired after a change) are the real ones; only
what would touch PostgreSQL is in memory: who holds which session, who holds which role, and
a database that records each transaction it is asked for. Against real SQL the same matrix
is tests/integration/test_authorization.py.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define, field
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cli_server.anthropic.usage import UsageStore
from cli_server.db.pool import Row
from cli_server.domain.accounts import Accounts, User
from cli_server.domain.errors import NotFound
from cli_server.domain.events import Events
from cli_server.domain.roles import Role
from cli_server.domain.workspaces import Workspaces
from cli_server.proxy.access import SandboxAccess
from cli_server.proxy.urls import SandboxUrls
from cli_server.sandboxes.manager import SandboxManager
from cli_server.testing import FakeBackend, MemoryFailures
from cli_server.tunnel.registrations import LocalAgents
from cli_server.web.auth_api import AuthAPI, AuthLimits
from cli_server.web.sandboxes_api import SandboxesAPI, WorkspaceSandboxesAPI
from cli_server.web.session import SessionCookies
from cli_server.web.workspaces_api import WorkspacesAPI

ORIGIN = "http://localhost:8080"
FOREIGN = "http://oc-1234.localhost:8080"  # a sandbox's page: same site, another origin
WORKSPACE = "11111111-1111-4111-8111-111111111111"
SANDBOX = "22222222-2222-4222-8222-222222222222"
PEOPLE = {
    name: User(f"00000000-0000-4000-8000-00000000000{n}", name, None, "2026-01-01T00:00:00Z")
    for n, name in enumerate(["owner", "developer", "guest", "stranger"], start=1)
}
ROLES = {
    PEOPLE["owner"].id: Role.OWNER,
    PEOPLE["developer"].id: Role.DEVELOPER,
    PEOPLE["guest"].id: Role.GUEST,
}
MEMBER_ROW = {
    "user_id": PEOPLE["developer"].id,
    "username": "developer",
    "role": "guest",
    "created_at": None,
}


@define(eq=False)
class RecordingDatabase:
    """Stands in for ``db.pool.Database``: records each statement and transaction it is
    asked for, answers none (a transaction answers ``row``)."""

    row: Row | None = None
    asked: list[str] = field(factory=list)

    async def transaction(self, work: Any) -> Row | None:
        self.asked.append("transaction")
        return self.row

    async def query(self, sql: str, args: Any = ()) -> list[Row]:
        self.asked.append(sql.split()[0])
        return []

    async def execute(self, sql: str, args: Any = ()) -> None:
        self.asked.append(sql.split()[0])


class MemoryAccounts(Accounts):
    """Sessions are the users' names."""

    async def session_user(self, token: str) -> User | None:
        return PEOPLE.get(token)


class MemoryWorkspaces(Workspaces):
    """One workspace, whose roles are ``ROLES``; the rest is the real domain code."""

    async def role_of(self, workspace_id: str, user_id: str) -> Role:
        role = ROLES.get(user_id) if workspace_id == WORKSPACE else None
        if role is None:
            raise NotFound("no such workspace", code="workspace_not_found")
        return role


class MemoryManager(SandboxManager):
    """One running cloud sandbox, in ``WORKSPACE``."""

    async def _row(self, sandbox_id: str) -> Row:
        if sandbox_id != SANDBOX:
            raise NotFound("no such sandbox", code="sandbox_not_found")
        return {"id": SANDBOX, "workspace_id": WORKSPACE, "is_local": False, "status": "running"}


@define(eq=False)
class Heard:
    """An ``events.Listener`` that writes down what it hears."""

    said: list[tuple[str, ...]] = field(factory=list)

    async def user_revoked(self, user_id: str) -> None:
        self.said.append(("user_revoked", user_id))

    async def user_disabled(self, user_id: str) -> None:
        self.said.append(("user_disabled", user_id))

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        self.said.append(("member_changed", user_id, workspace_id))

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        self.said.append(("sandbox_deleted", sandbox_id))

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        self.said.append(("sandbox_status_changed", sandbox_id))


class RouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        clock = Clock()
        self.db = RecordingDatabase(MEMBER_ROW)
        db: Any = self.db
        self.heard = Heard()
        events = Events()
        events.subscribe(self.heard)
        no_passwords: Any = None  # (nobody logs in here: sessions are given)
        accounts = MemoryAccounts(db, no_passwords, clock, 3600.0, events)
        cookies = SessionCookies(accounts, False, 3600.0, ORIGIN)
        workspaces = MemoryWorkspaces(db, events=events)
        manager = MemoryManager(db, FakeBackend(), workspaces, 10, None, events)
        self.apps = {
            "workspaces": WorkspacesAPI(
                workspaces,
                cookies,
                manager,
                WorkspaceSandboxesAPI(manager),
                UsageStore(db),
                LocalAgents(db, workspaces, ORIGIN, ORIGIN + "/proxy/anthropic/v1"),
            ).app,
            "sandboxes": SandboxesAPI(
                manager,
                cookies,
                SandboxAccess(db, clock, 3600.0),
                SandboxUrls("http", "localhost:8080"),
            ).app,
            "auth": AuthAPI(
                accounts,
                cookies,
                AuthLimits().guard(MemoryFailures(), clock),
                AuthLimits().registrations(MemoryFailures(), clock),
            ).app,
        }

    def call(
        self,
        app: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        who: str | None = None,
        origin: str | None = ORIGIN,
    ) -> tuple[int, Any]:
        """The status and JSON body of one request to ``app``, as ``who`` (signed out: None)
        from ``origin``."""
        client: Any = StubTreq(self.apps[app].resource())  # (its verbs are made at run time)
        headers = {}
        if who is not None:
            headers["Cookie"] = f"cli_session={who}"
        if origin is not None:
            headers["Origin"] = origin
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        answer = client.request(method, ORIGIN + path, data=data, headers=headers)
        client.flush()
        response = self.successResultOf(answer)
        content = self.successResultOf(response.content())
        return response.code, json.loads(content) if content else None

    def refused(self, app: str, method: str, path: str, body: Any, who: str | None) -> Any:
        """The error of a refused request, which must have asked the database for no change."""
        before = list(self.db.asked)
        status, answer = self.call(app, method, path, body, who=who)
        self.assertGreaterEqual(status, 400, answer)
        changes = [a for a in self.db.asked[len(before) :] if a != "SELECT"]
        self.assertEqual(changes, [], f"{method} {path} as {who}")
        self.assertEqual(self.heard.said, [])
        return status, answer["error"]

    def assert_matrix(
        self, app: str, method: str, path: str, body: Any, cells: dict[str | None, Any]
    ) -> None:
        """Each caller's refusal: (status, code) or (status, code, field)."""
        for who, expected in cells.items():
            status, error = self.refused(app, method, path, body, who)
            got = (status, error["code"]) + ((error.get("field"),) if len(expected) == 3 else ())
            self.assertEqual(got, expected, f"{method} {path} as {who}: {error}")

    def test_foreign_origin_refused_first(self) -> None:
        """A state change from another origin is refused before anything else: signed in or
        out, member or not, with a valid body or not; reads are not refused for it."""
        member = f"/{WORKSPACE}/members/{PEOPLE['developer'].id}"
        for app, method, path in [
            ("workspaces", "PUT", member),
            ("workspaces", "DELETE", member),
            ("workspaces", "POST", f"/{WORKSPACE}/members"),
            ("workspaces", "PUT", f"/{WORKSPACE}/budget"),
            ("workspaces", "POST", "/"),
            ("sandboxes", "POST", f"/{SANDBOX}/pause"),
            ("sandboxes", "POST", f"/{SANDBOX}/open"),
            ("auth", "PUT", "/password"),
            ("auth", "POST", "/login"),
        ]:
            for who in ("owner", "stranger", None):
                status, answer = self.call(app, method, path, {"x": 1}, who=who, origin=FOREIGN)
                self.assertEqual(
                    (status, answer["error"]["code"]), (403, "bad_origin"), (method, path, who)
                )
        self.assertEqual(self.db.asked, [])
        status, _ = self.call("workspaces", "GET", f"/{WORKSPACE}/invitations", origin=FOREIGN)
        self.assertEqual(status, 401)  # (a read: only the missing session counts)

    def test_change_a_role(self) -> None:
        """PUT /{w}/members/{m}: owners only; a wrong role names the field; a change is one
        transaction, and the member's access is revoked by the domain's event."""
        path = f"/{WORKSPACE}/members/{PEOPLE['developer'].id}"
        self.assert_matrix(
            "workspaces",
            "PUT",
            path,
            {"role": "guest"},
            {
                None: (401, "unauthorized"),
                "stranger": (404, "workspace_not_found"),
                "guest": (403, "forbidden"),
                "developer": (403, "forbidden"),
            },
        )
        self.assert_matrix(
            "workspaces", "PUT", path, {"role": "king"}, {"owner": (400, "invalid_request", "role")}
        )
        self.assert_matrix(
            "workspaces", "PUT", path, {}, {"owner": (400, "invalid_request", "role")}
        )
        status, member = self.call("workspaces", "PUT", path, {"role": "guest"}, who="owner")
        self.assertEqual((status, member["role"]), (200, "guest"))
        self.assertEqual(self.db.asked, ["transaction"])
        self.assertEqual(self.heard.said, [("member_changed", PEOPLE["developer"].id, WORKSPACE)])

    def test_remove_a_member(self) -> None:
        """DELETE /{w}/members/{m}: owners remove others, members leave; the event follows."""
        developer = PEOPLE["developer"].id
        path = f"/{WORKSPACE}/members/{developer}"
        self.assert_matrix(
            "workspaces",
            "DELETE",
            path,
            None,
            {
                None: (401, "unauthorized"),
                "stranger": (404, "workspace_not_found"),
                "guest": (403, "forbidden"),
            },
        )
        self.assert_matrix(
            "workspaces",
            "DELETE",
            f"/{WORKSPACE}/members/not-an-id",
            None,
            {"owner": (404, "member_not_found")},
        )
        status, _ = self.call("workspaces", "DELETE", path, who="developer")  # (leaving)
        self.assertEqual(status, 204)
        self.assertEqual(self.heard.said, [("member_changed", developer, WORKSPACE)])

    def test_invite(self) -> None:
        """POST /{w}/members: maintainers and up; the username and the role are checked."""
        path = f"/{WORKSPACE}/members"
        self.assert_matrix(
            "workspaces",
            "POST",
            path,
            {"username": "newcomer"},
            {
                None: (401, "unauthorized"),
                "stranger": (404, "workspace_not_found"),
                "guest": (403, "forbidden"),
                "developer": (403, "forbidden"),
            },
        )
        self.assert_matrix(
            "workspaces",
            "POST",
            path,
            {"role": "developer"},
            {"owner": (400, "invalid_request", "username")},
        )
        self.assert_matrix(
            "workspaces",
            "POST",
            path,
            {"username": "newcomer", "role": "root"},
            {"owner": (400, "invalid_request", "role")},
        )
        self.assert_matrix(
            "workspaces",
            "POST",
            path,
            "not an object",
            {"owner": (400, "invalid_request", "body")},
        )

    def test_budget(self) -> None:
        """PUT /{w}/budget: owners only, before the body is read; then the body is checked."""
        path = f"/{WORKSPACE}/budget"
        self.assert_matrix(
            "workspaces",
            "PUT",
            path,
            {"monthly_tokens": "lots"},
            {
                None: (401, "unauthorized"),
                "stranger": (404, "workspace_not_found"),
                "developer": (403, "forbidden"),
                "owner": (400, "invalid_request", "monthly_tokens"),
            },
        )
        self.assert_matrix(
            "workspaces",
            "PUT",
            path,
            {"monthly_tokens": -1},
            {"owner": (400, "invalid_request", "monthly_tokens")},
        )

    def test_pause_a_sandbox(self) -> None:
        """POST /{s}/pause: developers and up; non-members learn nothing (404 as for an unknown
        id); a developer's pause reaches the status transition."""
        path = f"/{SANDBOX}/pause"
        self.assert_matrix(
            "sandboxes",
            "POST",
            path,
            None,
            {
                None: (401, "unauthorized"),
                "stranger": (404, "sandbox_not_found"),
                "guest": (403, "forbidden"),
            },
        )
        self.assert_matrix(
            "sandboxes",
            "POST",
            "/33333333-3333-4333-8333-333333333333/pause",
            None,
            {"owner": (404, "sandbox_not_found")},
        )
        self.assert_matrix(
            "sandboxes", "POST", "/x/pause", None, {"owner": (404, "sandbox_not_found")}
        )
        # (the recording database has no row to update: the transition finds the sandbox
        # moved on, a 409, after asking for the UPDATE)
        status, answer = self.call("sandboxes", "POST", path, who="developer")
        self.assertEqual((status, answer["error"]["code"]), (409, "invalid_state"))
        self.assertEqual(self.db.asked, ["UPDATE"])

    def test_change_password(self) -> None:
        """PUT /password: signed in; a short new password names its field."""
        self.assert_matrix(
            "auth",
            "PUT",
            "/password",
            {"current_password": "x" * 10, "new_password": "short"},
            {
                None: (401, "unauthorized"),
                "guest": (400, "invalid_request", "new_password"),
            },
        )
