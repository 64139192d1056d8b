"""The shared-link journey (webui/e2e/landing.mjs) in headless Chromium against a real
`twistd cli-server` with real opencode: a member signed in on the dashboard opens a sandbox's
copied address and lands in opencode on /data/disk0; a signed-out visitor signs in first; a
non-member reads why not; a guest lands on the latest session and is refused in words; a
paused sandbox offers "Resume and open". Screenshots land in docs/screenshots
(open-link-*.png, guest-opencode.png)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .daemon import Daemon
from .helpers import needs_isolation

ROOT = Path(__file__).resolve().parents[2]


@needs_isolation
def test_shared_link_journey(data_dir: Path) -> None:
    assert (ROOT / "src/cli_server/webui_dist/index.html").exists(), (
        "the web UI is not built: npm run build -w webui"
    )
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    server = Daemon(data_dir, "--direct-members", "*")
    server.start()
    began = time.monotonic()
    try:
        done = subprocess.run(
            [
                "node",
                "e2e/landing.mjs",
                f"http://localhost:{server.port}",
                str(ROOT / "docs/screenshots"),
            ],
            cwd=ROOT / "webui",
            capture_output=True,
            text=True,
            timeout=600,  # bounded: the browser run is killed after this
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
    for line in (
        "member opened the shared link",
        "signed-out visitor signed in and opened the link",
        "guest prompt refused in opencode's own words",
        "guest landed on the latest session",
        "paused sandbox resumed and opened",
    ):
        assert line in done.stdout, done.stdout
