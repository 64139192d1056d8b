"""The account side of single sign-on in headless Chromium (webui/e2e/sso-accounts.mjs)
against a real in-process server with GitHub and an OpenID provider configured: a refused
sign-in said in words on the sign-in screen, a button per provider; an account made by a
provider keeps its only way in, sets a first password, then unlinks; with password login
off, only the providers' buttons. The user is made through ``Identities.sign_in`` (the
provider's side of the journey is the protocol tests'). Screenshots land in docs/screenshots."""

from __future__ import annotations

from typing import Any

import attrs
import pytest_twisted
from twisted.internet.threads import deferToThread

from cli_server.config import GithubLogin, OidcLogin, ServerConfig
from cli_server.sso.claims import Claims

from .conftest import server_config, start_server, stop_server
from .helpers import free_port
from .journeys import require_web_ui, run_journey


def browse(base: str, scenario: str, session: str | None = None) -> str:
    env = {"SESSION": session} if session else None
    return run_journey("sso-accounts.mjs", base, scenario, env=env, home="/tmp", timeout=300)


def configured(db_url: str, port: int, **changes: Any) -> ServerConfig:
    return attrs.evolve(
        server_config(db_url),
        base_domain=f"localhost:{port}",
        github=GithubLogin("journey-client", "journey-secret"),
        # (never fetched: these journeys do not press the buttons)
        oidc=OidcLogin("http://127.0.0.1:9/realms/team", "journey", "secret", name="Keycloak"),
        **changes,
    )


@pytest_twisted.ensureDeferred
async def test_sso_account_journeys(db_url: str) -> None:
    require_web_ui()
    port = free_port()
    app = await start_server(db_url, config=configured(db_url, port), port=port)
    try:
        assert app.server.identities is not None and app.server.accounts is not None
        erin = await app.server.identities.sign_in(
            Claims("github", "4242", "erin@example.com", True, "erin"), None
        )
        token = await app.server.accounts.open_trusted_session(erin.id, "journey", "127.0.0.1")
        assert token is not None
        await deferToThread(browse, f"http://localhost:{port}", "accounts", token)
        rows = await app.db.query(
            "SELECT password_hash IS NOT NULL AS has_password FROM users WHERE id = %s",
            (erin.id,),
        )
        assert rows == [{"has_password": True}]
        assert await app.db.query("SELECT id FROM identities") == []
    finally:
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_sso_only_sign_in_screen(db_url: str) -> None:
    port = free_port()
    config = configured(db_url, port, password_login=False)
    app = await start_server(db_url, config=config, port=port)
    try:
        await deferToThread(browse, f"http://localhost:{port}", "sso-only")
    finally:
        await stop_server(app)
