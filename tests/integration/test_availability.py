"""Availability (issue 16, class 8) with real components: a sandbox whose opencode is killed
from inside is failed at once, with the reason, and resumes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.task import deferLater

from .conftest import Real, _reactor
from .helpers import needs_isolation
from .sandbox_shell import run_inside


def _pid_inside(host_pid: int) -> int:
    """The pid a process has in its own (innermost) pid namespace."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {host_pid}")


async def _visit(real: Real, sandbox_id: str, path: str, cookie: str | None = None) -> Any:
    headers = {"Host": f"oc-{sandbox_id}.localhost:8080"}
    if cookie is not None:
        headers["Cookie"] = f"cli_sandbox={cookie}"
    return await real.app.client().call("GET", path, headers=headers)


async def _open(real: Real, sandbox_id: str) -> str:
    url = (await real.owner.call("POST", f"/api/sandboxes/{sandbox_id}/open")).body["url"]
    reply = await _visit(real, sandbox_id, url.split(":8080", 1)[1])
    assert reply.code == 303, reply
    return str(reply.headers.getRawHeaders("set-cookie")[0].split(";")[0].split("=", 1)[1])


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_opencode_killed_inside_the_sandbox_is_failed_at_once(real: Real) -> None:
    """Code in the sandbox kills opencode (SIGKILL, as the OOM killer would): within about a
    second the API says failed with the signal, the subdomain shows the failed page instead of
    an error, and Resume brings it back."""
    sid, _ = await real.create("a", "victim")
    cookie = await _open(real, sid)
    assert (await _visit(real, sid, "/global/health", cookie)).code == 200  # cached: running

    opencode = real.pid(sid)
    killed = run_inside(opencode, f"kill -KILL {_pid_inside(opencode)}")
    assert killed.returncode == 0, killed.stderr
    began = time.monotonic()
    while True:
        row = (await real.owner.call("GET", f"/api/sandboxes/{sid}")).body
        if row["status"] != "running" or time.monotonic() - began > 5:
            break
        await deferLater(_reactor(), 0.05)
    noticed = time.monotonic() - began
    assert row["status"] == "failed", row
    assert row["error"] == "opencode was killed (SIGKILL)", row
    assert noticed < 1.5, f"took {noticed:.2f} s"

    page = await _visit(real, sid, "/", cookie)
    assert page.code == 503 and b"failed" in page.body, page
    assert (
        sid not in real.backend._live and not (real.data_dir / "sandboxes" / sid / "netns").exists()
    )

    assert (await real.owner.call("POST", f"/api/sandboxes/{sid}/resume")).code == 200
    await real.wait(sid, "running")
    assert (await _visit(real, sid, "/global/health", cookie)).code == 200
    print(f"\nkilled opencode seen as failed after {noticed:.2f} s")
