"""Browser journeys (webui/e2e/claude.mjs) against a real `twistd cli-server` with no
Anthropic credentials: the owner's banner and the guest's note, the budget control, and the
local agent dialog, whose copied connect command is then run exactly as copied (a real
`twistd cli-agent`) until the workspace shows the laptop's local sandbox."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from .daemon import Daemon, twistd
from .helpers import needs_isolation, remove_dir, scratch_dir
from .journeys import origin, require_web_ui, run_journey


def _journey(phase: str, server: Daemon, home: Path) -> str:
    return run_journey("claude.mjs", origin(server), phase, home=home, timeout=300)


@needs_isolation
def test_claude_budget_and_local_agent_in_a_browser(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_web_ui()
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
