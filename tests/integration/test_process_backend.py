"""Real opencode under real bubblewrap and slirp4netns: lifecycle, isolation, measurements."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from treq.client import HTTPClient
from twisted.web.client import Agent

from cli_server.auth.tokens import token_hash
from cli_server.sandboxes.backend import Endpoint, SandboxSpec
from cli_server.sandboxes.opencode import OpencodeClient, basic_auth
from cli_server.sandboxes.process_backend import ProcessBackend

from .conftest import Real, _reactor
from .helpers import (
    needs_isolation,
    opencode_binary,
    remove_dir,
    scratch_dir,
)
from .sandbox_shell import can_connect, descendants, run_inside


def _rss_mib(pid: int) -> float:
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_lifecycle_with_real_opencode(real: Real) -> None:
    """create, running (auth enforced), pause, resume (sessions kept), delete (no process)."""
    client = OpencodeClient(_reactor())
    sid, create_s = await real.create("a", "first")
    endpoint, password = await real.endpoint(sid)
    assert (await client.get_json(endpoint, password, "/global/health"))[0] == 200
    assert (await client.get_json(endpoint, "wrong", "/global/health"))[0] == 401

    agent_pid = real.pid(sid)
    session = await _post_json(endpoint, password, "/session", {"title": "kept"})
    rss = _rss_mib(real.backend.live(sid).sandbox.pid)

    assert (await real.owner.call("POST", f"/api/sandboxes/{sid}/pause")).code == 200
    await real.wait(sid, "paused")
    assert not Path(f"/proc/{agent_pid}").exists()
    began = time.monotonic()
    assert (await real.owner.call("POST", f"/api/sandboxes/{sid}/resume")).code == 200
    await real.wait(sid, "running")
    resume_s = time.monotonic() - began
    endpoint, password = await real.endpoint(sid)
    code, sessions = await client.get_json(endpoint, password, "/session")
    assert code == 200 and session["id"] in [s["id"] for s in sessions]

    last_pid = real.pid(sid)
    assert (await real.owner.call("DELETE", f"/api/sandboxes/{sid}")).code == 204
    assert not Path(f"/proc/{last_pid}").exists()
    assert not (real.data_dir / "sandboxes" / sid).exists()
    assert basic_auth(password).startswith(b"Basic ")
    print(
        f"\ncreate->running {create_s:.2f}s, resume->running {resume_s:.2f}s, "
        f"RSS {rss:.0f} MiB (fresh, one session)"
    )


async def _post_json(endpoint: Endpoint, password: str, path: str, body: Any) -> Any:

    from cli_server.sandboxes.opencode import basic_auth

    http = HTTPClient(Agent(_reactor()))
    d = http.post(
        f"http://{endpoint.host}:{endpoint.port}{path}",
        json=body,
        headers={"authorization": basic_auth(password)},
    )
    d.addTimeout(10, _reactor())
    response = await d
    assert response.code == 200, response.code
    return await response.json()


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_isolation(real: Real) -> None:
    """Inside a sandbox: no host loopback, no other sandbox, no server files; the workspace
    disk is shared within the workspace only."""
    a1, _ = await real.create("a", "a1")
    a2, _ = await real.create("a", "a2")
    b1, _ = await real.create("b", "b1")
    inside_a1, inside_a2, inside_b1 = real.pid(a1), real.pid(a2), real.pid(b1)
    server_port = real.app.port.getHost().port
    other = (await real.endpoint(b1))[0].port

    # Our own opencode answers inside; the host's services and other sandboxes do not.
    assert can_connect(inside_a1, "127.0.0.1", 4096)
    for host, port in [
        ("127.0.0.1", server_port),
        ("10.0.2.2", server_port),
        ("127.0.0.1", other),
        ("10.0.2.2", other),
        ("10.0.2.2", 4096),
    ]:
        assert not can_connect(inside_a1, host, port), (host, port)

    memory = Path("/sys/fs/cgroup/memory")
    if memory.is_dir() and os.access(memory, os.W_OK):  # limits apply where cgroups allow
        assert f"memory:/cli-server/{a1}" in Path(f"/proc/{inside_a1}/cgroup").read_text()
        assert (memory / "cli-server" / a1 / "memory.limit_in_bytes").read_text().strip() == str(
            2 * 1024**3
        )
    who = run_inside(inside_a1, "id -u; cat /proc/self/status | grep CapEff")
    assert who.stdout.split()[0] == "1000"
    assert "0000000000000000" in who.stdout
    secrets_visible = run_inside(
        inside_a1, f"ls {real.data_dir} {real.data_dir}/postgres /root 2>&1; cat /etc/shadow"
    )
    assert secrets_visible.returncode != 0
    assert "PG_VERSION" not in secrets_visible.stdout
    assert run_inside(inside_a1, "touch /usr/bin/x").returncode != 0  # read-only system

    assert run_inside(inside_a1, "echo shared > /data/disk0/note").returncode == 0
    assert run_inside(inside_a2, "cat /data/disk0/note").stdout.strip() == "shared"
    assert run_inside(inside_b1, "cat /data/disk0/note").returncode != 0
    home = run_inside(inside_a2, "ls -A /home/opencode; cat /proc/1/cmdline | tr '\\0' ' '")
    assert "bwrap" in home.stdout or "opencode" in home.stdout  # its own pid namespace


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_environment_holds_only_its_own_secrets(real: Real) -> None:
    """opencode gets its password and proxy token, and nothing of the server's."""
    sid, _ = await real.create("a", "env")
    env = Path(f"/proc/{real.pid(sid)}/environ").read_bytes().split(b"\0")
    names = {e.split(b"=", 1)[0].decode() for e in env if e}
    assert {
        "OPENCODE_SERVER_PASSWORD",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "HOME",
        "OPENCODE_DISABLE_AUTOUPDATE",
    } <= names
    assert not {"DATABASE_URL", "CLI_SERVER_DATA", "PGPASSWORD"} & names
    base = next(e for e in env if e.startswith(b"ANTHROPIC_BASE_URL="))
    assert base == b"ANTHROPIC_BASE_URL=http://127.0.0.1:4097/proxy/anthropic/v1"
    assert b"sk-ant-fake-server-key" not in b"\0".join(env)  # the real key never goes in
    token = next(e for e in env if e.startswith(b"ANTHROPIC_API_KEY=")).split(b"=", 1)[1]
    (row,) = await real.app.db.query("SELECT proxy_token_hash FROM sandboxes WHERE id = %s", (sid,))
    assert bytes(row["proxy_token_hash"]) == token_hash(token.decode())  # its own token


@pytest_twisted.ensureDeferred
async def test_unisolated_mode() -> None:
    """--allow-unisolated: opencode runs as a plain loopback process, with the same lifecycle."""
    reactor = _reactor()
    root = scratch_dir("cli-test-uniso-")
    client = OpencodeClient(reactor)
    backend = ProcessBackend(reactor, root / "data", opencode_binary(), client, isolated=False)
    spec = SandboxSpec(
        "33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444", "pw", "tok"
    )
    try:
        endpoint = await backend.start(spec)
        assert endpoint.host == "127.0.0.1"
        assert (await client.get_json(endpoint, "pw", "/global/health"))[0] == 200
        pid = backend.live(spec.id).sandbox.pid
        await backend.stop(spec.id)
        assert not Path(f"/proc/{pid}").exists()
        assert (await backend.describe(spec.id)).state.value == "stopped"
        await backend.start(spec)
        await backend.delete(spec.id)
        assert (await backend.describe(spec.id)).state.value == "missing"
    finally:
        await backend.close()
        remove_dir(root)
