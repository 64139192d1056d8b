"""Issue 17's dashboard in headless Chromium against a real `twistd cli-server`
(webui/e2e/dashboard.mjs): URLs, titles, reload and Back; a role change and a removal reaching
an already-open dashboard within seconds; the delete confirmation naming its sandboxes and
asking for the name; roles explained; the phone drawer. Screenshots land in docs/screenshots."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .daemon import Daemon
from .helpers import needs_isolation

ROOT = Path(__file__).resolve().parents[2]


@needs_isolation
def test_dashboard_journeys(data_dir: Path) -> None:
    assert (ROOT / "src/cli_server/webui_dist/index.html").exists(), (
        "the web UI is not built: npm run build -w webui"
    )
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    server = Daemon(data_dir)
    server.start()
    try:
        began = time.monotonic()
        result = subprocess.run(
            [
                "node",
                "e2e/dashboard.mjs",
                f"http://localhost:{server.port}",
                str(ROOT / "docs" / "screenshots"),
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
        print(f"\n{result.stdout}(browser run {time.monotonic() - began:.1f} s)")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        server.stop()
