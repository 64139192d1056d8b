"""End-to-end journeys in headless Chromium against a real `twistd cli-server` with real
opencode sandboxes (webui/e2e/journeys.mjs); screenshots land in docs/screenshots."""

from __future__ import annotations

from pathlib import Path

from .helpers import needs_isolation
from .journeys import origin, require_web_ui, run_journey, running_daemon


@needs_isolation
def test_browser_journeys(data_dir: Path) -> None:
    """Register, workspace, member, sandbox create/pause/resume/open/delete, guest view,
    failed login, phone width: all in a real browser."""
    require_web_ui()
    with running_daemon(data_dir) as server:
        run_journey("journeys.mjs", origin(server), home=data_dir.parent)
