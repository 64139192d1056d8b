"""Issue 17's dashboard in headless Chromium against a real `twistd cli-server`
(webui/e2e/dashboard.mjs): URLs, titles, reload and Back; a role change and a removal reaching
an already-open dashboard within seconds; the delete confirmation naming its sandboxes and
asking for the name; roles explained; the phone drawer. Screenshots land in docs/screenshots."""

from __future__ import annotations

from pathlib import Path

from .helpers import needs_isolation
from .journeys import origin, require_web_ui, run_journey, running_daemon


@needs_isolation
def test_dashboard_journeys(data_dir: Path) -> None:
    require_web_ui()
    with running_daemon(data_dir) as server:
        run_journey("dashboard.mjs", origin(server), home=data_dir.parent)
