"""Accounts and the instance in headless Chromium (webui/e2e/accounts.mjs) against a real
`twistd cli-server`: a password change signs the same user's other browser out; the admin
disables a user, whose open dashboard is signed out; restarted with ``--registration closed``,
the sign-in screen says so and offers no sign-up; restarted with ``invite``, a sign-up link
from the users page creates one account. Screenshots land in docs/screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .daemon import Daemon

ROOT = Path(__file__).resolve().parents[2]


def run_journeys(server: Daemon, scenario: str, home: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    began = time.monotonic()
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "CHROMIUM": chromium, "HOME": str(home)}
    if os.environ.get("DARK_SHOTS"):
        env["DARK_SHOTS"] = os.environ["DARK_SHOTS"]
    result = subprocess.run(
        [
            "node",
            "e2e/accounts.mjs",
            f"http://localhost:{server.port}",
            str(ROOT / "docs" / "screenshots"),
            scenario,
        ],
        cwd=ROOT / "webui",
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    print(f"\n{result.stdout}(browser run {time.monotonic() - began:.1f} s)")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_account_journeys(data_dir: Path) -> None:
    """Open registration: password change and session revocation across two browsers, the
    users page's disable/enable/reset; then the same server restarted with registration
    closed: the sign-in screen says so; then by invitation: a sign-up link works once."""
    assert (ROOT / "src/cli_server/webui_dist/index.html").exists(), (
        "the web UI is not built: npm run build -w webui"
    )
    server = Daemon(data_dir)
    server.start()
    try:
        run_journeys(server, "open", data_dir.parent)
    finally:
        server.stop()
    log = server.log.read_text()
    assert "no accounts yet: the first one registered becomes the instance admin" in log

    closed = Daemon(data_dir, "--registration", "closed")
    closed.start()
    try:
        status, said = closed.request("GET", "/api/auth/registration")
        assert (status, said["mode"], said["first"]) == (200, "closed", False)
        run_journeys(closed, "closed", data_dir.parent)
    finally:
        closed.stop()
    assert "no accounts yet" not in closed.log.read_text()[len(log) :]  # (the same log file)

    invite = Daemon(data_dir, "--registration", "invite")
    invite.start()
    try:
        run_journeys(invite, "invite", data_dir.parent)
    finally:
        invite.stop()
    assert "invite=" not in invite.log.read_text()  # (the link's token stays in the fragment)
