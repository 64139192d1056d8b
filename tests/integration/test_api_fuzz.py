"""Schemathesis against the running server's OpenAPI document, as each kind of caller.

A real server (in-process, PostgreSQL, FAKE sandbox backend) serves ``/api/openapi.json``.
Each caller gets a world: a workspace of the instance admin's with a developer, a running
sandbox, a pending invitation, another workspace inviting the caller, a sign-up link and a
spare session and token. Every operation of the document then gets a bounded, derandomized
set of generated requests: valid ones with the world's real ids, valid ones with made-up ids,
and invalid ones. The callers: the **owner** (who is also the instance admin), a **guest** of
the workspace, and the owner's personal API **token** (scope write, that workspace only).

For every answer: no 5xx; its status one the operation documents; its body matching the
documented schema; invalid data refused; and for every 4xx answer the database exactly as it
was before the request (but for a caller's own last-use bookkeeping, ``CALLER_BOOKKEEPING``,
and the audit log's record of a refused sign-in, ``NOT_REFUSALS``).

Nothing is left out. Requests that end the caller or break the world (logout, a revoked
session or token, a disabled account, a reset password, a deleted workspace or sandbox, a
removed member...) are sent like any other: before each operation the world is checked, the
caller signed in again, or a new world built.

Schemathesis sends with ``requests`` (blocking), so the examples run on a thread while the
reactor serves them; the thread reaches the server's database through the reactor.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import hypothesis
import pytest_twisted
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThread

from cli_server.web.auth_api import AuthLimits

from .conftest import Running, start_server, stop_server
from .fingerprint import CALLER_BOOKKEEPING, NOT_REFUSALS, fingerprint
from .helpers import Api, wait_until

# Generated requests per operation and caller: valid with the world's ids, valid with
# made-up ids, invalid. Enough to reach each handler's validation and refusals; few enough
# that the three callers stay within a few minutes on a busy two-core machine.
REAL, MADE_UP, INVALID = 10, 5, 8
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
PASSWORD = "password123"
SETTINGS = hypothesis.settings(
    derandomize=True,
    database=None,
    deadline=None,
    # no shrinking: every failure is reported as found, and a run's length is bounded
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    suppress_health_check=list(hypothesis.HealthCheck),
)


CONFIG = schemathesis.Config()  # (the defaults; no schemathesis.toml is looked for)


def _credentials_ours(document: dict[str, Any]) -> dict[str, Any]:
    """The document without its security requirements: each caller's credential is sent by
    the test, so schemathesis must neither generate one nor count leaving it out as invalid
    data (the operations' 401 and 403 stay documented)."""
    for item in document["paths"].values():
        for operation in item.values():
            operation.pop("security", None)
    document.pop("security", None)
    document.get("components", {}).pop("securitySchemes", None)
    return document


@attrs.define
class Caller:
    """Who the generated requests are sent as: ``api``'s session cookie, or ``token``."""

    role: str
    api: Api
    token: str | None = None

    def cookies(self) -> dict[str, str]:
        return {} if self.token else {c.name: str(c.value) for c in self.api.jar}

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@attrs.define
class World:
    """What one caller's run acts on: real ids for every path argument of the API (several
    for some: one the caller may act on, one it may not)."""

    app: Running
    root: Api  # the instance admin, owner of the workspace
    caller: Caller
    ids: dict[str, list[str]] = attrs.field(factory=dict)
    made: int = 0

    async def build(self) -> None:
        self.made += 1
        tag = uuid.uuid4().hex[:8]
        root = self.root
        assert root.user is not None
        wid = await self._created(root, "/api/workspaces", {"name": f"w-{tag}"})
        developer, invitee = self.app.client(), self.app.client()
        await developer.register_and_login(f"dev{tag}")
        await invitee.register_and_login(f"inv{tag}")
        assert developer.user is not None
        await root.add_member(wid, developer, "developer")
        if self.caller.role == "guest":
            guest = self.app.client()
            await guest.register_and_login(f"guest{tag}")
            await root.add_member(wid, guest, "guest")
            self.caller = Caller("guest", guest)
        elif self.caller.role == "token":
            made = await self._token(wid, "write")
            self.caller = Caller("token", root, made["token"])
        caller = self.caller.api
        assert caller.user is not None
        invited = await root.call(
            "POST", f"/api/workspaces/{wid}/members", {"username": f"inv{tag}", "role": "guest"}
        )
        assert invited.code == 201, invited
        # the developer's own workspace, inviting the caller
        theirs = await self._created(developer, "/api/workspaces", {"name": f"d-{tag}"})
        to_caller = await developer.call(
            "POST",
            f"/api/workspaces/{theirs}/members",
            {"username": caller.user["username"], "role": "developer"},
        )
        assert to_caller.code == 201, to_caller
        sandbox = await self._created(root, f"/api/workspaces/{wid}/sandboxes", {"name": "s"})
        await self._created(root, "/api/admin/signup-links", None)
        links = await root.call("GET", "/api/admin/signup-links")
        spare = self.app.client()
        signed_in = await spare.call(
            "POST", "/api/auth/login", {"username": caller.user["username"], "password": PASSWORD}
        )
        assert signed_in.code == 200, signed_in
        sessions = await spare.call("GET", "/api/auth/sessions")
        (session,) = [s for s in sessions.body if s["current"]]
        self.ids = {
            "workspace_id": [wid, theirs],
            "member_id": [str(developer.user["id"]), str(caller.user["id"])],
            "user_id": [str(developer.user["id"]), str(caller.user["id"])],
            "sandbox_id": [sandbox],
            "invitation_id": [str(to_caller.body["invitation_id"]), invited.body["invitation_id"]],
            "link_id": [str(links.body[0]["id"])],
            "session_id": [str(session["id"])],
            "token_id": [(await self._token(None, "read"))["id"]],
            "identity_id": [str(uuid.uuid4())],
            "provider": ["github"],
        }
        await wait_until(self.app.reactor, self._sandbox_running)

    async def _created(self, api: Api, path: str, body: Any) -> str:
        made = await api.call("POST", path, body)
        assert made.code == 201, (path, made)
        return str(made.body.get("id"))

    async def _token(self, workspace_id: str | None, scope: str) -> dict[str, Any]:
        expires = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
        body = {"name": "fuzz", "scope": scope, "expires_at": expires}
        if workspace_id is not None:
            body["workspace_id"] = workspace_id
        made = await self.root.call("POST", "/api/auth/tokens", body)
        assert made.code == 201, made
        return dict(made.body)

    async def _sandbox_running(self) -> bool:
        reply = await self.root.call("GET", f"/api/sandboxes/{self.ids['sandbox_id'][0]}")
        return reply.code == 200 and reply.body["status"] == "running"

    async def heal(self) -> None:
        """Whatever the last operation did to the caller or the world, undo it: sign in again,
        or build a new world when the caller or its workspace is not as built."""
        await self.app.server.manager.drain()
        if not await self._signed_in(self.root):
            await self._sign_in(self.root)
        if self.caller.role == "guest" and not await self._signed_in(self.caller.api):
            await self._sign_in(self.caller.api)
        if not await self._intact():
            await self.build()

    async def _signed_in(self, api: Api) -> bool:
        return (await api.call("GET", "/api/auth/me")).code == 200

    async def _sign_in(self, api: Api) -> None:
        assert api.user is not None
        api.jar.clear()
        login = {"username": api.user["username"], "password": PASSWORD}
        await api.call("POST", "/api/auth/login", login)

    async def _intact(self) -> bool:
        """The caller gets in, with its role in the workspace; the sandbox runs; the
        invitations are pending."""
        me = await self.caller.api.call("GET", "/api/auth/me", headers=self.caller.headers())
        if me.code != 200:
            return False
        wid, theirs = self.ids["workspace_id"]
        members = await self.root.call("GET", f"/api/workspaces/{wid}/members")
        if members.code != 200:
            return False
        roles = {str(m["user_id"]): m["role"] for m in members.body}
        assert self.root.user is not None and self.caller.api.user is not None
        expected = {self.ids["member_id"][0]: "developer", str(self.root.user["id"]): "owner"}
        if self.caller.role == "guest":
            expected[str(self.caller.api.user["id"])] = "guest"
        if any(roles.get(uid) != role for uid, role in expected.items()):
            return False
        ours = await self.root.call("GET", f"/api/workspaces/{wid}/invitations")
        mine = await self.caller.api.call("GET", "/api/invitations")
        pending = {str(i["id"]) for i in ours.body} | {str(i["id"]) for i in mine.body}
        if not set(self.ids["invitation_id"]) <= pending:
            return False
        return await self._sandbox_running()


@attrs.define
class Fuzz:
    """Runs on the worker thread: sends the cases, checks the answers and the database."""

    world: World
    base: str
    problems: dict[str, str]
    http: requests.Session = attrs.field(factory=requests.Session)
    sent: int = 0
    checking: float = 0.0  # seconds spent waiting for the database's fingerprint
    before: dict[str, str] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.http.trust_env = False  # (no proxy from the environment between us and loopback)

    def on_reactor(self, work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return blockingCallFromThread(
            self.world.app.reactor, lambda: Deferred.fromCoroutine(work())
        )

    async def _settled(self) -> dict[str, str]:
        """The database once the server's background work (sandbox starts...) is done."""
        await self.world.app.server.manager.drain()
        return await fingerprint(self.world.app.db, CALLER_BOOKKEEPING, NOT_REFUSALS)

    def run(self, schema: Any) -> None:
        for result in schema.get_all_operations():
            operation = result.ok()
            arguments = [p.name for p in operation.path_parameters]
            # (only an argument the document constrains, e.g. a uuid, can be sent invalid)
            checked = [p for p in operation.path_parameters if len(p.optimized_schema) > 1]
            queried = [q for q in operation.query if len(q.optimized_schema) > 1]
            plan = [(GenerationMode.POSITIVE, True, REAL if arguments else REAL + MADE_UP)]
            if arguments:
                plan.append((GenerationMode.POSITIVE, False, MADE_UP))
            if len(operation.body) or queried:  # (an invalid body or query, to real ids)
                plan.append((GenerationMode.NEGATIVE, True, INVALID))
            elif checked:  # (ids that are no uuid)
                plan.append((GenerationMode.NEGATIVE, False, INVALID))
            for mode, real, count in plan:
                self.on_reactor(self.world.heal)
                self.before = self.on_reactor(self._settled)
                self._examples(operation, self._cases(operation, mode, real), count)

    def _cases(self, operation: Any, mode: GenerationMode, real: bool) -> Any:
        """Cases with the world's ids in the path (each of them in turn), or made-up ones."""
        ids = self.world.ids
        names = [p.name for p in operation.path_parameters if p.name in ids]
        if not real or not names:
            return operation.as_strategy(mode)
        width = max(len(ids[n]) for n in names)
        return st.one_of(
            *[
                operation.as_strategy(
                    mode, path_parameters={n: ids[n][i % len(ids[n])] for n in names}
                )
                for i in range(width)
            ]
        )

    def _examples(self, operation: Any, cases: Any, count: int) -> None:
        @hypothesis.settings(SETTINGS, max_examples=count)
        @hypothesis.given(case=cases)
        def examples(case: Any) -> None:
            self.send(case)

        examples()

    def send(self, case: Any) -> None:
        self.sent += 1
        self.http.cookies.clear()  # (only the caller's own credential is ever sent)
        caller = self.world.caller
        headers = caller.headers()
        response = case.call(
            base_url=self.base,
            session=self.http,
            headers=headers,
            cookies=caller.cookies(),
            timeout=30,
        )
        where = f"{caller.role}: {case.operation.label} -> {response.status_code}"
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                self.problems.setdefault(f"{where}: {failure.title}", str(group))
        began = time.monotonic()
        after = self.on_reactor(self._settled)
        self.checking += time.monotonic() - began
        if 400 <= response.status_code < 500 and after != self.before:
            changed = sorted(t for t in after if after[t] != self.before.get(t))
            self.problems.setdefault(
                f"{where}: refused, yet changed {', '.join(changed)}",
                case.as_curl_command(headers=headers),
            )
        self.before = after


@pytest_twisted.ensureDeferred
async def test_api_fuzz(db_url: str) -> None:
    """Every operation of the served API document, fuzzed as the owner, a guest and a token."""
    # (lenient limits: generated sign-ins must not lock the run's own callers out)
    limits = AuthLimits(
        login_failures_per_pair=10**6,
        login_failures_per_user=10**6,
        login_failures_per_address=10**6,
        registrations_per_address=10**6,
    )
    app = await start_server(db_url, limits=limits)
    try:
        root = app.client()
        await root.register_and_login("root", PASSWORD)
        served = await root.call("GET", "/api/openapi.json")
        assert served.code == 200, served
        schema = schemathesis.openapi.from_dict(_credentials_ours(served.body), config=CONFIG)
        report, problems = [], {}
        for role in ("owner", "guest", "token"):
            world = World(app, root, Caller(role, root))
            await world.build()
            fuzz = Fuzz(world, app.base, problems)
            began = time.monotonic()
            await deferToThread(fuzz.run, schema)
            report.append(
                f"{role}: {fuzz.sent} requests in {time.monotonic() - began:.1f}s"
                f" ({fuzz.checking:.1f}s checking the database), {world.made} worlds"
            )
        print("\n".join(report))
        assert not problems, "\n\n".join(f"{k}\n{v}" for k, v in problems.items())
    finally:
        await stop_server(app)
