"""The newcomer walkthrough's web-UI fixes (webui/e2e/polish.mjs) in headless Chromium against
a real `twistd cli-server` with real opencode and no Anthropic key: the administrator's Claude
banner on an empty dashboard (compact on phones), a long workspace name in the sidebar, an
invitation notice that goes once the person joined, Change role by keyboard, and Open on a
paused sandbox resuming it. Screenshots land in docs/screenshots."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .daemon import Daemon
from .helpers import needs_isolation

ROOT = Path(__file__).resolve().parents[2]


@needs_isolation
def test_polish_journey(data_dir: Path) -> None:
    assert (ROOT / "src/cli_server/webui_dist/index.html").exists(), (
        "the web UI is not built: npm run build -w webui"
    )
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    server = Daemon(data_dir)
    server.start()
    began = time.monotonic()
    try:
        # Bounded: the journey is killed if it takes longer than this.
        done = subprocess.run(
            [
                "node",
                "e2e/polish.mjs",
                f"http://localhost:{server.port}",
                str(ROOT / "docs/screenshots"),
            ],
            cwd=ROOT / "webui",
            capture_output=True,
            text=True,
            timeout=600,
            env={
                "PATH": "/usr/bin:/bin:/usr/local/bin",
                "CHROMIUM": chromium,
                "HOME": str(data_dir.parent),
            },
        )
    finally:
        server.stop()
    print(f"\n{done.stdout}(browser run {time.monotonic() - began:.1f} s)")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "polish journey:" in done.stdout
