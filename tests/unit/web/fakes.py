"""The in-process kit of the REST API's unit tests: the real Klein routes over ``StubTreq``.

The route objects and the domain's code (``Workspaces.require``, ``SandboxManager``'s
authorization, ``Accounts``' queries, the events fired after a change) are the real ones; only
what would touch PostgreSQL is in memory: who holds which session (``FakeAccounts``: a session
is its user's name), who holds which role (``FakeWorkspaces``), and a database that answers
each query from the rows a test gives it (the one sandbox's row among them) and records every
statement and transaction it is asked for (``FakeDatabase``); a transaction runs nothing
and answers what the test says. Against real SQL the same matrix is
tests/integration/test_authorization.py.

Each test module lists the operations it covers (``COVERS``: OpenAPI operation ids);
test_route_coverage.py checks that every operation of the API document is in one of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from argon2 import PasswordHasher
from attrs import define, field, frozen
from jsonschema import Draft202012Validator
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from cli_server.anthropic.usage import UsageStore
from cli_server.auth.passwords import Passwords
from cli_server.db.pool import Row
from cli_server.domain.accounts import Accounts, User
from cli_server.domain.api_tokens import ApiTokens
from cli_server.domain.errors import NotFound
from cli_server.domain.events import Events
from cli_server.domain.instance_admin import InstanceAdmin
from cli_server.domain.roles import Role
from cli_server.domain.workspaces import Workspaces
from cli_server.proxy.access import SandboxAccess
from cli_server.proxy.urls import SandboxUrls
from cli_server.sandboxes.manager import SandboxManager
from cli_server.sandboxes.model import SANDBOX_COLUMNS
from cli_server.testing import FakeBackend, MemoryFailures
from cli_server.tunnel.registrations import LocalAgents
from cli_server.web.admin_api import AdminAPI
from cli_server.web.auth_api import AuthAPI, AuthLimits
from cli_server.web.bearer import TokenGuard
from cli_server.web.invitations_api import InvitationsAPI
from cli_server.web.routes import declared
from cli_server.web.sandboxes_api import SandboxesAPI, WorkspaceSandboxesAPI
from cli_server.web.session import SessionCookies
from cli_server.web.site import MainSite
from cli_server.web.workspaces_api import WorkspacesAPI

ORIGIN = "http://localhost:8080"
FOREIGN = "http://oc-1234.localhost:8080"  # a sandbox's page: same site, another origin
WORKSPACE = "11111111-1111-4111-8111-111111111111"
SANDBOX = "22222222-2222-4222-8222-222222222222"
UNKNOWN = "33333333-3333-4333-8333-333333333333"  # a well-formed id of nothing
CREATED = "2026-01-01T00:00:00Z"
PEOPLE = {
    name: User(f"00000000-0000-4000-8000-00000000000{n}", name, None, CREATED, name == "admin")
    for n, name in enumerate(["owner", "developer", "guest", "stranger", "admin"], start=1)
}
ROLES = {
    PEOPLE["owner"].id: Role.OWNER,
    PEOPLE["developer"].id: Role.DEVELOPER,
    PEOPLE["guest"].id: Role.GUEST,
}
# Who is refused what: caller (a session; None signed out) -> (status, code[, field]).
Cells = dict[str | None, tuple[Any, ...]]
SIGNED_OUT: Cells = {None: (401, "unauthorized")}
WRITES = ("INSERT", "UPDATE", "DELETE", "WITH", "transaction")

T = TypeVar("T")
Rows = Sequence[Row] | Callable[[Any], Sequence[Row]]


@define(eq=False)
class FakeDatabase:
    """A FAKE ``db.pool.Database``: records each statement (its first word) and transaction it
    is asked for. A query answers the rows of the first entry of ``rows`` whose key is a piece
    of its SQL (rows, or a function of the query's arguments), else none; a transaction runs
    nothing and answers ``row``."""

    row: Any = None
    rows: dict[str, Rows] = field(factory=dict)
    asked: list[str] = field(factory=list)

    def _answer(self, sql: str, args: Any) -> list[Row]:
        for piece, rows in self.rows.items():
            if piece in sql:
                return list(rows(args) if callable(rows) else rows)
        return []

    async def transaction(self, work: Any) -> Any:
        self.asked.append("transaction")
        return self.row

    async def query(self, sql: str, args: Any = ()) -> list[Row]:
        self.asked.append(sql.split()[0])
        return self._answer(sql, args)

    async def execute(self, sql: str, args: Any = ()) -> None:
        self.asked.append(sql.split()[0])

    async def ping(self) -> None:
        self.asked.append("ping")

    @property
    def writes(self) -> list[str]:
        """What was asked that may change something (reads left out)."""
        return [a for a in self.asked if a in WRITES]


class FakeAccounts(Accounts):
    """Sessions are the users' names (``PEOPLE``); the rest is the real code over the
    recording database."""

    async def session_user(self, token: str) -> User | None:
        return PEOPLE.get(token)


class FakeWorkspaces(Workspaces):
    """One workspace, whose roles are ``ROLES``; the rest is the real domain code."""

    async def role_of(self, workspace_id: str, user_id: str) -> Role:
        role = ROLES.get(user_id) if workspace_id == WORKSPACE else None
        if role is None:
            raise NotFound("no such workspace", code="workspace_not_found")
        return role


WHEN = datetime(2026, 1, 1, tzinfo=UTC)  # what PostgreSQL gives for a timestamptz
SANDBOX_ROW: Row = {
    "id": SANDBOX,
    "workspace_id": WORKSPACE,
    "name": "box",
    "is_local": False,
    "status": "running",
    "error": None,
    "created_at": WHEN,
    "last_activity_at": WHEN,
    "paused_at": None,
    "created_by_name": "owner",
}


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


def run_here(f: Callable[..., T], *args: Any) -> Deferred[T]:
    """A ``Passwords`` runner that hashes on the spot (no thread pool)."""
    return succeed(f(*args))


@define(eq=False)
class World:
    """What the API classes are built from: a clock, the recording database, events heard,
    the real accounts, cookies and domain objects over it."""

    row: Any = None  # what the database's transactions answer
    # The one sandbox, ``SANDBOX`` in ``WORKSPACE`` (a running cloud one unless a test says
    # otherwise): what the database answers for its row.
    sandbox: Row = field(factory=lambda: dict(SANDBOX_ROW))
    clock: Clock = field(factory=Clock)
    db: FakeDatabase = field(init=False)
    heard: Heard = field(factory=Heard)
    events: Events = field(factory=Events)
    # Cheap Argon2 parameters: the route tests check routes, not the hash's cost.
    passwords: Passwords = field(
        factory=lambda: Passwords(
            run_here, PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
        )
    )

    def __attrs_post_init__(self) -> None:
        self.db = FakeDatabase(self.row)
        self.db.rows[f"SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = %s"] = lambda args: (
            [dict(self.sandbox)] if args[0] == SANDBOX else []
        )
        self.events.subscribe(self.heard)

    @property
    def database(self) -> Any:
        """The recording database, where a ``db.pool.Database`` is wanted."""
        return self.db

    def accounts(self) -> FakeAccounts:
        return FakeAccounts(self.database, self.passwords, self.clock, 3600.0, self.events)

    def cookies(
        self, accounts: Accounts | None = None, tokens: TokenGuard | None = None
    ) -> SessionCookies:
        """The session cookies (and, with ``tokens``, API tokens) of the main site."""
        return SessionCookies(accounts or self.accounts(), False, 3600.0, ORIGIN, tokens)

    def workspaces(self) -> FakeWorkspaces:
        return FakeWorkspaces(self.database, events=self.events)

    def manager(
        self, workspaces: Workspaces | None = None, backend: FakeBackend | None = None
    ) -> SandboxManager:
        return SandboxManager(
            self.database,
            backend or FakeBackend(),
            workspaces or self.workspaces(),
            10,
            None,
            self.events,
        )


@frozen
class Answer:
    """One response: its status, its JSON body (None when empty) and its headers."""

    status: int
    body: Any
    headers: Mapping[bytes, Sequence[bytes]]

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def cookies(self) -> list[str]:
        """Every ``Set-Cookie`` of the answer."""
        return [v.decode() for v in self.headers.get(b"set-cookie", [])]

    @property
    def code(self) -> str:
        """The error code of a refusal."""
        code: str = self.body["error"]["code"]
        return code


def send(
    resource: IResource,
    method: str,
    path: str,
    body: Any = None,
    *,
    who: str | None = None,
    origin: str | None = ORIGIN,
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
    case: SynchronousTestCase,
) -> Answer:
    """One request to ``resource`` as ``who`` (a session cookie; signed out: None) from
    ``origin``, with ``body`` as JSON (or ``data`` as given), and its answer."""
    client: Any = StubTreq(resource)  # (its verbs are made at run time)
    sent = dict(headers or {})
    if who is not None:
        sent.setdefault("Cookie", f"cli_session={who}")
    if origin is not None:
        sent["Origin"] = origin
    if body is not None:
        sent.setdefault("Content-Type", "application/json")
        data = json.dumps(body).encode()
    answer = client.request(method, ORIGIN + path, data=data, headers=sent, allow_redirects=False)
    client.flush()
    response = case.successResultOf(answer)
    content = case.successResultOf(response.content())
    raw = {k.lower(): v for k, v in response.headers.getAllRawHeaders()}
    kind = (raw.get(b"content-type") or [b""])[0]
    parsed: Any = content
    if kind.startswith(b"text/plain"):
        parsed = content.decode("utf-8")  # (the metrics page)
    elif not content:
        parsed = None
    elif kind.startswith(b"application/json"):
        parsed = json.loads(content)
    return Answer(response.code, parsed, raw)


class RouteCase(SynchronousTestCase):
    """The checks every API's tests make: an answer as declared, a refusal that changed
    nothing."""

    world: World
    api_class: Any  # the API class under test (its ``app`` holds the declarations)
    api: Any  # its instance

    def call(self, method: str, path: str, body: Any = None, **options: Any) -> Answer:
        return send(self.api.app.resource(), method, path, body, case=self, **options)

    def answered(
        self, endpoint: str, status: int, method: str, path: str, body: Any = None, **options: Any
    ) -> Answer:
        """The answer of a request that must succeed with ``status``, its body valid against
        the schema ``endpoint`` declares for that status."""
        answer = self.call(method, path, body, **options)
        self.assertEqual(answer.status, status, answer.body)
        declaration = declared(self.api_class.app)[endpoint]
        self.assertIn(status, declaration.answers, f"{endpoint} declares no {status}")
        schema = declaration.answers[status]
        if schema is None:
            self.assertIsNone(answer.body)
        else:
            errors = [e.message for e in Draft202012Validator(schema).iter_errors(answer.body)]
            self.assertEqual(errors, [], f"{endpoint}'s {status} answer: {answer.body}")
        return answer

    def refused(
        self, method: str, path: str, body: Any = None, who: str | None = None, **options: Any
    ) -> Answer:
        """A refused request, which must have asked the database for no change and fired no
        event."""
        before = len(self.world.db.asked)
        heard = len(self.world.heard.said)
        answer = self.call(method, path, body, who=who, **options)
        self.assertGreaterEqual(answer.status, 400, answer.body)
        changes = [a for a in self.world.db.asked[before:] if a in WRITES]
        self.assertEqual(changes, [], f"{method} {path} as {who}")
        self.assertEqual(self.world.heard.said[heard:], [], f"{method} {path} as {who}")
        return answer

    def assert_matrix(
        self, method: str, path: str, body: Any, cells: Mapping[str | None, Any], **options: Any
    ) -> None:
        """Each caller's refusal: (status, code) or (status, code, field)."""
        for who, expected in cells.items():
            answer = self.refused(method, path, body, who, **options)
            error = answer.body["error"]
            got = (answer.status, error["code"]) + (
                (error.get("field"),) if len(expected) == 3 else ()
            )
            self.assertEqual(got, expected, f"{method} {path} as {who}: {error}")

    def assert_foreign_origin_refused(self, method: str, path: str, body: Any = None) -> None:
        """A state change from another origin is refused before anything else, signed in or
        out, member or not."""
        for who in ("owner", "stranger", None):
            answer = self.refused(method, path, body, who, origin=FOREIGN)
            self.assertEqual((answer.status, answer.code), (403, "bad_origin"), (path, who))


class Said(Resource):
    """A leaf that answers every request with ``text``."""

    isLeaf = True

    def __init__(self, text: bytes) -> None:
        super().__init__()
        self.text = text

    def render(self, request: IRequest) -> bytes:
        return self.text


@define(eq=False)
class FakeHub:
    """Stands in for ``tunnel.hub.TunnelHub``: the resource it hands a tunnel to says which
    sandbox it is for."""

    opened: list[str] = field(factory=list)

    def resource(self, sandbox_id: str) -> IResource:
        self.opened.append(sandbox_id)
        return Said(f"tunnel of {sandbox_id}".encode())


def main_site(world: World, agents: Any = None, **options: Any) -> MainSite:
    """The main site over ``world``: its own routes are what the tests drive (health,
    readiness, metrics, the API document, local agents); the areas it mounts are the real
    apps, built over the same fakes but unused here."""
    accounts = world.accounts()
    cookies = world.cookies(accounts)
    auth = AuthAPI(
        accounts,
        cookies,
        AuthLimits().guard(MemoryFailures(), world.clock),
        AuthLimits().registrations(MemoryFailures(), world.clock),
    )
    unused: Any = None  # (the mounted areas: their own tests drive them)
    return MainSite(
        world.database,
        Said(b"the Anthropic proxy"),
        auth,
        unused,
        unused,
        agents,
        options.pop("ready", lambda: True),
        **options,
    )


def areas(world: World, tokens: TokenGuard | None = None) -> dict[str, IResource]:
    """Every area the main site mounts (single sign-on, all public, aside), by prefix: the
    real apps over ``world``, with API tokens checked by ``tokens``."""
    db, clock = world.database, world.clock
    accounts = world.accounts()
    cookies = world.cookies(accounts, tokens)
    workspaces = world.workspaces()
    manager = world.manager(workspaces)
    apis: dict[str, Any] = {
        "/api/auth": AuthAPI(
            accounts,
            cookies,
            AuthLimits().guard(MemoryFailures(), clock),
            AuthLimits().registrations(MemoryFailures(), clock),
            tokens=ApiTokens(db, clock),
        ),
        "/api/workspaces": WorkspacesAPI(
            workspaces,
            cookies,
            manager,
            WorkspaceSandboxesAPI(manager),
            UsageStore(db),
            LocalAgents(db, workspaces, ORIGIN, ORIGIN + "/proxy/anthropic/v1"),
        ),
        "/api/invitations": InvitationsAPI(workspaces, cookies),
        "/api/admin": AdminAPI(InstanceAdmin(db, world.passwords), cookies, ORIGIN),
        "/api/sandboxes": SandboxesAPI(
            manager, cookies, SandboxAccess(db, clock, 3600.0), SandboxUrls("http", "x")
        ),
    }
    return {prefix: api.app.resource() for prefix, api in apis.items()}
