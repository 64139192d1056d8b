"""Claude works, or says why not: the usage route, /readyz and the proxy say whether the
server has Anthropic credentials, and the real opencode shows our sentence in full. Also the
budget route's answers to bad input and to each role."""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest_twisted

from cli_server.anthropic.setup import NOT_CONFIGURED

from .conftest import FAKE_KEY, Running, _reactor, server_config, start_server, stop_server
from .helpers import Api, needs_isolation, opencode_binary, remove_dir, scratch_dir, wait_until

ROLES = ("maintainer", "developer", "guest")


async def _team(app: Running) -> tuple[str, dict[str, Api]]:
    """A workspace with an owner, one member of each other role, and an outsider."""
    people: dict[str, Api] = {}
    for name in ("owner", *ROLES, "outsider"):
        people[name] = app.client()
        await people[name].register_and_login(name)
    wid = (await people["owner"].call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    for role in ROLES:
        await people["owner"].add_member(wid, people[role], role)
    return wid, people


@pytest_twisted.ensureDeferred
async def test_usage_says_claude_is_not_set_up(app: Running) -> None:
    """Every member reads ``claude``: not configured, with the sentence saying what to set and
    where; outsiders get 404, the signed-out 401; /readyz stays 200 and says it."""
    wid, people = await _team(app)
    for name in ("owner", *ROLES):
        usage = await people[name].call("GET", f"/api/workspaces/{wid}/usage")
        assert usage.code == 200, (name, usage)
        assert usage.body["claude"] == {
            "configured": False,
            "message": NOT_CONFIGURED,
            "help": "docs/anthropic.md#claude-in-sandboxes-the-anthropic-proxy",
        }
        assert "ANTHROPIC_API_KEY" in usage.body["claude"]["message"]
        assert usage.body["month"]["total_tokens"] == 0
    outsider = await people["outsider"].call("GET", f"/api/workspaces/{wid}/usage")
    assert (outsider.code, outsider.error_code) == (404, "workspace_not_found")
    signed_out = await app.client().call("GET", f"/api/workspaces/{wid}/usage")
    assert signed_out.code == 401
    ready = await app.client().call("GET", "/readyz")
    assert (ready.code, ready.body) == (200, {"status": "ready", "claude": "not configured"})


@pytest_twisted.ensureDeferred
async def test_usage_says_claude_is_set_up(db_url: str) -> None:
    """With a key (or an auth token) the same route and /readyz say configured."""
    secrets = ({"anthropic_api_key": FAKE_KEY}, {"anthropic_auth_token": "t0ken"})
    for n, secret in enumerate(secrets):
        app = await start_server(db_url, config=attrs.evolve(server_config(db_url), **secret))
        try:
            owner = app.client()
            await owner.register_and_login(f"owner{n}")
            wid = (await owner.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
            usage = await owner.call("GET", f"/api/workspaces/{wid}/usage")
            assert usage.body["claude"]["configured"] is True, usage
            assert "not set up" not in usage.body["claude"]["message"]
            ready = await app.client().call("GET", "/readyz")
            assert ready.body == {"status": "ready", "claude": "configured"}
        finally:
            await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_proxy_without_credentials_answers_in_anthropics_shape(app: Running) -> None:
    """403 ``permission_error`` carrying the whole sentence (a 5xx would make opencode retry)."""
    reply = await app.client().call("POST", "/proxy/anthropic/v1/messages", {})
    assert reply.code == 403
    assert reply.body == {
        "type": "error",
        "error": {"type": "permission_error", "message": NOT_CONFIGURED},
    }


@pytest_twisted.ensureDeferred
async def test_budget_roles_origin_and_bad_input(app: Running) -> None:
    """Only owners set the budget; each refusal and each bad body changes nothing, and bad
    bodies are answered in words naming ``monthly_tokens``."""
    wid, people = await _team(app)
    path = f"/api/workspaces/{wid}/budget"
    owner = people["owner"]
    made = await owner.call("PUT", path, {"monthly_tokens": 5_000_000})
    assert made.code == 200 and made.body["monthly_token_budget"] == 5_000_000, made
    assert made.body["claude"]["configured"] is False  # (the same report as GET usage)
    for role in ROLES:
        refused = await people[role].call("PUT", path, {"monthly_tokens": 1})
        assert (refused.code, refused.error_code) == (403, "forbidden"), (role, refused)
    outsider = await people["outsider"].call("PUT", path, {"monthly_tokens": 1})
    assert outsider.code == 404
    assert (await app.client().call("PUT", path, {"monthly_tokens": 1})).code == 401
    foreign = await owner.call(
        "PUT", path, {"monthly_tokens": 1}, headers={"Origin": "http://evil.example"}
    )
    assert (foreign.code, foreign.error_code) == (403, "bad_origin")
    cases: list[tuple[Any, str]] = [
        ({}, "monthly_tokens is missing: send a whole number of tokens a month, e.g. 2000000"),
        ({"monthly_tokens": "2000000"}, "must be a whole number of tokens, e.g. 2000000, not text"),
        ({"monthly_tokens": 1.5}, "not a fraction"),
        ({"monthly_tokens": True}, "not true or false"),
        ({"monthly_tokens": [1]}, "not that"),
        ({"monthly_tokens": -1}, "cannot be negative: 0 stops all calls, null removes the budget"),
        ({"monthly_tokens": 10**15 + 1}, "can be at most 1000000000000000"),
    ]
    for body, words in cases:
        bad = await owner.call("PUT", path, body)
        assert bad.code == 400, (body, bad)
        assert bad.body["error"]["field"] == "monthly_tokens", bad
        assert words in bad.body["error"]["message"], bad
    usage = await owner.call("GET", f"/api/workspaces/{wid}/usage")
    assert usage.body["monthly_token_budget"] == 5_000_000  # nothing above changed it
    removed = await owner.call("PUT", path, {"monthly_tokens": None})
    assert removed.code == 200 and removed.body["monthly_token_budget"] is None


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_opencode_shows_the_whole_sentence(db_url: str) -> None:
    """The real opencode in a real sandbox, prompted through its own API with no key on the
    server: the turn ends at once (no retry loop) and its error is our sentence, whole."""
    reactor = _reactor()
    root = scratch_dir("cli-test-claude-")
    config = attrs.evolve(
        server_config(db_url), data_dir=root / "data", opencode_bin=str(opencode_binary())
    )
    app = await start_server(db_url, config=config, backend="real")
    try:
        owner = app.client()
        await owner.register_and_login("owner")
        wid = (await owner.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
        sid = (await owner.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})).body[
            "id"
        ]

        async def running() -> bool:
            reply = await owner.call("GET", f"/api/sandboxes/{sid}")
            assert reply.body["status"] != "failed", reply.body
            return bool(reply.body["status"] == "running")

        await wait_until(reactor, running, timeout=90, step=0.1)
        url = (await owner.call("POST", f"/api/sandboxes/{sid}/open")).body["url"]
        host = f"oc-{sid}.localhost:8080"
        ticket = await app.client().call("GET", url.split(host, 1)[1], headers={"Host": host})
        cookie = ticket.headers.getRawHeaders("set-cookie")[0].split(";")[0]
        client = app.client()
        headers = {"Host": host, "Cookie": cookie}
        session = (await client.call("POST", "/session", {"title": "t"}, headers=headers)).body
        began = time.monotonic()
        reply = await client.call(
            "POST",
            f"/session/{session['id']}/message",
            {
                "model": {"providerID": "anthropic", "modelID": "claude-sonnet-4-5"},
                "parts": [{"type": "text", "text": "Say hello"}],
            },
            headers=headers,
        )
        took = time.monotonic() - began
        assert reply.code == 200, reply
        error = reply.body["info"]["error"]
        assert error["name"] == "APIError" and error["data"]["isRetryable"] is False, error
        assert error["data"]["message"] == NOT_CONFIGURED, error
        assert took < 20, f"opencode took {took:.1f} s: it retried"
        status = await client.call("GET", "/session/status", headers=headers)
        assert session["id"] not in status.body, status.body  # idle, not "retry"
    finally:
        await stop_server(app)
        remove_dir(root)
