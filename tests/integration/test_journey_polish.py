"""The newcomer walkthrough's web-UI fixes (webui/e2e/polish.mjs) in headless Chromium against
a real `twistd cli-server` with real opencode and no Anthropic key: the administrator's Claude
banner on an empty dashboard (compact on phones), a long workspace name in the sidebar, an
invitation notice that goes once the person joined, Change role by keyboard, and Open on a
paused sandbox resuming it. Screenshots land in docs/screenshots."""

from __future__ import annotations

from pathlib import Path

from .helpers import needs_isolation
from .journeys import origin, require_web_ui, run_journey, running_daemon


@needs_isolation
def test_polish_journey(data_dir: Path) -> None:
    require_web_ui()
    with running_daemon(data_dir) as server:
        said = run_journey("polish.mjs", origin(server), home=data_dir.parent)
    assert "polish journey:" in said
