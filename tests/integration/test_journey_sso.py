"""Single sign-on in headless Chromium (webui/e2e/sso.mjs): a real `twistd cli-server` whose
OpenID provider is a real one on loopback (npm oidc-provider); the sign-in screen's button
leads through the provider's login and consent back to the dashboard, signed in; cancelling
at the provider lands on the sign-in screen with a sentence. Screenshots in docs/screenshots."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .daemon import Daemon
from .journeys import require_web_ui, run_journey
from .oidc_provider import CLIENT_ID, CLIENT_SECRET, start_oidc_provider

LABEL = "Company login"


def test_sso_journey(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_web_ui()
    server = Daemon(data_dir)
    origin = f"http://localhost:{server.port}"
    provider = start_oidc_provider([f"{origin}/api/auth/oidc/oidc/callback"])
    secret = data_dir.parent / f"{data_dir.name}-oidc-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    for name, value in {
        "OIDC_ISSUER_URL": provider.issuer,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET_FILE": str(secret),
        "OIDC_NAME": LABEL,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OIDC_CLIENT_SECRET", raising=False)
    try:
        server.start()
        status, listed = server.request("GET", "/api/auth/providers")
        assert status == 200 and listed[0]["label"] == LABEL
        run_journey("sso.mjs", origin, LABEL, timeout=180)
    finally:
        server.stop()
        provider.stop()
    log = server.log.read_text()
    assert "single sign-on: journey-user signed in with oidc" in log
    assert "single sign-on with oidc refused (denied)" in log
    assert CLIENT_SECRET not in log
    # (the callback's access log line blanks the code and the state)
    assert "/callback?code=redacted&state=redacted" in log
    assert re.search(r"[?&](code|state)=(?!redacted)", log) is None
