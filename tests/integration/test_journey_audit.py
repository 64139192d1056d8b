"""The audit journey (webui/e2e/audit.mjs) in headless Chromium against a real
`twistd cli-server` with real opencode sandboxes: a developer creates and deletes a sandbox and
the owner answers "who deleted that sandbox?" on the workspace's Audit tab (who, what, which
sandbox, when, from where); the action filter narrows to deletions and says when nothing
matches; "Load more" pages; the tab fits 1280 and 640 px windows; a developer and a guest have
no tab and the audit route answers them 403."""

from __future__ import annotations

from pathlib import Path

from .journeys import origin, require_web_ui, run_journey, running_daemon


def test_audit_journey(data_dir: Path) -> None:
    require_web_ui()
    with running_daemon(data_dir) as server:
        said = run_journey("audit.mjs", origin(server), home=data_dir.parent)
    assert "audit journey:" in said
