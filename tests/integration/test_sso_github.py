"""Sign-in with GitHub, against a FAKE GitHub (fake_github.py): only a primary, verified
email counts; usernames come from the login, a taken one gets a suffix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import attrs
import pytest
import pytest_twisted
from twisted.web.server import Site

from cli_server.config import GithubLogin

from .conftest import Running, server_config, start_server, stop_server
from .fake_github import CLIENT_ID, CLIENT_SECRET, FakeGithub, GithubUser
from .oidc_provider import Browser, query_of

pytestmark = pytest.mark.integration


@attrs.define
class WithGithub:
    app: Running
    github: FakeGithub
    port: Any

    def browser(self) -> Browser:
        return Browser(self.app.reactor, self.app.base)


@pytest_twisted.async_yield_fixture
async def gh(db_url: str) -> AsyncIterator[WithGithub]:
    from twisted.internet import reactor

    github = FakeGithub()
    port: Any = reactor.listenTCP(0, cast(Any, Site(github)), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    config = attrs.evolve(
        server_config(db_url),
        github=GithubLogin(CLIENT_ID, CLIENT_SECRET, web_url=url, api_url=url + "/api"),
    )
    app = await start_server(db_url, config=config)
    yield WithGithub(app, github, port)
    await stop_server(app)
    if port.connected:
        await port.stopListening()


async def sign_in(gh: WithGithub, user: GithubUser | None) -> tuple[Browser, str]:
    gh.github.next_user = user
    b = gh.browser()
    start = await b.start("github")
    sent = query_of(start)
    assert sent["code_challenge_method"] == ["S256"] and sent["scope"] == ["read:user user:email"]
    code, callback, _ = await b.get(start)  # (the fake signs in at once)
    assert code == 302 and callback
    code, location, body = await b.get(b.ours(callback))
    assert code == 303 and location, body
    return b, location


@pytest_twisted.ensureDeferred
async def test_verified_primary_email(gh: WithGithub) -> None:
    code, _, body = await gh.browser().get(f"{gh.app.base}/api/auth/providers")
    assert code == 200 and '"GitHub"' in body and "/api/auth/oidc/github/login" in body
    octo = GithubUser(
        583231,
        "octocat",
        "The Octocat",
        [
            {"email": "other@example.com", "primary": False, "verified": True},
            {"email": "octo@example.com", "primary": True, "verified": True},
        ],
    )
    b, location = await sign_in(gh, octo)
    assert location == "/"
    code, me = await b.me()
    assert code == 200 and me["username"] == "octocat" and me["email"] == "octo@example.com"
    assert "/api/user/emails" in gh.github.seen


@pytest_twisted.ensureDeferred
async def test_no_verified_primary_email(gh: WithGithub) -> None:
    # A verified address that is not the primary one, and an unverified primary: neither
    # counts. The account is made without an address (the account side's rule).
    victim = gh.app.client()
    reply = await victim.call(
        "POST",
        "/api/auth/register",
        {"username": "victim", "password": "password123", "email": "victim@example.com"},
    )
    assert reply.code == 201
    sneaky = GithubUser(
        7,
        "sneaky",
        None,
        [
            {"email": "victim@example.com", "primary": True, "verified": False},
            {"email": "mine@example.com", "primary": False, "verified": True},
        ],
    )
    b, location = await sign_in(gh, sneaky)
    assert location == "/"
    code, me = await b.me()
    assert code == 200 and me["username"] == "sneaky" and me["email"] is None
    assert me["id"] != reply.body["id"]


@pytest_twisted.ensureDeferred
async def test_username_collision_gets_a_suffix(gh: WithGithub) -> None:
    taken = gh.app.client()
    await taken.register_and_login("octocat")
    b, location = await sign_in(gh, GithubUser(1, "octocat", None, []))
    assert location == "/"
    code, me = await b.me()
    assert code == 200 and me["username"] == "octocat-2"
    # A second GitHub user with the same login (renamed since): another suffix, no 500.
    b, location = await sign_in(gh, GithubUser(2, "OctoCat", None, []))
    assert location == "/"
    assert (await b.me())[1]["username"].lower() == "octocat-3"


@pytest_twisted.ensureDeferred
async def test_denied_and_replayed(gh: WithGithub) -> None:
    b, location = await sign_in(gh, None)
    assert location == "/?sso_error=denied"
    gh.github.next_user = GithubUser(3, "mona", None, [])
    b = gh.browser()
    code, callback, _ = await b.get(await b.start("github"))
    assert callback is not None
    assert (await b.get(b.ours(callback)))[1] == "/"
    assert (await b.get(b.ours(callback)))[1] == "/?sso_error=bad_state"


@pytest_twisted.ensureDeferred
async def test_github_down(gh: WithGithub) -> None:
    gh.github.next_user = GithubUser(4, "lisa", None, [])
    b = gh.browser()
    code, callback, _ = await b.get(await b.start("github"))
    assert callback is not None
    await gh.port.stopListening()  # GitHub goes away before the code is exchanged
    assert (await b.get(b.ours(callback)))[1] == "/?sso_error=provider_down"
    api = gh.app.client()
    await api.register_and_login("still-works")
    assert (await api.call("GET", "/api/auth/me")).code == 200


@pytest_twisted.ensureDeferred
async def test_a_second_github_account_with_the_same_address_does_not_take_the_first(
    gh: WithGithub,
) -> None:
    """An address that passed to another GitHub account (a recycled mailbox) is not the
    person who signed in with it first."""
    first = GithubUser(
        1001, "vera", "V", [{"email": "v@example.com", "primary": True, "verified": True}]
    )
    browser_1, _ = await sign_in(gh, first)
    vera = (await browser_1.me())[1]
    second = GithubUser(
        2002, "mallory", "M", [{"email": "v@example.com", "primary": True, "verified": True}]
    )
    browser_2, location = await sign_in(gh, second)
    assert location == "/?sso_error=account_exists"
    code, _ = await browser_2.me()
    assert code == 401
    assert (await browser_1.me())[1]["id"] == vera["id"]
