"""Registering local agents (tunnel/registrations.py): one-time codes, local sandbox rows,
tunnel tokens, and who may register into which workspace.

``FakeAgentsDatabase`` stands in for the database: it keeps the few tables ``LocalAgents``
uses in dicts, answers exactly the statements it sends (a statement it does not know fails
the test), rolls a transaction back when its work raises, and records every statement with
its arguments, so a test can check that no secret is ever sent in the clear."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg2.errors
import pytest
from twisted.internet.defer import Deferred

from cli_server.auth.tokens import token_hash
from cli_server.domain.audit import Action, Actor, Target
from cli_server.domain.errors import Forbidden, NameTaken, NotFound, Unauthorized
from cli_server.domain.workspaces import Workspaces
from cli_server.tunnel.registrations import CODE_SECONDS, LocalAgents
from tests.unit.deferreds import failure_of, result_of

T = TypeVar("T")
SERVER_URL = "https://cli.example.com"
ANTHROPIC_URL = "https://cli.example.com/anthropic/v1"
WS = "11111111-1111-1111-1111-111111111111"
OTHER_WS = "22222222-2222-2222-2222-222222222222"


class FakeAgentsDatabase:
    """The agent_codes, sandboxes, workspace_members and users tables, in memory."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
        self.codes: dict[bytes, dict[str, Any]] = {}
        self.sandboxes: dict[str, dict[str, Any]] = {}
        self.members: dict[tuple[str, str], str] = {}  # (workspace, user) -> role
        self.disabled: set[str] = set()
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def may_run(self, sandbox: dict[str, Any]) -> bool:
        """Whoever registered ``sandbox`` is an enabled developer or more in its workspace."""
        role = self.members.get((sandbox["workspace_id"], sandbox["created_by"]))
        return (
            role in ("developer", "maintainer", "owner")
            and sandbox["created_by"] not in self.disabled
        )

    # -- what Database and Transaction offer --------------------------------------------------

    async def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._run(sql, tuple(args))

    async def one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self._run(sql, tuple(args))
        return rows[0] if rows else None

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return len(self._run(sql, tuple(args)))

    async def transaction(self, work: Callable[[FakeAgentsDatabase], Awaitable[T]]) -> T:
        before = copy.deepcopy((self.codes, self.sandboxes))
        try:
            return await work(self)
        except BaseException:
            self.codes, self.sandboxes = before
            raise

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        self.statements.append((sql, args))
        if sql.startswith("INSERT INTO agent_codes"):
            code_hash, workspace_id, created_by, seconds = args
            expires = self.now + timedelta(seconds=seconds)
            self.codes[code_hash] = {
                "workspace_id": workspace_id,
                "created_by": created_by,
                "expires_at": expires,
                "used_at": None,
            }
            return [{"expires_at": expires}]
        if sql.startswith("UPDATE agent_codes SET used_at"):
            code = self.codes.get(args[0])
            if code is None or code["used_at"] is not None:
                return []
            code["used_at"] = self.now
            fresh = code["expires_at"] > self.now
            return [
                {"workspace_id": code["workspace_id"], "created_by": code["created_by"]}
                | {"fresh": fresh}
            ]
        if sql.startswith("SELECT role FROM workspace_members"):
            role = self.members.get((args[0], args[1]))
            return [{"role": role}] if role else []
        if sql.startswith("SELECT m.role FROM workspace_members"):
            role = self.members.get((args[0], args[1]))
            return [{"role": role}] if role and args[1] not in self.disabled else []
        if sql.startswith("INSERT INTO sandboxes"):
            sandbox_id, workspace_id, name, created_by, password, tunnel, proxy = args
            if any(
                s["workspace_id"] == workspace_id and s["name"] == name
                for s in self.sandboxes.values()
            ):
                raise psycopg2.errors.UniqueViolation()
            self.sandboxes[sandbox_id] = {
                "workspace_id": workspace_id,
                "name": name,
                "is_local": True,  # (the statement inserts is_local true, backend local)
                "created_by": created_by,
                "opencode_password": password,
                "tunnel_token_hash": tunnel,
                "proxy_token_hash": proxy,
            }
            return []
        if sql.startswith("SELECT 1 FROM sandboxes s WHERE s.id = %s AND s.is_local"):
            sandbox = self.sandboxes.get(args[0])
            ok = (
                sandbox is not None
                and sandbox["is_local"]
                and sandbox["tunnel_token_hash"] == args[1]
                and self.may_run(sandbox)
            )
            return [{"?column?": 1}] if ok else []
        if sql.startswith("DELETE FROM agent_codes WHERE created_by"):
            unused = [h for h, c in self.codes.items() if c["created_by"] == args[0]]
            for h in unused:
                if self.codes[h]["used_at"] is None:
                    del self.codes[h]
            return []
        if sql.startswith("SELECT s.id FROM sandboxes s WHERE s.created_by"):
            user_id, workspace_id, _ = args
            return [
                {"id": sandbox_id}
                for sandbox_id, s in self.sandboxes.items()
                if s["created_by"] == user_id
                and workspace_id in (None, s["workspace_id"])
                and s["is_local"]
                and not self.may_run(s)
            ]
        if sql.startswith("UPDATE sandboxes SET proxy_token_hash = NULL"):
            self.sandboxes[args[0]]["proxy_token_hash"] = None
            return []
        if sql.startswith("DELETE FROM agent_codes WHERE expires_at"):
            old = [h for h, c in self.codes.items() if c["expires_at"] < self.now - timedelta(1)]
            for h in old:
                del self.codes[h]
            return []
        raise AssertionError(f"a statement the fake does not know: {sql}")

    def sent(self, secret: str) -> bool:
        """Whether ``secret`` went to the database in the clear, in any statement."""
        return any(secret in sql or secret in args for sql, args in self.statements)


class RecordingAudit:
    """Stands in for AuditLog: keeps what would have been recorded."""

    def __init__(self) -> None:
        self.records: list[tuple[Action, Actor, dict[str, Any]]] = []

    async def record(self, action: Action, actor: Actor, **kw: Any) -> None:
        kw.pop("tx", None)
        self.records.append((action, actor, kw))


def run(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


@pytest.fixture
def db() -> FakeAgentsDatabase:
    db = FakeAgentsDatabase()
    db.members[(WS, "dev")] = "developer"
    db.members[(WS, "guest")] = "guest"
    db.members[(OTHER_WS, "dev")] = "owner"
    return db


@pytest.fixture
def revoked() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def audit() -> RecordingAudit:
    return RecordingAudit()


@pytest.fixture
def agents(
    db: FakeAgentsDatabase, revoked: list[tuple[str, str]], audit: RecordingAudit
) -> LocalAgents:
    fake: Any = db
    recording: Any = audit
    return LocalAgents(
        fake,
        Workspaces(fake, ()),
        SERVER_URL,
        ANTHROPIC_URL,
        on_revoke=lambda sandbox_id, why: revoked.append((sandbox_id, why)),
        audit=recording,
    )


def code_for(agents: LocalAgents, workspace: str = WS, user: str = "dev") -> str:
    answer = result_of(run(agents.mint_code(workspace, user)))
    code: str = answer["code"]
    return code


def test_a_code_is_single_use_stored_hashed_and_ten_minutes_long(
    agents: LocalAgents, db: FakeAgentsDatabase
) -> None:
    """A developer gets a code, the server's URL and when it expires; only its hash is
    stored."""
    answer = result_of(run(agents.mint_code(WS, "dev")))
    assert answer["server_url"] == SERVER_URL
    assert answer["expires_at"] == "2026-12-07T03:10:00Z"
    assert CODE_SECONDS == 600
    assert list(db.codes) == [token_hash(answer["code"])]
    assert not db.sent(answer["code"])


def test_who_may_get_a_code(agents: LocalAgents) -> None:
    """Developers or more get codes; a guest is refused (403), a stranger sees no workspace
    (404)."""
    code_for(agents, OTHER_WS, "dev")  # (an owner there)
    assert failure_of(run(agents.mint_code(WS, "guest"))).check(Forbidden)
    assert failure_of(run(agents.mint_code(WS, "stranger"))).check(NotFound)


def test_register_makes_a_local_sandbox_with_a_hashed_tunnel_token(
    agents: LocalAgents, db: FakeAgentsDatabase, audit: RecordingAudit
) -> None:
    """The code buys a local sandbox in its workspace, registered by the code's creator; the
    agent gets a tunnel token that only its hash stands for in the database."""
    code = code_for(agents)
    answer = result_of(run(agents.register(code, "laptop", False, address="192.0.2.7")))
    assert set(answer) == {"sandbox_id", "workspace_id", "tunnel_token", "name"}
    assert answer["workspace_id"] == WS and answer["name"] == "laptop"
    sandbox = db.sandboxes[answer["sandbox_id"]]
    assert sandbox["created_by"] == "dev"
    assert sandbox["tunnel_token_hash"] == token_hash(answer["tunnel_token"])
    assert sandbox["proxy_token_hash"] is None
    assert not db.sent(answer["tunnel_token"]) and not db.sent(code)
    assert audit.records == [
        (
            Action.AGENT_REGISTERED,
            Actor("dev", None, "192.0.2.7"),
            {
                "workspace_id": WS,
                "target": Target("sandbox", answer["sandbox_id"], "laptop"),
                "details": {"claude_from_server": False},
            },
        )
    ]


def test_register_with_the_servers_key(agents: LocalAgents, db: FakeAgentsDatabase) -> None:
    """Asking for the server's Anthropic key adds a proxy token (stored hashed) and where the
    proxy is."""
    answer = result_of(run(agents.register(code_for(agents), "laptop", True)))
    anthropic = answer["anthropic"]
    assert anthropic["base_url"] == ANTHROPIC_URL
    stored = db.sandboxes[answer["sandbox_id"]]["proxy_token_hash"]
    assert stored == token_hash(anthropic["api_key"])
    assert not db.sent(anthropic["api_key"])


def test_a_code_works_once(agents: LocalAgents) -> None:
    """The second registration with the same code is refused."""
    code = code_for(agents)
    result_of(run(agents.register(code, "laptop", False)))
    failure = failure_of(run(agents.register(code, "laptop 2", False)))
    assert failure.check(Unauthorized)
    assert failure.value.code == "invalid_code"


def test_an_unknown_code_is_refused(agents: LocalAgents, db: FakeAgentsDatabase) -> None:
    assert failure_of(run(agents.register("made-up", "laptop", False))).check(Unauthorized)
    assert db.sandboxes == {}


def test_an_expired_code_is_refused_and_burnt(agents: LocalAgents, db: FakeAgentsDatabase) -> None:
    """After ten minutes the code is refused, and stays used."""
    code = code_for(agents)
    db.advance(CODE_SECONDS + 1)
    assert failure_of(run(agents.register(code, "laptop", False))).check(Unauthorized)
    assert db.codes[token_hash(code)]["used_at"] is not None
    assert db.sandboxes == {}


def test_a_code_is_only_as_good_as_its_creator_now(
    agents: LocalAgents, db: FakeAgentsDatabase
) -> None:
    """A creator demoted to guest, or disabled, since making the code: the code is refused."""
    demoted = code_for(agents)
    db.members[(WS, "dev")] = "guest"
    assert failure_of(run(agents.register(demoted, "laptop", False))).check(Unauthorized)
    db.members[(WS, "dev")] = "developer"
    disabled = code_for(agents)
    db.disabled.add("dev")
    assert failure_of(run(agents.register(disabled, "laptop", False))).check(Unauthorized)
    assert db.sandboxes == {}


def test_a_taken_name_leaves_the_code_usable(agents: LocalAgents, db: FakeAgentsDatabase) -> None:
    """409 for a name the workspace already has; the code still works with another name."""
    result_of(run(agents.register(code_for(agents), "laptop", False)))
    code = code_for(agents)
    failure = failure_of(run(agents.register(code, "laptop", False)))
    assert failure.check(NameTaken)
    assert db.codes[token_hash(code)]["used_at"] is None
    answer = result_of(run(agents.register(code, "laptop (2)", False)))
    assert answer["name"] == "laptop (2)"


def test_verify_the_tunnel_token(agents: LocalAgents, db: FakeAgentsDatabase) -> None:
    """The sandbox's own token verifies; another token, another sandbox's id, or a registrant
    who is no longer a developer does not."""
    first = result_of(run(agents.register(code_for(agents), "one", False)))
    second = result_of(run(agents.register(code_for(agents), "two", False)))
    assert result_of(run(agents.verify(first["sandbox_id"], first["tunnel_token"])))
    assert not result_of(run(agents.verify(first["sandbox_id"], second["tunnel_token"])))
    assert not result_of(run(agents.verify("no-such-sandbox", first["tunnel_token"])))
    db.members[(WS, "dev")] = "guest"
    assert not result_of(run(agents.verify(first["sandbox_id"], first["tunnel_token"])))


def test_a_member_who_lost_the_role_has_their_agents_revoked(
    agents: LocalAgents,
    db: FakeAgentsDatabase,
    revoked: list[tuple[str, str]],
    audit: RecordingAudit,
) -> None:
    """Their local sandboxes in that workspace lose the Anthropic token, their tunnels are
    closed for good, and each revocation is audited; other workspaces are untouched."""
    here = result_of(run(agents.register(code_for(agents), "here", True)))
    there = result_of(run(agents.register(code_for(agents, OTHER_WS), "there", True)))
    audit.records.clear()
    db.members[(WS, "dev")] = "guest"
    result_of(run(agents.member_changed("dev", WS)))
    why = "whoever registered this agent is no longer a developer in the workspace"
    assert revoked == [(here["sandbox_id"], why)]
    assert db.sandboxes[here["sandbox_id"]]["proxy_token_hash"] is None
    assert db.sandboxes[there["sandbox_id"]]["proxy_token_hash"] is not None
    assert audit.records == [
        (
            Action.AGENT_REVOKED,
            Actor.system(),
            {"target": Target("sandbox", here["sandbox_id"]), "details": {"reason": why}},
        )
    ]


def test_a_member_still_a_developer_keeps_their_agents(
    agents: LocalAgents, revoked: list[tuple[str, str]]
) -> None:
    result_of(run(agents.register(code_for(agents), "here", False)))
    result_of(run(agents.member_changed("dev", WS)))
    assert revoked == []


def test_a_disabled_account_loses_agents_and_codes_everywhere(
    agents: LocalAgents, db: FakeAgentsDatabase, revoked: list[tuple[str, str]]
) -> None:
    """Disabling the account revokes its agents in every workspace and deletes its unused
    codes (a used one stays, as the record of its registration)."""
    here = result_of(run(agents.register(code_for(agents), "here", False)))
    there = result_of(run(agents.register(code_for(agents, OTHER_WS), "there", False)))
    unused = code_for(agents)
    db.disabled.add("dev")
    result_of(run(agents.account_disabled("dev")))
    assert sorted(sandbox for sandbox, _ in revoked) == sorted(
        [here["sandbox_id"], there["sandbox_id"]]
    )
    assert token_hash(unused) not in db.codes
    assert len(db.codes) == 2  # the two used ones
    assert failure_of(run(agents.register(unused, "again", False))).check(Unauthorized)


def test_purge_forgets_codes_a_day_after_they_expired(
    agents: LocalAgents, db: FakeAgentsDatabase
) -> None:
    old = code_for(agents)
    db.advance(CODE_SECONDS + 86400 + 1)
    recent = code_for(agents)
    result_of(run(agents.purge_expired()))
    assert list(db.codes) == [token_hash(recent)]
    assert token_hash(old) not in db.codes
