"""What ends when an account changes hands: a password change, an admin's reset or disable
must leave a thief holding nothing — no Open link minted before, no login in flight, no
local agent, tunnel or Anthropic token of the disabled account."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.defer import maybeDeferred

from cli_server.auth.passwords import Passwords, cheap_hasher
from cli_server.domain.accounts import Accounts

from .conftest import FAKE_KEY, Running, _reactor, server_config, start_server, stop_server
from .fake_anthropic import serve as serve_fake_anthropic
from .helpers import Api, wait_until
from .test_accounts_api import PASSWORD, signed_in
from .test_agents_api import closed, connected, dial, mint
from .test_agents_api import register as register_agent
from .test_sandboxes_api import team, wait_status


async def open_link(client: Api) -> tuple[str, str]:
    """A running sandbox of the client's and a fresh Open link to it (not yet used)."""
    made = await client.call("POST", "/api/workspaces", {"name": f"w-{uuid.uuid4().hex[:6]}"})
    wid = made.body["id"]
    sid = (await client.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})).body["id"]
    await wait_status(client, sid, "running")
    return sid, (await client.call("POST", f"/api/sandboxes/{sid}/open")).body["url"]


async def follow(app: Running, sid: str, url: str) -> Any:
    host = f"oc-{sid}.localhost:8080"
    return await app.client().call("GET", url.split(host, 1)[1], headers={"Host": host})


async def sandbox_sessions(app: Running, user_id: str) -> int:
    rows = await app.db.query(
        "SELECT count(*) AS n FROM sandbox_sessions WHERE user_id = %s", (user_id,)
    )
    return int(rows[0]["n"])


@pytest_twisted.ensureDeferred
async def test_an_open_link_minted_before_a_password_change_is_void(app: Running) -> None:
    """A thief with a stolen session keeps a fresh Open link in hand; the owner's password
    change must void it, or it becomes a sandbox session that outlives the change."""
    thief = await signed_in(app, "carol", "thief")
    owner = await signed_in(app, "carol", "owner")
    sid, url = await open_link(thief)
    changed = await owner.call(
        "PUT", "/api/auth/password", {"current_password": PASSWORD, "new_password": "brand new pw"}
    )
    assert changed.code == 204
    assert (await thief.call("GET", "/api/auth/me")).code == 401
    assert (await follow(app, sid, url)).code == 401
    assert await sandbox_sessions(app, owner.user["id"]) == 0


@pytest_twisted.ensureDeferred
async def test_an_open_link_minted_before_a_disable_is_void(app: Running) -> None:
    admin = await signed_in(app, "admin")
    bob = await signed_in(app, "bob")
    sid, url = await open_link(bob)
    assert (await admin.call("POST", f"/api/admin/users/{bob.user['id']}/disable")).code == 204
    assert (await follow(app, sid, url)).code == 401
    assert await sandbox_sessions(app, bob.user["id"]) == 0


@pytest_twisted.ensureDeferred
async def test_a_login_checked_before_a_password_change_opens_no_session(app: Running) -> None:
    """The password check (argon2, ~0.1 s) and the session's insert are apart: a login whose
    check passed with the old password must not get its session after the change."""
    await signed_in(app, "dave")
    accounts = Accounts(app.db, Passwords(maybeDeferred, cheap_hasher()), _reactor(), 3600.0)
    login = await accounts.authenticate("dave", PASSWORD)
    assert login is not None
    await accounts.set_password(login.user.id, "a newer password", keep_token=None)
    assert await accounts.open_session(login) is None
    fresh = await accounts.authenticate("dave", "a newer password")
    assert fresh is not None and await accounts.open_session(fresh) is not None


@pytest_twisted.ensureDeferred
async def test_the_admin_cannot_reset_their_own_password_without_the_current_one(
    app: Running,
) -> None:
    """Else a stolen admin session turns into the admin's account for good."""
    admin = await signed_in(app, "admin")
    reset = await admin.call("POST", f"/api/admin/users/{admin.user['id']}/password")
    assert reset.code == 409 and reset.body["error"]["code"] == "own_account"
    login = await app.client().call(
        "POST", "/api/auth/login", {"username": "admin", "password": PASSWORD}
    )
    assert login.code == 200


@pytest_twisted.ensureDeferred
async def test_a_disabled_accounts_local_agents_stop_everywhere(db_url: str) -> None:
    """Its tunnel closes and cannot come back, its agent's Anthropic token (the server's key
    behind it) stops working, and a code it minted before registers nothing."""
    fake, fake_port = serve_fake_anthropic(_reactor())
    config = attrs.evolve(
        server_config(db_url),
        anthropic_api_key=FAKE_KEY,
        anthropic_base_url=f"http://127.0.0.1:{fake_port.getHost().port}",
    )
    app = await start_server(db_url, config=config)
    try:
        people, wid = await team(app)  # the owner registered first: the instance admin
        dev = people["developer"]
        made = await register_agent(app, await mint(dev, wid), "laptop", use_server_key=True)
        assert made.code == 201, made
        sid, token = made.body["sandbox_id"], made.body["tunnel_token"]
        key = made.body["anthropic"]["api_key"]
        peer = await connected(app, sid, token)
        await wait_status(people["owner"], sid, "running")
        held = await mint(dev, wid)

        developer_id = (await dev.call("GET", "/api/auth/me")).body["id"]
        disabled = await people["owner"].call("POST", f"/api/admin/users/{developer_id}/disable")
        assert disabled.code == 204
        await closed(peer)
        again = await dial(app, sid, token)
        await wait_until(_reactor(), lambda: again.did_close, timeout=10)
        assert not again.did_open
        call = await app.client().call(
            "POST",
            "/proxy/anthropic/v1/messages",
            {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": []},
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        )
        assert call.code == 401, call
        assert fake.seen == []
        assert (await register_agent(app, held, "laptop-2")).code == 401
    finally:
        await stop_server(app)
        await fake_port.stopListening()
