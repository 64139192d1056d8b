"""Browser journeys (webui/e2e/claude.mjs) against a real `twistd cli-server` with no
Anthropic credentials: the owner's banner and the guest's note, the budget control, and the
local agent dialog, whose copied connect command is then run exactly as copied (a real
`twistd cli-agent`) until the workspace shows the laptop's local sandbox."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .daemon import Daemon, twistd
from .helpers import needs_isolation, remove_dir, scratch_dir

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"


def _journey(phase: str, server: Daemon, home: Path) -> str:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    began = time.monotonic()
    result = subprocess.run(
        ["node", "e2e/claude.mjs", phase, f"http://localhost:{server.port}", str(SHOTS)],
        cwd=ROOT / "webui",
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "CHROMIUM": chromium, "HOME": str(home)},
    )
    print(f"\n{result.stdout}(browser run {phase}: {time.monotonic() - began:.1f} s)")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@needs_isolation
def test_claude_budget_and_local_agent_in_a_browser(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (ROOT / "src/cli_server/webui_dist/index.html").exists(), "build the web UI first"
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    laptop = scratch_dir("cli-test-laptop-")
    server = Daemon(data_dir)
    server.start()
    agent: subprocess.Popen[bytes] | None = None
    try:
        printed = _journey("ui", server, data_dir.parent)
        (line,) = [x for x in printed.splitlines() if x.startswith("CONNECT ")]
        copied = json.loads(line[len("CONNECT ") :])
        argv = shlex.split(copied)
        # The copied command, word for word, with the laptop's twistd for the first word.
        assert argv[0] == "~/.cli-agent/bin/twistd", copied
        assert argv[1:3] == ["-n", "cli-agent"], copied
        assert argv[argv.index("--server") + 1] == f"http://localhost:{server.port}", copied
        log = (laptop / "agent.log").open("wb")
        agent = subprocess.Popen(
            [twistd(), *argv[1:]],
            cwd=laptop,
            env={**os.environ, "HOME": str(laptop)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        credentials = {"username": "olive", "password": "correct horse battery"}
        assert server.request("POST", "/api/auth/login", credentials)[0] == 200
        wid = next(w["id"] for w in server.request("GET", "/api/workspaces")[1])
        deadline = time.monotonic() + 60
        while True:
            listed = server.request("GET", f"/api/workspaces/{wid}/sandboxes")[1]
            local = [s for s in listed if s["is_local"] and s["name"] == "my-laptop"]
            if local and local[0]["status"] == "running":
                break
            assert agent.poll() is None, (laptop / "agent.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (laptop / "agent.log").read_text()[-3000:]
            time.sleep(0.2)
        assert (laptop / ".cli-server" / "agent.json").stat().st_mode & 0o777 == 0o600
        _journey("local", server, data_dir.parent)
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
        server.stop()
        remove_dir(laptop)
