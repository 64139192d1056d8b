"""The shared-link journey (webui/e2e/landing.mjs) in headless Chromium against a real
`twistd cli-server` with real opencode: a member signed in on the dashboard opens a sandbox's
copied address and lands in opencode on /data/disk0; a signed-out visitor signs in first; a
non-member reads why not; a guest lands on the latest session and is refused in words; a
paused sandbox offers "Resume and open". Screenshots land in docs/screenshots
(open-link-*.png, guest-opencode.png)."""

from __future__ import annotations

from pathlib import Path

from .helpers import needs_isolation
from .journeys import origin, require_web_ui, run_journey, running_daemon


@needs_isolation
def test_shared_link_journey(data_dir: Path) -> None:
    require_web_ui()
    with running_daemon(data_dir, "--direct-members", "*") as server:
        said = run_journey("landing.mjs", origin(server), home=data_dir.parent)
    for line in (
        "member opened the shared link",
        "signed-out visitor signed in and opened the link",
        "guest prompt refused in opencode's own words",
        "guest landed on the latest session",
        "paused sandbox resumed and opened",
    ):
        assert line in said, said
