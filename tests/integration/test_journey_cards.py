"""The sandbox-cards journey (webui/e2e/cards.mjs) in headless Chromium against a real
`twistd cli-server` with real opencode: card facts, copy link, a name in use, Open landing on
/data/disk0, and a SIGKILLed opencode shown as crashed with its reason and log. Screenshots
land in docs/screenshots (card-*.png, opencode-project.png, sandbox-crashed-page.png)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from .daemon import Daemon
from .helpers import needs_isolation
from .sandbox_shell import opencode_pid

ROOT = Path(__file__).resolve().parents[2]


@needs_isolation
def test_sandbox_cards_journey(data_dir: Path) -> None:
    assert (ROOT / "src/cli_server/webui_dist/index.html").exists(), (
        "the web UI is not built: npm run build -w webui"
    )
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    server = Daemon(data_dir)
    server.start()
    began = time.monotonic()
    journey = subprocess.Popen(
        [
            "node",
            "e2e/cards.mjs",
            f"http://localhost:{server.port}",
            str(ROOT / "docs/screenshots"),
        ],
        cwd=ROOT / "webui",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "CHROMIUM": chromium,
            "HOME": str(data_dir.parent),
        },
    )
    # Bounded: whatever the journey does, it is killed after this.
    watchdog = threading.Timer(600, journey.kill)
    watchdog.start()
    said: list[str] = []
    killed = []
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
        server.stop()
    print(f"\n{''.join(said)}(browser run {time.monotonic() - began:.1f} s)")
    assert code == 0, "".join(said)[-3000:] + errors[-3000:]
    assert len(killed) == 1, said
    assert any(line.startswith("crash shown") for line in said), said
