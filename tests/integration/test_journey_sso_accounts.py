"""The account side of single sign-on in headless Chromium (webui/e2e/sso-accounts.mjs)
against a real in-process server with GitHub and an OpenID provider configured: a refused
sign-in said in words on the sign-in screen, a button per provider; an account made by a
provider keeps its only way in, sets a first password, then unlinks; with password login
off, only the providers' buttons. The user is made through ``Identities.sign_in`` (the
provider's side of the journey is the protocol tests'). Screenshots land in docs/screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.threads import deferToThread

from cli_server.config import GithubLogin, OidcLogin, ServerConfig
from cli_server.sso.claims import Claims

from .conftest import server_config, start_server, stop_server
from .helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def browse(base: str, scenario: str, session: str | None = None) -> str:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "CHROMIUM": chromium, "HOME": "/tmp"}
    if session:
        env["SESSION"] = session
    if os.environ.get("DARK_SHOTS"):
        env["DARK_SHOTS"] = os.environ["DARK_SHOTS"]
    began = time.monotonic()
    result = subprocess.run(
        ["node", "e2e/sso-accounts.mjs", base, str(ROOT / "docs" / "screenshots"), scenario],
        cwd=ROOT / "webui",
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return f"{result.stdout}(browser run {time.monotonic() - began:.1f} s)"


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
    assert (ROOT / "src/cli_server/webui_dist/index.html").exists(), "build the web UI first"
    port = free_port()
    app = await start_server(db_url, config=configured(db_url, port), port=port)
    try:
        assert app.server.identities is not None and app.server.accounts is not None
        erin = await app.server.identities.sign_in(
            Claims("github", "4242", "erin@example.com", True, "erin"), None
        )
        token = await app.server.accounts.open_trusted_session(erin.id, "journey", "127.0.0.1")
        assert token is not None
        said = await deferToThread(browse, f"http://localhost:{port}", "accounts", token)
        print(said)
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
        print(await deferToThread(browse, f"http://localhost:{port}", "sso-only"))
    finally:
        await stop_server(app)
