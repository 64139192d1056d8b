"""The sandbox-cards journey (webui/e2e/cards.mjs) in headless Chromium against a real
`twistd cli-server` with real opencode: card facts, copy link, a name in use, Open landing on
/data/disk0, and a SIGKILLed opencode shown as crashed with its reason and log. Screenshots
land in docs/screenshots (card-*.png, opencode-project.png, sandbox-crashed-page.png)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from .helpers import needs_isolation
from .journeys import WEBUI, browser_env, journey_argv, origin, require_web_ui, running_daemon
from .sandbox_shell import opencode_pid


@needs_isolation
def test_sandbox_cards_journey(data_dir: Path) -> None:
    require_web_ui()
    with running_daemon(data_dir) as server:
        began = time.monotonic()
        journey = subprocess.Popen(
            journey_argv("cards.mjs", origin(server)),
            cwd=WEBUI,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=browser_env(data_dir.parent),
        )
        code, said, errors, killed = _answer_kills(journey, data_dir)
    print(f"\n{''.join(said)}(browser run {time.monotonic() - began:.1f} s)")
    assert code == 0, "".join(said)[-3000:] + errors[-3000:]
    assert len(killed) == 1, said
    assert any(line.startswith("crash shown") for line in said), said


def _answer_kills(
    journey: subprocess.Popen[str], data_dir: Path
) -> tuple[int, list[str], str, list[str]]:
    """Reads the journey to its end, SIGKILLing the opencode of each ``KILL <id>`` it asks
    for; returns its exit code, its lines, its stderr and the sandboxes killed."""
    # Bounded: whatever the journey does, it is killed after this.
    watchdog = threading.Timer(600, journey.kill)
    watchdog.start()
    said: list[str] = []
    killed: list[str] = []
    try:
        assert journey.stdout is not None and journey.stdin is not None
        for line in journey.stdout:
            said.append(line)
            if line.startswith("KILL "):
                sandbox_id = line.split()[1]
                root_pid = int((data_dir / "sandboxes" / sandbox_id / "pid").read_text())
                os.kill(opencode_pid(root_pid), signal.SIGKILL)
                killed.append(sandbox_id)
                journey.stdin.write("killed\n")
                journey.stdin.flush()
        code = journey.wait(timeout=30)
        errors = journey.stderr.read() if journey.stderr is not None else ""
    finally:
        watchdog.cancel()
        if journey.poll() is None:
            journey.kill()
            journey.wait()
    return code, said, errors, killed
