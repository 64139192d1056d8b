"""Accounts and the instance in headless Chromium (webui/e2e/accounts.mjs) against a real
`twistd cli-server`: a password change signs the same user's other browser out; the admin
disables a user, whose open dashboard is signed out; restarted with ``--registration closed``,
the sign-in screen says so and offers no sign-up; restarted with ``invite``, a sign-up link
from the users page creates one account. Screenshots land in docs/screenshots."""

from __future__ import annotations

from pathlib import Path

from .daemon import Daemon
from .journeys import origin, require_web_ui, run_journey, running_daemon


def run_journeys(server: Daemon, scenario: str, home: Path) -> None:
    run_journey("accounts.mjs", origin(server), scenario, home=home, timeout=300)


def test_account_journeys(data_dir: Path) -> None:
    """Open registration: password change and session revocation across two browsers, the
    users page's disable/enable/reset; then the same server restarted with registration
    closed: the sign-in screen says so; then by invitation: a sign-up link works once."""
    require_web_ui()
    with running_daemon(data_dir) as server:
        run_journeys(server, "open", data_dir.parent)
    log = server.log.read_text()
    assert "no accounts yet: the first one registered becomes the instance admin" in log

    with running_daemon(data_dir, "--registration", "closed") as closed:
        status, said = closed.request("GET", "/api/auth/registration")
        assert (status, said["mode"], said["first"]) == (200, "closed", False)
        run_journeys(closed, "closed", data_dir.parent)
    assert "no accounts yet" not in closed.log.read_text()[len(log) :]  # (the same log file)

    with running_daemon(data_dir, "--registration", "invite") as invite:
        run_journeys(invite, "invite", data_dir.parent)
    assert "invite=" not in invite.log.read_text()  # (the link's token stays in the fragment)
