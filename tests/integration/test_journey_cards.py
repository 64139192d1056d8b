"""The sandbox-cards journey (webui/e2e/cards.mjs) in headless Chromium against a real
`twistd cli-server` with real opencode: card facts, copy link, a name in use, Open landing on
/data/disk0, and a SIGKILLed opencode shown as crashed with its reason and log. Screenshots
land in docs/screenshots (card-*.png, opencode-project.png, sandbox-crashed-page.png)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from .helpers import needs_isolation
from .journeys import converse, origin, require_web_ui, running_daemon
from .sandbox_shell import opencode_pid


@needs_isolation
def test_sandbox_cards_journey(data_dir: Path) -> None:
    require_web_ui()
    killed: list[str] = []

    def kill(line: str) -> str | None:
        """SIGKILLs the opencode of each ``KILL <id>`` the journey asks for."""
        if not line.startswith("KILL "):
            return None
        sandbox_id = line.split()[1]
        root_pid = int((data_dir / "sandboxes" / sandbox_id / "pid").read_text())
        os.kill(opencode_pid(root_pid), signal.SIGKILL)
        killed.append(sandbox_id)
        return "killed"

    with running_daemon(data_dir) as server:
        code, said, errors = converse("cards.mjs", origin(server), data_dir.parent, kill)
    assert code == 0, "".join(said)[-3000:] + errors[-3000:]
    assert len(killed) == 1, said
    assert any(line.startswith("crash shown") for line in said), said
