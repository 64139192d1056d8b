"""SIGKILL the real server while sandboxes run: nothing is orphaned, and a restart repairs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from .daemon import Daemon, processes_mentioning
from .helpers import needs_isolation
from .sandbox_shell import cmdline, descendants

pytestmark = needs_isolation


def wait_status(server: Daemon, sandbox_id: str, wanted: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = server.request("GET", f"/api/sandboxes/{sandbox_id}")[1]["status"]
        if status == wanted:
            return
        assert status != "failed"
        time.sleep(0.1)
    raise AssertionError(f"sandbox {sandbox_id} stayed {status}, wanted {wanted}")


def test_sigkill_with_running_sandboxes(data_dir: Path) -> None:
    """After SIGKILL every sandbox process dies; on restart the rows read paused and resume."""
    server = Daemon(data_dir)
    server.start()
    assert (
        server.request(
            "POST", "/api/auth/register", {"username": "crash", "password": "password123"}
        )[0]
        == 201
    )
    assert (
        server.request("POST", "/api/auth/login", {"username": "crash", "password": "password123"})[
            0
        ]
        == 200
    )
    wid = server.request("POST", "/api/workspaces", {"name": "w"})[1]["id"]
    ids = [
        server.request("POST", f"/api/workspaces/{wid}/sandboxes", {"name": n})[1]["id"]
        for n in ("one", "two")
    ]
    for sid in ids:
        wait_status(server, sid, "running")
    assert server.proc is not None
    tree = descendants(server.proc.pid)
    commands = [cmdline(p) for p in tree]
    assert sum(c.startswith("/opt/opencode/bin/opencode serve") for c in commands) == 2
    assert sum(c.startswith("/usr/bin/slirp4netns") for c in commands) == 2

    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in tree):
        time.sleep(0.1)
    left = [f"{p}: {cmdline(p)}" for p in tree if Path(f"/proc/{p}").exists() and cmdline(p)]
    assert not left, f"orphans after SIGKILL: {left}"

    server.start()
    for sid in ids:
        code, body = server.request("GET", f"/api/sandboxes/{sid}")
        assert (code, body["status"]) == (200, "paused"), body
    assert server.request("POST", f"/api/sandboxes/{ids[0]}/resume")[0] == 200
    wait_status(server, ids[0], "running")
    server.stop(signal.SIGTERM)
    assert processes_mentioning(str(data_dir)) == [], "orderly stop left processes"
