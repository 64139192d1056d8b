"""The Anthropic proxy with the official SDK as the client and a FAKE Anthropic upstream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import attrs
import pytest_twisted
from twisted.internet.threads import deferToThread

from cli_server.auth.tokens import new_token

from .conftest import Running, _reactor, server_config, start_server, stop_server
from .fake_anthropic import REPLY, FakeAnthropic, serve
from .helpers import Api
from .test_sandboxes_api import team, wait_status

REAL_KEY = "sk-ant-real-key-never-shown"


@attrs.define
class World:
    app: Running
    fake: FakeAnthropic
    upstream_port: int
    people: dict[str, Api]
    workspace: str
    sandbox: str

    @property
    def token(self) -> str:
        return str(self.app.server.backend.specs[self.sandbox].proxy_token)

    def client(self, token: str | None = None, base: str | None = None) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key=token or self.token,
            max_retries=0,
            timeout=20,
            base_url=base or f"{self.app.base}/proxy/anthropic",
        )


async def _world(db_url: str, **config: Any) -> tuple[World, Any]:
    fake, port = serve(_reactor())
    settings = {
        "anthropic_api_key": REAL_KEY,
        "anthropic_base_url": f"http://127.0.0.1:{port.getHost().port}",
        **config,
    }
    app = await start_server(db_url, config=attrs.evolve(server_config(db_url), **settings))
    people, wid = await team(app)
    sid = (
        await people["developer"].call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "ai"})
    ).body["id"]
    await wait_status(people["developer"], sid, "running")
    return World(app, fake, port.getHost().port, people, wid, sid), port


@pytest_twisted.async_yield_fixture
async def world(db_url: str) -> AsyncIterator[World]:
    w, port = await _world(db_url)
    yield w
    await stop_server(w.app)
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
    client = world.app.client()
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
            "anthropic-beta": "tools-2024",
            "anthropic-version": "2099-01-01",
        },
    )
    assert reply.code == 200
    seen = world.fake.seen[-1]["headers"]
    assert seen["x-api-key"] == [REAL_KEY] and "authorization" not in seen
    assert seen["anthropic-beta"] == ["tools-2024"]
    assert seen["anthropic-version"] == ["2099-01-01"]


@pytest_twisted.ensureDeferred
async def test_bad_tokens_are_refused(world: World) -> None:
    """Unknown, missing, old and paused sandboxes' tokens get Anthropic-shaped 401s."""
    for token in (new_token(), "sk-ant-something"):
        error = await deferToThread(_error_of, world.client(token))
        assert isinstance(error, anthropic.AuthenticationError), error
    no_key = await world.app.client().call("POST", "/proxy/anthropic/v1/messages", {})
    assert no_key.code == 401 and no_key.body["error"]["type"] == "authentication_error"
    old = world.token
    dev = world.people["developer"]
    await dev.call("POST", f"/api/sandboxes/{world.sandbox}/pause")
    await wait_status(dev, world.sandbox, "paused")
    world.app.server.anthropic._callers.clear()  # (a 5 s cache otherwise)
    assert isinstance(
        await deferToThread(_error_of, world.client(old)), anthropic.AuthenticationError
    )
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
    proxied = await deferToThread(first_event, f"{world.app.base}/proxy/anthropic", world.token)
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
        reply = await w.app.client().call(
            "POST", "/proxy/anthropic/v1/messages", {}, headers={"x-api-key": w.token}
        )
        assert reply.code == 503 and "ANTHROPIC_API_KEY" in reply.body["error"]["message"]
        assert w.fake.seen == []
    finally:
        await stop_server(w.app)
        await port.stopListening()
