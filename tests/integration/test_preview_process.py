"""Previews on the real process backend: a real dev server inside a real sandbox, seen by
``listening_ports``, reached through ``preview_endpoint``'s forward, and by nobody else."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet.defer import gatherResults

from cli_server.sandboxes.backend import Endpoint

from .conftest import Real, _reactor
from .helpers import needs_isolation, wait_until
from .sandbox_shell import can_connect, run_inside

DEV_PORT = 8000


def serve_inside(pid: int, port: int) -> None:
    """Start ``python3 -m http.server`` in the sandbox, as an agent would, in the background
    (it dies with the sandbox), with a page of its own in the workspace disk."""
    started = run_inside(
        pid,
        "mkdir -p /data/disk0/site && echo '<h1>made in the sandbox</h1>' > "
        "/data/disk0/site/index.html && cd /data/disk0/site || exit 1\n"
        f"setsid python3 -m http.server {port} >/dev/null 2>&1 </dev/null &",
    )
    assert started.returncode == 0, started.stderr


def host_listeners(port: int) -> set[str]:
    """The host's local addresses (as the kernel's tables write them) listening on ``port``."""
    found = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].rpartition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def connects(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(3)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def fetch(endpoint: Endpoint, path: str = "/") -> tuple[int, bytes]:
    d = treq.get(f"http://{endpoint.host}:{endpoint.port}{path}", reactor=_reactor())
    d.addTimeout(10, _reactor())
    response = await d
    return response.code, await treq.content(response)


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_preview_of_a_real_dev_server(real: Real) -> None:
    """The dev server's port is listed and reached from the host through one forward on
    127.0.0.1; another sandbox can reach neither it nor the forward; a pause ends it."""
    a, _ = await real.create("a", "dev")
    b, _ = await real.create("b", "other")
    assert await real.backend.listening_ports(a) == []  # opencode's own port is not listed

    serve_inside(real.pid(a), DEV_PORT)

    async def listed() -> bool:
        return DEV_PORT in await real.backend.listening_ports(a)

    await wait_until(_reactor(), listed, timeout=20, step=0.1)
    assert await real.backend.listening_ports(a) == [DEV_PORT]
    assert await real.backend.listening_ports(b) == []
    ports = await real.owner.call("GET", f"/api/sandboxes/{a}/ports")
    assert ports.code == 200 and ports.body == {"ports": [DEV_PORT], "listed": True}

    # Two requests at once make one forward, reused afterwards.
    first, second = await gatherResults(
        [real.backend.preview_endpoint(a, DEV_PORT), real.backend.preview_endpoint(a, DEV_PORT)]
    )
    assert first is not None and first == second
    assert await real.backend.preview_endpoint(a, DEV_PORT) == first
    assert first.host == "127.0.0.1" and first != real.backend.endpoint_now(a)
    assert host_listeners(first.port) == {"0100007F"}  # the host's loopback only
    code, body = await fetch(first)
    assert code == 200 and b"made in the sandbox" in body

    # A port nothing listens on yet still has a forward; connecting there fails.
    idle = await real.backend.preview_endpoint(a, 5173)
    assert idle is not None and idle.port != first.port

    # Sandbox b reaches neither a's forward on the host nor a's dev server.
    inside_b = real.pid(b)
    for host, port in [
        ("127.0.0.1", first.port),
        ("10.0.2.2", first.port),
        ("10.0.2.2", DEV_PORT),
        ("10.0.2.100", DEV_PORT),  # a's own address in its namespace: not b's network
    ]:
        assert not can_connect(inside_b, host, port), (host, port)
    assert can_connect(real.pid(a), "127.0.0.1", DEV_PORT)  # (the check can succeed)

    assert (await real.owner.call("POST", f"/api/sandboxes/{a}/pause")).code == 200
    await real.wait(a, "paused")
    assert not connects(first.port) and host_listeners(first.port) == set()
    assert await real.backend.preview_endpoint(a, DEV_PORT) is None
    assert await real.backend.listening_ports(a) == []
    refused = await real.owner.call("GET", f"/api/sandboxes/{a}/ports")
    assert (refused.code, refused.error_code) == (409, "invalid_state"), refused.body
    assert refused.body["error"]["sandbox_status"] == "paused"
