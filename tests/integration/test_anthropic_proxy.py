"""The Anthropic proxy with the official SDK as the client and a FAKE Anthropic upstream."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import anthropic
import attrs
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.threads import deferToThread

from cli_server.anthropic.usage import UsageStore
from cli_server.auth.tokens import new_token
from cli_server.plumbing.client_address import parse_trusted_proxies
from cli_server.plumbing.threads import ThreadPoolService
from cli_server.sandboxes.docker_backend import DockerBackend, DockerSettings
from cli_server.sandboxes.opencode import OpencodeClient

from .conftest import Real, Running, _reactor, server_config, start_server, stop_server
from .docker_engine import Engine, needs_dockerd
from .fake_anthropic import REPLY, FakeAnthropic, serve
from .helpers import Api, Wire, needs_isolation, wait_until
from .sandbox_shell import run_inside
from .test_sandboxes_api import team, wait_status

REAL_KEY = "sk-ant-real-key-never-shown"
DOCKER_INSTANCE = "test-anthropic"


@attrs.define
class World:
    app: Running
    fake: FakeAnthropic
    upstream_port: int
    people: dict[str, Api]
    workspace: str
    sandbox: str

    port: Any  # the fake upstream's listening port

    @property
    def token(self) -> str:
        return self.token_of(self.sandbox)

    async def fake_port_down(self) -> None:
        """The upstream stops answering (connections refused)."""
        await self.port.stopListening()
        await self.app.server.anthropic.close_connections()

    def token_of(self, sandbox_id: str) -> str:
        return str(self.app.server.backend.specs[sandbox_id].proxy_token)

    def door(self, sandbox_id: str | None = None) -> str:
        """The sandbox's own way to the proxy (on the host's loopback here, as the process
        backend's unisolated mode has it; inside the sandbox's namespace otherwise)."""
        port = self.app.server.backend.doors[sandbox_id or self.sandbox][1]
        return f"http://127.0.0.1:{port}/proxy/anthropic"

    def api(self, base: str | None = None) -> Api:
        return Api(
            self.app.reactor, (base or self.door()).removesuffix("/proxy/anthropic"), self.app.pool
        )

    def client(self, token: str | None = None, base: str | None = None) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key=token or self.token,
            max_retries=0,
            timeout=20,
            base_url=base or self.door(),
        )


async def _world(db_url: str, **config: Any) -> tuple[World, Any]:
    fake, port = serve(_reactor())
    settings = {
        "anthropic_api_key": REAL_KEY,
        "anthropic_base_url": f"http://127.0.0.1:{port.getHost().port}",
        **config,
    }
    app = await start_server(db_url, config=attrs.evolve(server_config(db_url), **settings))
    app.server.backend.door = app.server.anthropic_door
    people, wid = await team(app)
    sid = await _sandbox(people["developer"], wid)
    return World(app, fake, port.getHost().port, people, wid, sid, port), port


async def _sandbox(developer: Api, workspace: str, name: str = "ai", wait: float = 10) -> str:
    made = await developer.call("POST", f"/api/workspaces/{workspace}/sandboxes", {"name": name})
    sid = str(made.body["id"])

    async def running() -> bool:
        reply = await developer.call("GET", f"/api/sandboxes/{sid}")
        assert reply.body["status"] != "failed", reply.body
        return bool(reply.body["status"] == "running")

    await wait_until(_reactor(), running, timeout=wait, step=0.1)
    return sid


@pytest_twisted.async_yield_fixture
async def world(db_url: str) -> AsyncIterator[World]:
    w, port = await _world(db_url)
    yield w
    await stop_server(w.app)
    if port.connected:
        await port.stopListening()


def ask(client: anthropic.Anthropic, stream: bool = False) -> Any:
    kwargs: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if not stream:
        return client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as events:
        return events.get_final_message()


@pytest_twisted.ensureDeferred
async def test_sdk_calls_use_the_real_key(world: World) -> None:
    """A normal and a streaming call succeed; upstream sees our key, never the proxy token."""
    plain = await deferToThread(ask, world.client())
    assert plain.content[0].text == REPLY
    streamed = await deferToThread(ask, world.client(), True)
    assert streamed.content[0].text == REPLY
    assert len(world.fake.seen) == 2
    for seen in world.fake.seen:
        assert seen["path"] == "/v1/messages"
        assert seen["headers"]["x-api-key"] == [REAL_KEY]
        assert "authorization" not in seen["headers"]
        assert len(seen["headers"]["anthropic-version"]) == 1  # the SDK's own, kept
        assert world.token not in str(seen)
    usage = (
        await world.people["guest"].call("GET", f"/api/workspaces/{world.workspace}/usage")
    ).body
    assert usage["month"]["requests"] == 2
    assert usage["month"]["input_tokens"] == 22 and usage["month"]["output_tokens"] == 14
    assert usage["month"]["total_tokens"] == 2 * (11 + 7 + 3 + 2)
    assert usage["by_model"][0]["model"] == "claude-sonnet-4-6"
    assert usage["by_sandbox"][0]["sandbox_id"] == world.sandbox
    sandbox = (await world.people["guest"].call("GET", f"/api/sandboxes/{world.sandbox}")).body
    assert sandbox["usage"] == {"tokens_this_month": 46}
    (row,) = await world.app.db.query("SELECT count(*) AS n FROM anthropic_usage")
    assert row["n"] == 1  # one row per day, sandbox and model
    everything = await world.app.db.query("SELECT * FROM sandboxes")
    assert REAL_KEY not in str(everything) and world.token not in str(everything)


@pytest_twisted.ensureDeferred
async def test_credentials_are_replaced_not_appended(world: World) -> None:
    """A caller's own Authorization never reaches Anthropic; Bearer works as well as x-api-key;
    anthropic-version is set when absent and kept when given."""
    client = world.api()
    bare = await client.call(
        "POST",
        "/proxy/anthropic/v1/messages",
        {"model": "m", "max_tokens": 1, "messages": []},
        headers={"x-api-key": world.token},
    )
    assert bare.code == 200
    assert world.fake.seen[-1]["headers"]["anthropic-version"] == ["2023-06-01"]
    reply = await client.call(
        "POST",
        "/proxy/anthropic/v1/messages",
        {"model": "m", "max_tokens": 1, "messages": []},
        headers={
            "Authorization": f"Bearer {world.token}",
            "anthropic-beta": "tools-2024, prompt-caching-2024-07-31,files-api-2025-04-14",
            "anthropic-version": "2099-01-01",
        },
    )
    assert reply.code == 200
    seen = world.fake.seen[-1]["headers"]
    assert seen["x-api-key"] == [REAL_KEY] and "authorization" not in seen
    assert seen["anthropic-beta"] == ["prompt-caching-2024-07-31"]  # only the safe ones
    assert seen["anthropic-version"] == ["2099-01-01"]


@pytest_twisted.ensureDeferred
async def test_bad_tokens_are_refused(world: World) -> None:
    """Unknown, missing, old and paused sandboxes' tokens get Anthropic-shaped 401s."""
    for token in (new_token(), "sk-ant-something"):
        error = await deferToThread(_error_of, world.client(token))
        assert isinstance(error, anthropic.AuthenticationError), error
    no_key = await world.api().call("POST", "/proxy/anthropic/v1/messages", {})
    assert no_key.code == 401 and no_key.body["error"]["type"] == "authentication_error"
    old = world.token
    dev = world.people["developer"]
    await dev.call("POST", f"/api/sandboxes/{world.sandbox}/pause")
    await wait_status(dev, world.sandbox, "paused")
    await dev.call("POST", f"/api/sandboxes/{world.sandbox}/resume")
    await wait_status(dev, world.sandbox, "running")
    assert world.token != old
    assert isinstance(
        await deferToThread(_error_of, world.client(old)), anthropic.AuthenticationError
    )
    assert (await deferToThread(ask, world.client())).content[0].text == REPLY
    assert all(s["headers"]["x-api-key"] == [REAL_KEY] for s in world.fake.seen)


def _error_of(client: anthropic.Anthropic) -> Exception | None:
    try:
        ask(client)
    except anthropic.APIError as e:
        return e
    return None


@pytest_twisted.ensureDeferred
async def test_upstream_errors_pass_through(world: World) -> None:
    """Overloaded and rate-limit answers arrive as Anthropic sent them, retry headers included."""
    world.fake.fail_with = (
        529,
        {"retry-after": "7"},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    error = await deferToThread(_error_of, world.client())
    assert isinstance(error, anthropic.APIStatusError) and error.status_code == 529
    assert error.response.headers["retry-after"] == "7"
    world.fake.fail_with = (
        429,
        {"retry-after": "30", "anthropic-ratelimit-requests-remaining": "0"},
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
    )
    error = await deferToThread(_error_of, world.client())
    assert isinstance(error, anthropic.RateLimitError)
    assert error.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    usage = (
        await world.people["owner"].call("GET", f"/api/workspaces/{world.workspace}/usage")
    ).body
    assert usage["month"]["requests"] == 0  # failed calls cost no tokens


@pytest_twisted.ensureDeferred
async def test_budget(world: World) -> None:
    """Owners set a monthly budget; when spent, calls answer 429 naming the budget."""
    owner, dev = world.people["owner"], world.people["developer"]
    path = f"/api/workspaces/{world.workspace}/budget"
    assert (await dev.call("PUT", path, {"monthly_tokens": 10})).code == 403
    for bad in ({}, {"monthly_tokens": -1}, {"monthly_tokens": "10"}, {"monthly_tokens": 1.5}):
        assert (await owner.call("PUT", path, bad)).code == 400
    set_ = await owner.call("PUT", path, {"monthly_tokens": 30})
    assert set_.code == 200 and set_.body["monthly_token_budget"] == 30
    assert (await deferToThread(ask, world.client())).content[0].text == REPLY  # 23 tokens
    assert (await deferToThread(ask, world.client())).content[0].text == REPLY  # 46 >= 30
    error = await deferToThread(_error_of, world.client())
    assert isinstance(error, anthropic.RateLimitError)
    assert "monthly budget of 30 tokens" in str(error)
    await owner.call("PUT", path, {"monthly_tokens": None})
    assert (await deferToThread(ask, world.client())).content[0].text == REPLY


@pytest_twisted.ensureDeferred
async def test_streaming_is_not_buffered(world: World) -> None:
    """The first event arrives long before the upstream finishes; time to first byte through
    the proxy is close to direct."""
    world.fake.stream_pause = 1.0

    def first_event(base: str, token: str) -> tuple[float, float]:
        client = anthropic.Anthropic(api_key=token, base_url=base, max_retries=0, timeout=20)
        began = time.perf_counter()
        with client.messages.stream(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        ) as events:
            for _ in events:
                first = time.perf_counter() - began
                break
            events.get_final_message()
        return first, time.perf_counter() - began

    direct = await deferToThread(first_event, f"http://127.0.0.1:{world.upstream_port}", "k")
    proxied = await deferToThread(first_event, world.door(), world.token)
    assert proxied[0] < 0.5 and proxied[1] >= 1.0, proxied
    print(
        f"\ntime to first event: direct {direct[0] * 1000:.1f} ms, "
        f"through the proxy {proxied[0] * 1000:.1f} ms"
    )


@pytest_twisted.ensureDeferred
async def test_no_key_configured(db_url: str) -> None:
    """Without credentials the proxy says which environment variable to set."""
    w, port = await _world(db_url, anthropic_api_key=None)
    try:
        reply = await w.api().call(
            "POST", "/proxy/anthropic/v1/messages", {}, headers={"x-api-key": w.token}
        )
        assert reply.code == 403 and "ANTHROPIC_API_KEY" in reply.body["error"]["message"]
        assert w.fake.seen == []
    finally:
        await stop_server(w.app)
        await port.stopListening()


MESSAGE: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": []}
CALL = "/proxy/anthropic/v1/messages"


@pytest_twisted.ensureDeferred
async def test_a_stolen_token_works_only_through_its_own_sandbox_s_door(world: World) -> None:
    """Whoever reads sandbox A's token (a guest, through opencode's /provider) cannot spend
    with it on the server's public listener nor through another sandbox's door."""
    other = await _sandbox(world.people["developer"], world.workspace, "other")
    stolen = {"x-api-key": world.token}
    for base, headers in [
        (world.app.base, stolen),  # the public listener
        (world.app.base, {"authorization": f"Bearer {world.token}"}),
        (world.door(other), stolen),  # the other sandbox's door
        (world.door(world.sandbox), {"x-api-key": world.token_of(other)}),
    ]:
        reply = await world.api(base).call("POST", CALL, MESSAGE, headers=headers)
        assert reply.code == 401, (base, reply)
        assert reply.body["type"] == "error"
        assert reply.body["error"]["type"] == "authentication_error"
    assert world.fake.seen == []
    # each token through its own door
    for sandbox in (world.sandbox, other):
        own = {"x-api-key": world.token_of(sandbox)}
        reply = await world.api(world.door(sandbox)).call("POST", CALL, MESSAGE, headers=own)
        assert reply.code == 200, reply
    assert len(world.fake.seen) == 2


@pytest_twisted.ensureDeferred
async def test_only_the_messages_api_passes(world: World) -> None:
    """Batches, files, admin and anything else answer 404 in Anthropic's error shape and never
    reach Anthropic with the server's key; the Messages API, token counting and models pass."""
    client = world.api()
    own = {"x-api-key": world.token}
    for method, path in [
        ("POST", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches/msgbatch_1/results"),
        ("POST", "/v1/files"),
        ("GET", "/v1/files/file_1/content"),
        ("DELETE", "/v1/files/file_1"),
        ("GET", "/v1/organizations/api_keys"),
        ("POST", "/v1/complete"),
        ("POST", "/v1/messages/../files"),
        ("POST", "/v1/%6Dessages"),
        ("POST", "/v1//messages"),
        ("PUT", "/v1/messages"),
        ("GET", "/v1/models/../files"),
        ("POST", "/v2/messages"),
    ]:
        reply = await client.call(method, "/proxy/anthropic" + path, MESSAGE, headers=own)
        assert reply.code == 404, (method, path, reply)
        assert reply.body["type"] == "error", reply
        assert reply.body["error"]["type"] == "not_found_error"
        assert "Messages API" in reply.body["error"]["message"]
    assert world.fake.seen == []
    for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/messages?beta=true"):
        reply = await client.call("POST", "/proxy/anthropic" + path, MESSAGE, headers=own)
        assert reply.code == 200, (path, reply)
    assert [s["path"] for s in world.fake.seen] == [
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/messages",
    ]
    # a message call we could not bound is refused before it goes anywhere
    for body in ({"model": "m", "messages": []}, {"model": "m", "max_tokens": "64"}):
        reply = await client.call("POST", CALL, body, headers=own)
        assert reply.code == 400 and reply.body["error"]["type"] == "invalid_request_error"
    twice = b'{"model": "m", "max_tokens": 1, "max_tokens": 64000, "messages": []}'
    reply = await client.call("POST", CALL, raw=twice, headers=own)
    assert reply.code == 400, reply
    assert len(world.fake.seen) == 3


@pytest_twisted.ensureDeferred
async def test_parallel_spenders_cannot_overshoot_the_budget(world: World) -> None:
    """25 calls at once against a budget of 50 tokens: the budget is held before a call goes
    out, so what is spent stays within the budget plus one call's max_tokens."""
    owner = world.people["owner"]
    budget = 50
    await owner.call("PUT", f"/api/workspaces/{world.workspace}/budget", {"monthly_tokens": budget})
    world.fake.stream_pause = 0.3  # every call is still running when the others arrive
    client = world.api()
    own = {"x-api-key": world.token}
    calls = [client.call("POST", CALL, {**MESSAGE, "stream": True}, headers=own) for _ in range(25)]
    replies = await gatherResults(calls)
    codes = sorted(r.code for r in replies)
    passed = codes.count(200)
    assert passed >= 1 and codes.count(429) == 25 - passed, codes
    usage = (await owner.call("GET", f"/api/workspaces/{world.workspace}/usage")).body
    spent = usage["month"]["total_tokens"]
    assert spent == 23 * passed
    assert spent <= budget + MESSAGE["max_tokens"], (spent, codes)
    assert await _no_holds(world)  # every hold is settled before its answer ends
    # one right after the other, the rest of the budget is used up, then refused
    world.fake.stream_pause = 0.0
    while (last := await client.call("POST", CALL, MESSAGE, headers=own)).code == 200:
        assert await _no_holds(world)
    assert last.code == 429, last
    usage = (await owner.call("GET", f"/api/workspaces/{world.workspace}/usage")).body
    assert budget <= usage["month"]["total_tokens"] <= budget + MESSAGE["max_tokens"]


async def _no_holds(world: World) -> bool:
    rows = await world.app.db.query("SELECT count(*) AS n FROM anthropic_reservations")
    return bool(rows[0]["n"] == 0)


@pytest_twisted.ensureDeferred
async def test_holds_left_by_a_crash_run_out(world: World) -> None:
    """A server that died mid-call leaves its hold behind: it counts until it expires, then it
    is dropped and the budget is free again."""
    owner = world.people["owner"]
    await owner.call("PUT", f"/api/workspaces/{world.workspace}/budget", {"monthly_tokens": 1000})
    own = {"x-api-key": world.token}
    orphan = (
        "INSERT INTO anthropic_reservations (workspace_id, sandbox_id, tokens, expires_at)"
        " VALUES (%s, %s, 5000, now() + make_interval(secs => %s))"
    )
    await world.app.db.execute(orphan, (world.workspace, world.sandbox, 3600))
    blocked = await world.api().call("POST", CALL, MESSAGE, headers=own)
    assert blocked.code == 429, blocked
    await world.app.db.execute("DELETE FROM anthropic_reservations")
    await world.app.db.execute(orphan, (world.workspace, world.sandbox, -1))  # ran out
    passed = await world.api().call("POST", CALL, MESSAGE, headers=own)
    assert passed.code == 200, passed
    assert await _no_holds(world)


@pytest_twisted.ensureDeferred
async def test_a_cut_call_settles_at_its_worst_case(world: World) -> None:
    """A stream the caller abandons before its final usage is charged its max_tokens for
    output, and its hold is released."""
    world.fake.stream_pause = 5.0
    wire = await _raw_post(world, 64)
    await wait_until(_reactor(), lambda: b"message_start" in wire.received, timeout=10)
    (held,) = await world.app.db.query("SELECT tokens FROM anthropic_reservations")
    assert held["tokens"] > 64
    transport: Any = wire.transport
    transport.abortConnection()

    await wait_until(_reactor(), lambda: _no_holds(world), timeout=10)
    usage = (
        await world.people["owner"].call("GET", f"/api/workspaces/{world.workspace}/usage")
    ).body["month"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (11, 64)


async def _raw_post(world: World, max_tokens: int) -> Wire:
    body = json.dumps({**MESSAGE, "max_tokens": max_tokens, "stream": True}).encode()
    port = world.app.server.backend.doors[world.sandbox][1]
    wire = Wire()
    await connectProtocol(TCP4ClientEndpoint(_reactor(), "127.0.0.1", port), wire)
    transport: Any = wire.transport
    transport.write(
        b"POST /proxy/anthropic/v1/messages HTTP/1.1\r\nHost: x\r\n"
        + f"x-api-key: {world.token}\r\ncontent-type: application/json\r\n".encode()
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return wire


@attrs.define
class _Held:
    """Holds a backend operation until released, so a test sees the moment in between."""

    gate: Deferred[None] = attrs.field(factory=Deferred)
    entered: Deferred[None] = attrs.field(factory=Deferred)

    def around(self, backend: Any, name: str) -> Any:
        """Patches ``name`` of the backend's class (its instances have slots)."""
        original = getattr(type(backend), name)

        async def held(self_: Any, sandbox_id: str) -> None:
            if not self.entered.called:
                self.entered.callback(None)
            await self.gate
            await original(self_, sandbox_id)

        return patch.object(
            type(backend),
            name,
            lambda self_, sandbox_id: Deferred.fromCoroutine(held(self_, sandbox_id)),
        )


@pytest_twisted.ensureDeferred
async def test_pause_ends_the_token_and_its_calls_at_once(world: World) -> None:
    """The moment a pause is accepted — before the sandbox has even stopped — its token is
    refused and a call it has running is cut (no cache keeps it alive)."""
    world.fake.stream_pause = 10.0
    running = await _raw_post(world, 64)
    await wait_until(_reactor(), lambda: b"message_start" in running.received, timeout=10)
    hold = _Held()
    with hold.around(world.app.server.backend, "stop"):
        dev = world.people["developer"]
        began = time.monotonic()
        paused = await dev.call("POST", f"/api/sandboxes/{world.sandbox}/pause")
        assert paused.code == 200 and paused.body["status"] == "pausing"
        await hold.entered
        # the door is still open (the backend has not stopped it yet): the token is not
        reply = await world.api().call("POST", CALL, MESSAGE, headers={"x-api-key": world.token})
        assert reply.code == 401, reply
        await running.closed  # cut, long before the 10 s the stream would take
        assert time.monotonic() - began < 5
        assert b"message_stop" not in running.received
        hold.gate.callback(None)
        await wait_status(dev, world.sandbox, "paused")
    assert len(world.fake.seen) == 1


@pytest_twisted.ensureDeferred
async def test_delete_ends_the_token_at_once(world: World) -> None:
    """Deleting a sandbox ends its token before the backend has taken it down."""
    hold = _Held()
    own = {"x-api-key": world.token}
    client = world.api()
    assert (await client.call("POST", CALL, MESSAGE, headers=own)).code == 200
    with hold.around(world.app.server.backend, "delete"):
        deleting = world.people["developer"].call("DELETE", f"/api/sandboxes/{world.sandbox}")
        await hold.entered
        reply = await client.call("POST", CALL, MESSAGE, headers=own)
        assert reply.code == 401, reply
        hold.gate.callback(None)
        assert (await deleting).code == 204
    assert len(world.fake.seen) == 1


def _token_in(pid: int) -> str:
    """What a guest reads through opencode's /provider: the sandbox's own token."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(e for e in env if e.startswith(b"ANTHROPIC_API_KEY=")).split(b"=", 1)[1].decode()


def _curl_door(pid: int, token: str) -> int:
    """From inside a real sandbox, a message call through its door; the HTTP status."""
    body = json.dumps(MESSAGE)
    done = run_inside(
        pid,
        "curl -s -o /dev/null -w '%{http_code}' -m 10 -H 'content-type: application/json'"
        f" -H 'x-api-key: {token}' -d '{body}' http://127.0.0.1:4097{CALL}",
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_real_sandboxes_spend_only_through_their_own_door(real: Real) -> None:
    """Real opencode under bubblewrap: code in sandbox B that holds sandbox A's token (read
    from A by a guest) cannot spend with it through B's door, nor on the server's listener;
    each sandbox's own token works from inside it."""
    a, _ = await real.create("a", "victim")
    b, _ = await real.create("b", "attacker")
    token_a, token_b = _token_in(real.pid(a)), _token_in(real.pid(b))
    assert await deferToThread(_curl_door, real.pid(b), token_a) == 401
    stolen = await real.app.client().call("POST", CALL, MESSAGE, headers={"x-api-key": token_a})
    assert stolen.code == 401, stolen
    assert real.anthropic.seen == []
    assert await deferToThread(_curl_door, real.pid(a), token_a) == 200
    assert await deferToThread(_curl_door, real.pid(b), token_b) == 200
    assert len(real.anthropic.seen) == 2


def _post_from_container(
    engine: Engine, container: str, address: str, port: int, token: str
) -> str:
    """From inside a container, a message call to address:port; the status line ('' if none).
    (busybox nc: the image has no curl, and busybox's wget crashes in its name lookups.)"""
    body = json.dumps(MESSAGE)
    head = (
        f"POST {CALL} HTTP/1.0\\r\\nHost: x\\r\\nx-api-key: {token}\\r\\n"
        f"content-type: application/json\\r\\ncontent-length: {len(body)}\\r\\n\\r\\n"
    )
    # (busybox nc stops reading when its input ends: the input stays open until the answer)
    request = f"(printf '{head}%s' '{body}'; sleep 3) | busybox nc -w 5 {address} {port}"
    done = engine.attempt(["docker", "exec", container, "sh", "-c", request], timeout=60)
    return (done.stdout.splitlines() or [""])[0].strip()


def _container_token(engine: Engine, sandbox_id: str) -> str:
    env = json.loads(
        engine.docker("inspect", "--format", "{{json .Config.Env}}", f"cli-sbx-{sandbox_id}")
    )
    return str(next(e for e in env if e.startswith("ANTHROPIC_API_KEY=")).split("=", 1)[1])


@needs_dockerd
@pytest_twisted.ensureDeferred
async def test_docker_tokens_work_only_from_their_own_container(
    db_url: str, engine: Engine
) -> None:
    """Docker sandboxes call the proxy on the server's listener: a token is accepted only from
    its own container's address — not from another container, not from the host."""
    reactor = _reactor()
    fake, fake_port = serve(reactor)
    pool = ThreadPoolService(reactor, "docker-test", 4)
    pool.startService()
    # the sandboxes' firewall opens the proxy URL's port only: the listener below takes it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = DockerSettings(
        engine.host, engine.image, f"http://host.docker.internal:{port}/proxy/anthropic/v1"
    )
    backend = DockerBackend(pool.run, settings, DOCKER_INSTANCE, OpencodeClient(reactor))
    config = attrs.evolve(
        server_config(db_url),
        backend="docker",
        anthropic_api_key=REAL_KEY,
        anthropic_base_url=f"http://127.0.0.1:{fake_port.getHost().port}",
    )
    app = await start_server(db_url, config=config, backend=backend)
    gateway_port = None
    try:
        people, wid = await team(app)
        a = await _sandbox(people["developer"], wid, "a", wait=120)
        b = await _sandbox(people["developer"], wid, "b", wait=120)
        hosts = engine.docker("exec", f"cli-sbx-{a}", "cat", "/etc/hosts")
        (gateway,) = [ln.split()[0] for ln in hosts.splitlines() if "host.docker.internal" in ln]
        # the server's listener where containers reach it (the host's side of their bridge)
        gateway_port = reactor.listenTCP(port, app.server.router, interface=gateway)
        token_a, token_b = _container_token(engine, a), _container_token(engine, b)

        def from_(container: str, token: str) -> Any:
            return deferToThread(
                _post_from_container, engine, f"cli-sbx-{container}", gateway, port, token
            )

        assert (await from_(b, token_a)).split()[1] == "401"
        stolen = await app.client().call("POST", CALL, MESSAGE, headers={"x-api-key": token_a})
        assert stolen.code == 401, stolen
        assert fake.seen == []
        assert (await from_(a, token_a)).split()[1] == "200"
        assert (await from_(b, token_b)).split()[1] == "200"
        assert len(fake.seen) == 2
    finally:
        if gateway_port is not None:
            await gateway_port.stopListening()
        try:
            await stop_server(app)
        finally:
            pool.stopService()
            await fake_port.stopListening()
            ids = engine.docker(
                "ps", "-aq", "--filter", f"label=cli-server.instance={DOCKER_INSTANCE}"
            )
            if ids.split():
                engine.docker("rm", "-f", *ids.split())
            volumes = engine.docker(
                "volume", "ls", "-q", "--filter", f"label=cli-server.instance={DOCKER_INSTANCE}"
            )
            if volumes.split():
                engine.docker("volume", "rm", "-f", *volumes.split())


@pytest_twisted.ensureDeferred
async def test_no_secret_in_logs_or_answers(world: World) -> None:
    """Neither the real key nor a proxy token shows in the server's log or in any answer,
    whatever the call: allowed, refused, stolen, off the allow-list, failed upstream."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: Any) -> None:
        lines.append(formatEvent(event) + repr(event))

    observer: Any = observe
    globalLogPublisher.addObserver(observer)
    try:
        own = {"x-api-key": world.token}
        answers = [
            await world.api().call("POST", CALL, MESSAGE, headers=own),
            await world.api(world.app.base).call("POST", CALL, MESSAGE, headers=own),
            await world.api().call("POST", "/proxy/anthropic/v1/files", {}, headers=own),
            await world.api().call("POST", CALL, {"max_tokens": "x"}, headers=own),
        ]
        await world.fake_port_down()
        answers.append(await world.api().call("POST", CALL, MESSAGE, headers=own))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [a.code for a in answers] == [200, 401, 404, 400, 502]
    everything = "\n".join(lines) + "\n".join(
        f"{a.body}{list(a.headers.getAllRawHeaders())}" for a in answers
    )
    assert world.token not in everything and REAL_KEY not in everything
    assert any("did not answer" in line for line in lines)  # (the log was captured)


@pytest_twisted.ensureDeferred
async def test_input_anthropic_would_fetch_itself_is_refused(world: World) -> None:
    """A small body naming a URL document, a file, a server tool, MCP servers or a container
    would make Anthropic pull in input its size does not bound: 20 such calls at once with
    max_tokens 1 must not spend a budget of 1000 many times over. Each is refused with a 400
    naming what, and nothing reaches Anthropic; unsafe betas are dropped on the way."""
    owner = world.people["owner"]
    await owner.call("PUT", f"/api/workspaces/{world.workspace}/budget", {"monthly_tokens": 1000})
    world.fake.stream_pause = 0.3
    world.fake.usage = {
        "input_tokens": 100_000,  # what Anthropic would report for the fetched document
        "output_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    client = world.api()
    own = {"x-api-key": world.token}
    url_document = {"type": "document", "source": {"type": "url", "url": "https://x/big.pdf"}}
    fetching = {
        **MESSAGE,
        "max_tokens": 1,
        "stream": True,
        "messages": [{"role": "user", "content": [url_document]}],
    }
    replies = await gatherResults(
        [client.call("POST", CALL, fetching, headers=own) for _ in range(20)]
    )
    assert [r.code for r in replies] == [400] * 20, [r.code for r in replies]
    error = replies[0].body["error"]
    assert error["type"] == "invalid_request_error" and "'url' source" in error["message"]
    image = {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search"),
        ({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "web_fetch"),
        ({"tools": [{"type": "code_execution_20250825", "name": "x"}]}, "code_execution"),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "m"}]}, "mcp_servers"),
        ({"container": "container_1"}, "container"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t", "content": [image]}
                        ],
                    }
                ]
            },
            "'url' source",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "document", "source": {"type": "file", "file_id": "f"}}
                        ],
                    }
                ]
            },
            "'file' source",
        ),
        ({"max_tokens": 2**63}, "max_tokens"),  # (was a 500 from the database)
        ({"max_tokens": 2**31}, "max_tokens"),
    ]
    for extra, named in cases:
        reply = await client.call("POST", CALL, {**MESSAGE, **extra}, headers=own)
        assert reply.code == 400, (extra, reply)
        assert reply.body["type"] == "error", reply
        assert named in reply.body["error"]["message"], (named, reply.body)
    assert world.fake.seen == []
    assert await _no_holds(world)
    usage = (await owner.call("GET", f"/api/workspaces/{world.workspace}/usage")).body
    assert usage["month"]["total_tokens"] == 0
    # betas that would pull input in (files, MCP, code execution) never reach Anthropic
    world.fake.usage = {"input_tokens": 1, "output_tokens": 1}
    unsafe = "files-api-2025-04-14,mcp-client-2025-04-04,code-execution-2025-05-22"
    reply = await client.call("POST", CALL, MESSAGE, headers={**own, "anthropic-beta": unsafe})
    assert reply.code == 200, reply
    assert "anthropic-beta" not in world.fake.seen[-1]["headers"]


@pytest_twisted.ensureDeferred
async def test_a_pause_cuts_a_call_still_waiting_for_its_budget(world: World) -> None:
    """A call whose token was good but which still waits for its budget hold (the workspace
    row is busy with other callers' holds) when the sandbox is paused never goes out, and
    its hold is released."""
    gate: Deferred[None] = Deferred()
    entered: Deferred[None] = Deferred()
    original = UsageStore.reserve

    async def busy(self_: UsageStore, *args: Any) -> Any:
        if not entered.called:
            entered.callback(None)
        await gate
        return await original(self_, *args)

    with patch.object(UsageStore, "reserve", busy):
        world.fake.stream_pause = 3.0
        waiting = await _raw_post(world, 64)
        await entered
        dev = world.people["developer"]
        paused = await dev.call("POST", f"/api/sandboxes/{world.sandbox}/pause")
        assert paused.code == 200, paused
        await wait_status(dev, world.sandbox, "paused")
        gate.callback(None)
        await waiting.closed
    assert b"message_start" not in waiting.received
    assert world.fake.seen == []
    await wait_until(_reactor(), lambda: _no_holds(world), timeout=10)
    usage = (
        await world.people["owner"].call("GET", f"/api/workspaces/{world.workspace}/usage")
    ).body
    assert usage["month"]["total_tokens"] == 0


@pytest_twisted.ensureDeferred
async def test_a_forwarded_address_cannot_claim_a_sandbox_s_source(db_url: str) -> None:
    """With --trusted-proxies covering the network sandboxes share, sandbox B writing
    X-Forwarded-For: <A's address> with A's token is still refused: the token is bound to
    the TCP peer, and the forwarded address does not count (either way)."""
    w, port = await _world(db_url, trusted_proxies=parse_trusted_proxies("127.0.0.0/8"))
    try:
        proxy = w.app.server.anthropic
        client = w.api(w.app.base)
        own = {"x-api-key": w.token}

        def from_(*addresses: str) -> Any:
            async def sources(sandbox_id: str, is_local: bool) -> Any:
                return addresses if sandbox_id == w.sandbox else ()

            return patch.object(proxy, "_sources", sources)

        with from_("10.77.0.2"):  # A's container address; the caller is somewhere else
            for forwarded in (
                {"x-forwarded-for": "10.77.0.2"},
                {"forwarded": "for=10.77.0.2"},
                {"x-forwarded-for": "10.77.0.2, 10.77.0.2"},
            ):
                reply = await client.call("POST", CALL, MESSAGE, headers={**own, **forwarded})
                assert reply.code == 401, (forwarded, reply)
        assert w.fake.seen == []
        with from_("127.0.0.1"):  # the caller really is at A's address
            reply = await client.call(
                "POST", CALL, MESSAGE, headers={**own, "x-forwarded-for": "10.99.0.9"}
            )
            assert reply.code == 200, reply
        assert len(w.fake.seen) == 1
    finally:
        await stop_server(w.app)
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_free_calls_are_rate_limited_and_counting_stops_with_the_budget(
    world: World,
) -> None:
    """Counting tokens costs nothing, so it is limited per sandbox (60 a minute): a sandbox
    firing 80 in four waves of 20 parallel calls (a door takes 32 connections at once) gets
    429s in Anthropic's shape past that; another sandbox is not affected. Once the
    workspace's budget is spent, counting is refused too."""
    other = await _sandbox(world.people["developer"], world.workspace, "other")
    client = world.api()
    own = {"x-api-key": world.token}
    count = "/proxy/anthropic/v1/messages/count_tokens"
    began = time.monotonic()
    replies = []
    for _ in range(4):
        replies += await gatherResults(
            [client.call("POST", count, MESSAGE, headers=own) for _ in range(20)]
        )
    elapsed = time.monotonic() - began
    codes = [r.code for r in replies]
    passed = codes.count(200)
    assert codes.count(429) == 80 - passed, codes
    assert 60 <= passed <= 60 + int(elapsed) + 1, (passed, elapsed)
    limited = next(r for r in replies if r.code == 429)
    assert limited.body["error"]["type"] == "rate_limit_error", limited.body
    assert len(world.fake.seen) == passed
    theirs = {"x-api-key": world.token_of(other)}
    other_api = world.api(world.door(other))
    assert (await other_api.call("POST", count, MESSAGE, headers=theirs)).code == 200
    owner = world.people["owner"]
    await owner.call("PUT", f"/api/workspaces/{world.workspace}/budget", {"monthly_tokens": 10})
    assert (await other_api.call("POST", CALL, MESSAGE, headers=theirs)).code == 200  # 23
    refused = await other_api.call("POST", count, MESSAGE, headers=theirs)
    assert refused.code == 429, refused
    assert "monthly budget of 10 tokens" in refused.body["error"]["message"]
    assert len(world.fake.seen) == passed + 2
