"""Local agents' API against real PostgreSQL: one-time codes, registration and the tunnel
endpoint, with in-process Autobahn clients standing in for agents, well-behaved and hostile
(the real `twistd cli-agent` is exercised in test_tunnel.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import formatEvent, globalLogPublisher

from cli_server.auth.tokens import token_hash
from cli_server.tunnel import frames, hub
from cli_server.tunnel.frames import Frame

from .conftest import Running, _reactor
from .helpers import Api, Reply, wait_until
from .test_sandboxes_api import status_of, team, wait_status

ZERO = "00000000-0000-4000-8000-000000000000"
JSON = {"Content-Type": "application/json"}
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


async def mint(client: Api, wid: str) -> str:
    made = await client.call("POST", f"/api/workspaces/{wid}/agent-code")
    assert made.code == 201, made
    return str(made.body["code"])


def register(app: Running, code: Any, name: Any = "laptop", **extra: Any) -> Deferred[Reply]:
    """As the agent does it: no session, just the code."""
    return app.client().call("POST", "/api/agent/register", {"code": code, "name": name, **extra})


async def local_sandbox(
    app: Running, client: Api, wid: str, name: str = "laptop"
) -> tuple[str, str]:
    """A registered local sandbox: (its id, its tunnel token)."""
    made = await register(app, await mint(client, wid), name)
    assert made.code == 201, made
    return str(made.body["sandbox_id"]), str(made.body["tunnel_token"])


def stored_values(rows: list[dict[str, Any]]) -> list[bytes]:
    """Every value of every row, as bytes (bytea raw, anything else as its text)."""
    return [
        bytes(v) if isinstance(v, memoryview | bytes) else str(v).encode()
        for row in rows
        for v in row.values()
    ]


def nowhere_in(secret: str, rows: list[dict[str, Any]]) -> bool:
    raw = secret.encode()
    return rows != [] and not any(raw in value for value in stored_values(rows))


# -- an in-process agent (or something pretending to be one) -------------------------------


class Peer(WebSocketClientProtocol):
    """Records what the server sends; the test decides what to send."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.texts = 0
        self.did_open = False
        self.did_close = False
        self.close_code: int | None = None

    def onOpen(self) -> None:
        self.did_open = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.frames.append(frames.decode(payload))
        else:
            self.texts += 1

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.did_close, self.close_code = True, code

    def send(self, message: bytes, binary: bool = True) -> None:
        self.sendMessage(message, isBinary=binary)

    def hello(self, versions: list[int] | None = None) -> None:
        self.send(frames.encode("hello", versions=versions or [1], agent="test"))

    def of_type(self, type: str) -> list[Frame]:
        return [f for f in self.frames if f.type == type]

    @property
    def goaways(self) -> list[str]:
        return [f["code"] for f in self.of_type("goaway")]


async def dial(
    app: Running, sandbox_id: str, token: str | None, *, query: str | None = None
) -> Peer:
    """A WebSocket to the tunnel endpoint, the token in the header (or ``query`` as is)."""
    port = app.port.getHost().port
    url = f"ws://127.0.0.1:{port}/api/tunnel/{sandbox_id}" + (f"?{query}" if query else "")
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    factory = WebSocketClientFactory(url, headers=headers)
    factory.protocol = Peer
    peer = await TCP4ClientEndpoint(_reactor(), "127.0.0.1", port).connect(factory)
    assert isinstance(peer, Peer)
    await wait_until(_reactor(), lambda: peer.did_open or peer.did_close, timeout=10)
    return peer


async def received(peer: Peer, type: str, count: int = 1) -> Frame:
    await wait_until(_reactor(), lambda: len(peer.of_type(type)) >= count, timeout=10)
    return peer.of_type(type)[count - 1]


async def closed(peer: Peer, timeout: float = 10) -> int | None:
    await wait_until(_reactor(), lambda: peer.did_close, timeout=timeout)
    return peer.close_code


async def connected(app: Running, sandbox_id: str, token: str | None, **kw: Any) -> Peer:
    """A well-behaved agent: hello, then welcome."""
    peer = await dial(app, sandbox_id, token, **kw)
    assert peer.did_open, "the WebSocket handshake failed"
    peer.hello()
    welcome = await received(peer, "welcome")
    assert welcome.fields == {"version": 1, "sandbox_id": sandbox_id}
    return peer


async def still_answers(peer: Peer, n: int) -> None:
    """The tunnel is open and the server reads it: a ping comes back as a pong."""
    assert not peer.did_close
    peer.send(frames.encode("ping", n=n))
    await wait_until(_reactor(), lambda: any(f["n"] == n for f in peer.of_type("pong")))


# -- codes ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_agent_code_roles_origin_and_storage(app: Running) -> None:
    """Developers and up get a 10-minute code; guests 403, outsiders and unknown ids 404;
    cross-origin posts 403; only the code's hash is stored."""
    people, wid = await team(app)
    codes: dict[str, str] = {}
    for name in ("owner", "maintainer", "developer"):
        made = await people[name].call("POST", f"/api/workspaces/{wid}/agent-code")
        assert made.code == 201, (name, made)
        assert set(made.body) == {"code", "expires_at", "server_url"}
        assert made.body["server_url"] == "http://localhost:8080"
        expires = datetime.fromisoformat(made.body["expires_at"].replace("Z", "+00:00"))
        left = expires - datetime.now(UTC)
        assert timedelta(minutes=9) < left <= timedelta(minutes=10, seconds=5), left
        assert len(made.body["code"]) >= 32
        codes[name] = made.body["code"]
    assert len(set(codes.values())) == 3

    for actor, status, error in [
        ("guest", 403, "forbidden"),
        ("outsider", 404, "workspace_not_found"),
        ("anonymous", 401, "unauthorized"),
    ]:
        reply = await people[actor].call("POST", f"/api/workspaces/{wid}/agent-code")
        assert (reply.code, reply.error_code) == (status, error), (actor, reply)
    for unknown in (ZERO, "not-a-uuid", "0000"):
        reply = await people["owner"].call("POST", f"/api/workspaces/{unknown}/agent-code")
        assert (reply.code, reply.error_code) == (404, "workspace_not_found"), (unknown, reply)
    for origin in ("http://evil.example", "http://oc-123.localhost:8080", "null"):
        reply = await people["owner"].call(
            "POST", f"/api/workspaces/{wid}/agent-code", headers={"Origin": origin}
        )
        assert (reply.code, reply.error_code) == (403, "bad_origin"), (origin, reply)
    own = await people["developer"].call(
        "POST", f"/api/workspaces/{wid}/agent-code", headers={"Origin": "http://localhost:8080"}
    )
    assert own.code == 201, own
    codes["developer (same origin)"] = own.body["code"]
    wrong_method = await people["owner"].call("GET", f"/api/workspaces/{wid}/agent-code")
    assert wrong_method.code == 405 and wrong_method.error_code

    rows = await app.db.query("SELECT * FROM agent_codes")
    assert len(rows) == len(codes), "a refused request stored a code"
    for code in codes.values():
        assert nowhere_in(code, rows), "a code is stored in the clear"
    by_hash = {bytes(r["code_hash"]): r for r in rows}
    for name, code in codes.items():
        row = by_hash[token_hash(code)]
        assert str(row["workspace_id"]) == wid and row["used_at"] is None
        creator = people[name.split()[0]].user
        assert creator is not None and str(row["created_by"]) == creator["id"]


# -- registration --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_register_makes_an_offline_local_sandbox(app: Running) -> None:
    """A good code buys a local sandbox (offline until its agent connects) and a tunnel token
    stored only as a hash; the same code again is refused."""
    people, wid = await team(app)
    developer = people["developer"]
    assert developer.user is not None
    code = await mint(developer, wid)
    made = await register(app, code, "  my laptop  ")
    assert made.code == 201, made
    assert set(made.body) == {"sandbox_id", "workspace_id", "tunnel_token", "name"}
    assert made.body["workspace_id"] == wid and made.body["name"] == "my laptop"
    sid, token = made.body["sandbox_id"], made.body["tunnel_token"]
    assert len(token) >= 40

    listed = await people["guest"].call("GET", f"/api/workspaces/{wid}/sandboxes")
    assert listed.code == 200
    (shown,) = listed.body
    assert (shown["id"], shown["name"], shown["is_local"], shown["status"]) == (
        sid,
        "my laptop",
        True,
        "offline",
    )
    assert token not in json.dumps(listed.body)
    got = await people["guest"].call("GET", f"/api/sandboxes/{sid}")
    assert got.code == 200 and token not in json.dumps(got.body)

    rows = await app.db.query("SELECT * FROM sandboxes WHERE id = %s", (sid,))
    (row,) = rows
    assert (row["is_local"], row["status"], row["backend"]) == (True, "offline", "local")
    assert str(row["created_by"]) == developer.user["id"]
    assert bytes(row["tunnel_token_hash"]) == token_hash(token)
    assert row["proxy_token_hash"] is None
    assert nowhere_in(token, rows) and nowhere_in(code, rows)
    codes = await app.db.query("SELECT * FROM agent_codes")
    assert nowhere_in(code, codes) and codes[0]["used_at"] is not None

    again = await register(app, code, "second")
    assert (again.code, again.error_code) == (401, "invalid_code"), again
    assert token not in json.dumps(again.body)
    bogus = await register(app, "no-such-code", "third")
    assert (bogus.code, bogus.error_code) == (401, "invalid_code"), bogus
    assert len(await app.db.query("SELECT id FROM sandboxes")) == 1


@pytest_twisted.ensureDeferred
async def test_register_with_the_server_key(app: Running) -> None:
    """use_server_key: an Anthropic proxy token for the laptop, stored only as a hash."""
    people, wid = await team(app)
    made = await register(app, await mint(people["owner"], wid), use_server_key=True)
    assert made.code == 201, made
    anthropic = made.body["anthropic"]
    assert set(anthropic) == {"base_url", "api_key"}
    assert anthropic["base_url"] == "http://localhost:8080/proxy/anthropic/v1"
    key = anthropic["api_key"]
    assert len(key) >= 40 and key != made.body["tunnel_token"]
    rows = await app.db.query("SELECT * FROM sandboxes")
    assert bytes(rows[0]["proxy_token_hash"]) == token_hash(key)
    assert nowhere_in(key, rows)
    plain = await register(app, await mint(people["owner"], wid), "desk", use_server_key=False)
    assert plain.code == 201 and "anthropic" not in plain.body


@pytest_twisted.ensureDeferred
async def test_expired_and_disowned_codes_are_refused(app: Running) -> None:
    """A code expires, and is only as good as its creator's current role; a refused code is
    burnt all the same."""
    people, wid = await team(app)
    owner = people["owner"]
    assert people["developer"].user is not None and people["maintainer"].user is not None
    developer_id = people["developer"].user["id"]
    maintainer_id = people["maintainer"].user["id"]

    expired = await mint(owner, wid)
    await app.db.execute(
        "UPDATE agent_codes SET expires_at = now() - interval '1 s' WHERE code_hash = %s",
        (token_hash(expired),),
    )
    reply = await register(app, expired)
    assert (reply.code, reply.error_code) == (401, "invalid_code"), reply

    removed = await mint(people["developer"], wid)
    gone = await owner.call("DELETE", f"/api/workspaces/{wid}/members/{developer_id}")
    assert gone.code == 204
    reply = await register(app, removed)
    assert (reply.code, reply.error_code) == (401, "invalid_code"), reply

    # maintainer -> developer still may; -> guest may not.
    still, demoted = await mint(people["maintainer"], wid), await mint(people["maintainer"], wid)
    path = f"/api/workspaces/{wid}/members/{maintainer_id}"
    assert (await owner.call("PUT", path, {"role": "developer"})).code == 200
    assert (await register(app, still)).code == 201
    assert (await owner.call("PUT", path, {"role": "guest"})).code == 200
    reply = await register(app, demoted)
    assert (reply.code, reply.error_code) == (401, "invalid_code"), reply
    # Promoted again, the refused code stays burnt.
    assert (await owner.call("PUT", path, {"role": "developer"})).code == 200
    assert (await register(app, demoted)).code == 401

    assert len(await app.db.query("SELECT id FROM sandboxes")) == 1


@pytest_twisted.ensureDeferred
async def test_a_code_works_once_under_a_race(app: Running) -> None:
    people, wid = await team(app)
    code = await mint(people["developer"], wid)
    replies = await gatherResults([register(app, code, f"racer {n}") for n in range(6)])
    assert sorted(r.code for r in replies) == [201, 401, 401, 401, 401, 401]
    assert len(await app.db.query("SELECT id FROM sandboxes")) == 1


@pytest_twisted.ensureDeferred
async def test_register_bad_bodies(app: Running) -> None:
    """400 naming the field, 415 for non-JSON; none of it burns the code."""
    people, wid = await team(app)
    code = await mint(people["developer"], wid)
    problems = []
    for body, status, field in [
        ({"name": "laptop"}, 400, "code"),
        ({"code": None, "name": "laptop"}, 400, "code"),
        ({"code": 5, "name": "laptop"}, 400, "code"),
        ({"code": "", "name": "laptop"}, 400, "code"),
        ({"code": "x" * 201, "name": "laptop"}, 400, "code"),
        ({"code": code}, 400, "name"),
        ({"code": code, "name": ""}, 400, "name"),
        ({"code": code, "name": "   "}, 400, "name"),
        ({"code": code, "name": "x" * 101}, 400, "name"),
        ({"code": code, "name": ["laptop"]}, 400, "name"),
        ({"code": code, "name": "a\u0000b"}, 400, "name"),
        ({"code": code, "name": "\u202elaptop"}, 400, "name"),
        ({"code": code, "name": "laptop", "use_server_key": "yes"}, 400, "use_server_key"),
        ({"code": code, "name": "laptop", "use_server_key": 1}, 400, "use_server_key"),
        ({"code": code, "name": "laptop", "use_server_key": None}, 400, "use_server_key"),
        ({"code": code, "name": "laptop", "use_server_key": "true"}, 400, "use_server_key"),
    ]:
        reply = await app.client().call("POST", "/api/agent/register", body)
        got = (reply.code, reply.body["error"].get("field") if reply.error_code else None)
        if got != (status, field):
            problems.append(f"{body}: {reply.code} {reply.body}")
    valid = json.dumps({"code": code, "name": "laptop"}).encode()
    for raw, headers, status in [
        (valid, {"Content-Type": "text/plain"}, 415),
        (valid, {}, 415),
        (b"{not json", JSON, 400),
        (b"[1, 2]", JSON, 400),
        (b"", JSON, 400),
        (b'{"code": "' + b"x" * (2 << 20) + b'"}', JSON, 413),
    ]:
        reply = await app.client().call("POST", "/api/agent/register", raw=raw, headers=headers)
        if reply.code != status or not reply.error_code:
            problems.append(f"{raw[:40]!r} {headers}: {reply.code} {reply.body}")
    assert not problems, "\n".join(problems)
    assert await app.db.query("SELECT id FROM sandboxes") == []
    made = await register(app, code, "x" * 100)
    assert made.code == 201 and made.body["name"] == "x" * 100, made


# -- the tunnel endpoint, before any upgrade ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tunnel_refuses_bad_tokens_before_upgrading(app: Running) -> None:
    people, wid = await team(app)
    a, token_a = await local_sandbox(app, people["developer"], wid, "a")
    b, token_b = await local_sandbox(app, people["developer"], wid, "b")
    client = app.client()
    for path, headers in [
        (f"/api/tunnel/{a}", {}),
        (f"/api/tunnel/{a}", {"Authorization": "Bearer wrong"}),
        (f"/api/tunnel/{a}", {"Authorization": "Bearer "}),
        (f"/api/tunnel/{a}", {"Authorization": f"Bearer {token_b}"}),
        (f"/api/tunnel/{a}", {"Authorization": f"Basic {token_a}"}),
        (f"/api/tunnel/{a}?token=wrong", {}),
        (f"/api/tunnel/{a}?token={token_b}", {}),
        (f"/api/tunnel/{ZERO}", {"Authorization": f"Bearer {token_a}"}),
    ]:
        reply = await client.call("GET", path, headers={**UPGRADE, **headers})
        assert (reply.code, reply.error_code) == (401, "invalid_tunnel_token"), (path, headers)
        assert reply.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
    bearer = {"Authorization": f"Bearer {token_a}"}
    plain = await client.call("GET", f"/api/tunnel/{a}", headers=bearer)
    assert (plain.code, plain.error_code) == (400, "invalid_request"), plain
    for malformed in ("not-a-uuid", "0000", f"{a}x"):
        reply = await client.call("GET", f"/api/tunnel/{malformed}", headers={**UPGRADE, **bearer})
        assert (reply.code, reply.error_code) == (404, "sandbox_not_found"), (malformed, reply)
    posted = await client.call("POST", f"/api/tunnel/{a}", headers=bearer)
    assert posted.code in (404, 405) and posted.error_code, posted  # (JSON, whichever)

    # The same through a real WebSocket client: the handshake fails, nothing is attached.
    for sandbox, token in [(a, "wrong"), (a, token_b), (a, None)]:
        peer = await dial(app, sandbox, token)
        assert not peer.did_open and peer.did_close, (sandbox, token)
    assert app.server.tunnels.count == 0
    assert await status_of(people["owner"], a) == "offline"


# -- hostile peers -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_garbage_peer_cannot_disturb_another_tunnel(app: Running) -> None:
    """A well-behaved agent gets welcome and its sandbox goes running; a second tunnel that
    sends garbage is closed (4002) while the first one carries on; a closed tunnel's
    sandbox shows offline."""
    people, wid = await team(app)
    owner = people["owner"]
    good, good_token = await local_sandbox(app, people["developer"], wid, "good")
    bad, bad_token = await local_sandbox(app, people["developer"], wid, "bad")

    first = await connected(app, good, good_token)
    await wait_status(owner, good, "running")
    (row,) = await app.db.query("SELECT last_activity_at FROM sandboxes WHERE id = %s", (good,))
    assert row["last_activity_at"] is not None

    second = await dial(app, bad, bad_token)
    assert second.did_open
    second.send(b"\x00\x00\x00\xffnot json")
    assert await closed(second) == 4002
    assert second.goaways == ["protocol"]
    assert await status_of(owner, bad) == "offline"

    await still_answers(first, 7)
    assert await status_of(owner, good) == "running"
    assert app.server.tunnels.count == 1 and app.server.tunnels.session(good) is not None

    first.sendClose(1000)
    assert await closed(first) == 1000
    await wait_status(owner, good, "offline")
    assert app.server.tunnels.count == 0

    # Back, then gone without a word (the TCP connection just drops): offline too.
    again = await connected(app, good, good_token)
    await wait_status(owner, good, "running")
    assert again.transport is not None
    again.transport.abortConnection()
    await wait_status(owner, good, "offline")
    assert app.server.tunnels.session(good) is None


@pytest_twisted.ensureDeferred
async def test_a_silent_peer_is_closed_after_the_hello_timeout(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real server: closed with 4002, and the sandbox stays offline. When it is
    closed, by the hub's clock, is tests/unit/tunnel/test_hello.py's to prove."""
    monkeypatch.setattr(hub, "HELLO_TIMEOUT", 0.5)
    people, wid = await team(app)
    sid, token = await local_sandbox(app, people["developer"], wid)
    peer = await dial(app, sid, token)
    assert peer.did_open
    assert await closed(peer, timeout=5) == 4002
    assert peer.goaways == ["protocol"] and not peer.of_type("welcome")
    assert app.server.tunnels.count == 0
    assert await status_of(people["owner"], sid) == "offline"


@pytest_twisted.ensureDeferred
async def test_an_unknown_protocol_version_is_refused(app: Running) -> None:
    people, wid = await team(app)
    sid, token = await local_sandbox(app, people["developer"], wid)
    peer = await dial(app, sid, token)
    peer.hello([99])
    assert await closed(peer) == 4002
    assert peer.goaways == ["version"] and not peer.of_type("welcome")
    assert "speaks tunnel protocol 1" in peer.of_type("goaway")[0]["message"]
    assert app.server.tunnels.count == 0
    assert await status_of(people["owner"], sid) == "offline"
    # An agent that also speaks versions we know gets the highest one in common.
    newer = await dial(app, sid, token)
    newer.hello([99, 1, 2])
    assert (await received(newer, "welcome"))["version"] == 2


@pytest_twisted.ensureDeferred
async def test_a_second_connection_replaces_the_first(app: Running) -> None:
    people, wid = await team(app)
    owner = people["owner"]
    sid, token = await local_sandbox(app, people["developer"], wid)
    first = await connected(app, sid, token)
    await wait_status(owner, sid, "running")
    # Connected but no hello yet: the first is still the live one.
    second = await dial(app, sid, token)
    await still_answers(first, 1)
    second.hello()
    await received(second, "welcome")
    assert await closed(first) == 4009
    assert first.goaways == ["replaced"]
    await still_answers(second, 2)
    assert await status_of(owner, sid) == "running"
    assert app.server.tunnels.count == 1
    second.sendClose(1000)
    await wait_status(owner, sid, "offline")


@pytest_twisted.ensureDeferred
async def test_deleting_the_sandbox_revokes_its_tunnel(app: Running) -> None:
    people, wid = await team(app)
    sid, token = await local_sandbox(app, people["developer"], wid)
    other, other_token = await local_sandbox(app, people["developer"], wid, "other")
    peer = await connected(app, sid, token)
    bystander = await connected(app, other, other_token)
    await wait_status(people["owner"], sid, "running")
    early = await dial(app, sid, token)  # let in with the token, no hello yet
    assert early.did_open
    deleted = await people["developer"].call("DELETE", f"/api/sandboxes/{sid}")
    assert deleted.code == 204, deleted
    assert await closed(peer) == 4003
    assert peer.goaways == ["revoked"]
    assert await closed(early) == 4003, "a connection not yet attached outlived its sandbox"
    assert early.goaways == ["revoked"] and not early.of_type("welcome")
    refused = await app.client().call(
        "GET", f"/api/tunnel/{sid}", headers={**UPGRADE, "Authorization": f"Bearer {token}"}
    )
    assert (refused.code, refused.error_code) == (401, "invalid_tunnel_token")
    assert not (await dial(app, sid, token)).did_open
    await still_answers(bystander, 3)
    assert app.server.tunnels.session(sid) is None and app.server.tunnels.count == 1


def _raw(header: Any, payload: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(4, "big") + encoded + payload


PROTOCOL_ERRORS = [
    ("text message", b"hello", False),
    ("short", b"\x00\x00", True),
    ("length past the end", b"\x00\x00\x00\xffnot json", True),
    ("header too large", _raw({"t": "ping", "s": 0, "n": 1, "x": "y" * 5000}), True),
    ("not JSON", b"\x00\x00\x00\x03{{{", True),
    ("not an object", _raw([1, 2]), True),
    ("unknown type", _raw({"t": "shout", "s": 0}), True),
    ("extra field", _raw({"t": "ping", "s": 0, "n": 1, "x": 2}), True),
    ("missing field", _raw({"t": "ping", "s": 0}), True),
    ("wrong type", _raw({"t": "ping", "s": 0, "n": "1"}), True),
    ("boolean int", _raw({"t": "ping", "s": 0, "n": True}), True),
    ("negative stream", _raw({"t": "data", "s": -1}), True),
    ("tunnel frame on a stream", _raw({"t": "ping", "s": 3, "n": 1}), True),
    ("payload on ping", _raw({"t": "ping", "s": 0, "n": 1}, b"x"), True),
    ("payload over 16 KiB", _raw({"t": "data", "s": 1}, b"x" * (17 * 1024)), True),
    ("zero credit", _raw({"t": "credit", "s": 1, "n": 0}), True),
    ("second hello", frames.encode("hello", versions=[1], agent="again"), True),
    ("welcome from the agent", frames.encode("welcome", version=1, sandbox_id="x"), True),
]


@pytest_twisted.ensureDeferred
async def test_protocol_errors_close_only_that_tunnel(app: Running) -> None:
    """Every kind of malformed message after hello: goaway protocol and close 4002; per-stream
    nonsense only resets the stream; a bystander tunnel notices nothing."""
    people, wid = await team(app)
    owner = people["owner"]
    calm, calm_token = await local_sandbox(app, people["developer"], wid, "calm")
    rude, rude_token = await local_sandbox(app, people["developer"], wid, "rude")
    bystander = await connected(app, calm, calm_token)
    problems = []
    for n, (what, message, binary) in enumerate(PROTOCOL_ERRORS):
        peer = await connected(app, rude, rude_token)
        peer.send(message, binary)
        code = await closed(peer)
        if (code, peer.goaways) != (4002, ["protocol"]):
            problems.append(f"{what}: closed {code}, goaway {peer.goaways}")
        await still_answers(bystander, 100 + n)
    assert not problems, "\n".join(problems)

    # Larger than a message may be: Autobahn drops the connection (no goaway).
    peer = await connected(app, rude, rude_token)
    peer.send(_raw({"t": "data", "s": 1}, b"x" * 40_000))
    assert await closed(peer) is not None

    # Stream-level nonsense resets that stream and nothing else.
    peer = await connected(app, rude, rude_token)
    peer.send(frames.encode("data", 5, b"stray"))
    assert (await received(peer, "reset")).stream == 5
    peer.send(frames.encode("open", 9, window=1024))
    assert (await received(peer, "reset", 2)).stream == 9
    peer.send(frames.encode("credit", 11, n=10))
    peer.send(frames.encode("reset", 12, reason="whatever"))
    await still_answers(peer, 1)
    peer.sendClose(1000)
    await closed(peer)

    await still_answers(bystander, 999)
    assert await status_of(owner, calm) == "running"
    await wait_status(owner, rude, "offline")


@pytest_twisted.ensureDeferred
async def test_a_query_token_works_and_is_never_logged(app: Running) -> None:
    """``?token=`` (agents of the original project) is accepted; the access log blanks it,
    however the parameter is spelt."""
    people, wid = await team(app)
    sid, token = await local_sandbox(app, people["developer"], wid)
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        peer = await connected(app, sid, token, query=f"token={token}")
        await wait_status(people["owner"], sid, "running")
        peer.sendClose(1000)
        await closed(peer)
        encoded = await connected(app, sid, None, query=f"%74oken={token}")
        encoded.sendClose(1000)
        await closed(encoded)
        client = app.client()
        for query in (f"token={token}", f"x=1&token={token}", f"%74oken={token}", f"TOKEN={token}"):
            reply = await client.call("GET", f"/api/tunnel/{sid}?{query}")
            assert reply.code in (400, 401), (query, reply)
        for query in (f"ticket={token}", f"auth_token={token}&code={token}"):
            await client.call("GET", f"/api/nothing?{query}")
        await wait_status(people["owner"], sid, "offline")
    finally:
        globalLogPublisher.removeObserver(observe)
    access = [line for line in lines if "/api/tunnel/" in line or "/api/nothing" in line]
    assert len(access) >= 6, lines
    leaked = [line for line in lines if token in line]
    assert not leaked, leaked
    assert sum("token=redacted" in line.lower() for line in access) >= 4, access
    assert any("?x=1&token=redacted " in line for line in access), access
    assert any("?%74oken=redacted " in line for line in access), access


@pytest_twisted.ensureDeferred
async def test_an_agent_stops_when_its_owner_leaves_or_becomes_a_guest(app: Running) -> None:
    """An agent acts for whoever registered it: removed from the workspace or demoted to
    guest, their tunnels are revoked, their tokens refused and their Anthropic token dead."""
    people, wid = await team(app)
    sid, token = await local_sandbox(app, people["developer"], wid)
    peer = await connected(app, sid, token)
    await wait_status(people["owner"], sid, "running")
    members = (await people["owner"].call("GET", f"/api/workspaces/{wid}/members")).body
    dev_id = next(m["user_id"] for m in members if m["username"] == "developer")
    demoted = await people["owner"].call(
        "PUT", f"/api/workspaces/{wid}/members/{dev_id}", {"role": "guest"}
    )
    assert demoted.code == 200, demoted
    assert await closed(peer) == 4003
    assert peer.goaways == ["revoked"]
    refused = await app.client().call(
        "GET", f"/api/tunnel/{sid}", headers={**UPGRADE, "Authorization": f"Bearer {token}"}
    )
    assert refused.code == 401
    (row,) = await app.db.query("SELECT proxy_token_hash FROM sandboxes WHERE id = %s", (sid,))
    assert row["proxy_token_hash"] is None
