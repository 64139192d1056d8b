"""Previews on the real process backend: a real dev server inside a real sandbox, seen by
``listening_ports``, reached through ``preview_endpoint``'s forward, and by nobody else."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from cli_server.sandboxes.backend import Endpoint
from cli_server.sandboxes.forward_guard import table_name
from cli_server.sandboxes.process_backend import ANTHROPIC_PORT, MAX_FORWARDS, NOT_LISTENING

from .conftest import Real, _reactor
from .helpers import Wire, needs_isolation, wait_until
from .sandbox_shell import can_connect, run_inside
from .test_previews import frame

DEV_PORT = 8000
LOOPBACK_PORT = 5174
VITE = 5173
DEV_SERVER = Path(__file__).with_name("sandbox_dev_server.py")


def serve_inside(pid: int, port: int, bind: str = "0.0.0.0") -> None:
    """Start ``python3 -m http.server`` in the sandbox, as an agent would, in the background
    (it dies with the sandbox), with a page of its own in the workspace disk."""
    started = run_inside(
        pid,
        "mkdir -p /data/disk0/site && echo '<h1>made in the sandbox</h1>' > "
        "/data/disk0/site/index.html && cd /data/disk0/site || exit 1\n"
        f"setsid python3 -m http.server {port} --bind {bind} >/dev/null 2>&1 </dev/null &",
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


async def answers_nothing(endpoint: Endpoint | None) -> bool:
    """Whether an HTTP request to ``endpoint`` gets no answer at all (slirp4netns accepts,
    then closes when nothing in the sandbox takes the connection)."""
    assert endpoint is not None
    try:
        await fetch(endpoint)
    except Exception:
        return True
    return False


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_preview_of_a_real_dev_server(real: Real) -> None:
    """The dev server's port is listed and reached from the host through one forward on
    127.0.0.1; another sandbox can reach neither it nor the forward; a pause ends it, and a
    server's stop ends them all."""
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

    # A dev server on the sandbox's loopback only (as Vite's default is) is reached too.
    serve_inside(real.pid(a), LOOPBACK_PORT, bind="127.0.0.1")

    async def both_listed() -> bool:
        return await real.backend.listening_ports(a) == [LOOPBACK_PORT, DEV_PORT]

    await wait_until(_reactor(), both_listed, timeout=20, step=0.1)
    local = await real.backend.preview_endpoint(a, LOOPBACK_PORT)
    assert local is not None and host_listeners(local.port) == {"0100007F"}
    code, body = await fetch(local)
    assert code == 200 and b"made in the sandbox" in body

    # The Anthropic door on that loopback is no preview, nor is a port nothing listens on in
    # the sandbox, even where the host itself listens on it (our own API's): no forward, an
    # endpoint that refuses at once (the proxy's "nothing is listening" page).
    forwards = set(real.backend.live(a).forwards)
    for port in (ANTHROPIC_PORT, VITE, real.app.port.getHost().port):
        assert await real.backend.preview_endpoint(a, port) == NOT_LISTENING
        assert await answers_nothing(NOT_LISTENING)
    assert set(real.backend.live(a).forwards) == forwards == {DEV_PORT, LOOPBACK_PORT}

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

    # A server stopping ends every forward with its sandboxes: a restarted server finds none.
    serve_inside(inside_b, DEV_PORT)

    async def listed_in_b() -> bool:
        return DEV_PORT in await real.backend.listening_ports(b)

    await wait_until(_reactor(), listed_in_b, timeout=20, step=0.1)
    kept = await real.backend.preview_endpoint(b, DEV_PORT)
    assert kept is not None and host_listeners(kept.port) == {"0100007F"}
    await real.backend.close()
    assert host_listeners(kept.port) == set()
    assert await real.backend.preview_endpoint(b, DEV_PORT) is None


MANY_PORTS = Path(__file__).with_name("sandbox_many_ports.py")
NOBODY = 65534


def nobody_connects(port: int) -> int:
    """connect()'s error number for another local account (nobody) trying 127.0.0.1:port."""
    probe = (
        "import socket; s = socket.socket(); s.settimeout(3); "
        f"print(s.connect_ex(('127.0.0.1', {port})))"
    )
    done = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        + ["/usr/bin/python3", "-c", probe],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return int(done.stdout)


def guarded_ports(data_dir: Path) -> set[int] | None:
    """The host ports in the server's nftables set; None when its table is gone."""
    listed = subprocess.run(
        ["nft", "-j", "list", "set", "ip", table_name(data_dir), "ports"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    if listed.returncode != 0:
        return None
    (entry,) = [e["set"] for e in json.loads(listed.stdout)["nftables"] if "set" in e]
    return set(entry.get("elem", []))


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_only_the_server_connects_to_forwards(real: Real) -> None:
    """Another local account (nobody) is refused at once on a preview's forward and on
    opencode's, which the server (root) reaches; a pause takes their ports out of the host's
    rule, and the server's stop deletes its table."""
    sid, _ = await real.create("a", "guarded")
    serve_inside(real.pid(sid), DEV_PORT)

    async def listed() -> bool:
        return DEV_PORT in await real.backend.listening_ports(sid)

    await wait_until(_reactor(), listed, timeout=20, step=0.1)
    preview = await real.backend.preview_endpoint(sid, DEV_PORT)
    opencode = real.backend.endpoint_now(sid)
    assert preview is not None and preview != NOT_LISTENING and opencode is not None
    assert guarded_ports(real.data_dir) == {preview.port, opencode.port}
    for port in (preview.port, opencode.port):
        assert nobody_connects(port) == errno.ECONNREFUSED, port
        assert connects(port)
    code, body = await fetch(preview)
    assert code == 200 and b"made in the sandbox" in body

    assert (await real.owner.call("POST", f"/api/sandboxes/{sid}/pause")).code == 200
    await real.wait(sid, "paused")
    assert guarded_ports(real.data_dir) == set()
    await real.backend.close()
    assert guarded_ports(real.data_dir) is None


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_forwards_per_sandbox_are_capped(real: Real) -> None:
    """A sandbox listening on more ports than ``MAX_FORWARDS`` has no more forwards than that
    on the host, however many are opened: the least recently used one is removed (nothing
    listens on its host port any more) and the others keep working; host ports lie above
    the kernel's range for outgoing connections."""
    sid, _ = await real.create("a", "many")
    ports = list(range(9000, 9000 + MAX_FORWARDS + 4))
    started = run_inside(
        real.pid(sid),
        f"cat > /tmp/many.py <<'EOF'\n{MANY_PORTS.read_text()}EOF\n"
        f"setsid python3 /tmp/many.py {ports[0]} {len(ports)} >/dev/null 2>&1 </dev/null &",
    )
    assert started.returncode == 0, started.stderr

    async def all_listening() -> bool:
        return await real.backend.listening_ports(sid) == ports

    await wait_until(_reactor(), all_listening, timeout=20, step=0.1)
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    opened: dict[int, Endpoint] = {}
    for port in ports:
        endpoint = await real.backend.preview_endpoint(sid, port)
        assert endpoint is not None and endpoint != NOT_LISTENING
        if 65535 - high >= 1000:
            assert not low <= endpoint.port <= high
        opened[port] = endpoint
        if port == ports[0]:  # (used again below, so never the least recently used)
            continue
        assert await real.backend.preview_endpoint(sid, ports[0]) == opened[ports[0]]
    evicted = ports[1:5]  # the four least recently used
    kept = [p for p in ports if p not in evicted]
    assert len(kept) == MAX_FORWARDS
    for port in evicted:
        assert host_listeners(opened[port].port) == set() and not connects(opened[port].port)
    for port in kept:
        assert host_listeners(opened[port].port) == {"0100007F"}
        code, body = await fetch(opened[port])
        assert code == 200 and body == f"port {port}".encode(), (port, body)
    # Opened again, an evicted port gets a new forward (on another host port) that works.
    again = await real.backend.preview_endpoint(sid, evicted[0])
    assert again is not None and again.port != opened[evicted[0]].port
    code, body = await fetch(again)
    assert code == 200 and body == f"port {evicted[0]}".encode()
    assert len(real.backend.live(sid).forwards) == MAX_FORWARDS


class Echoes(Wire):
    """A WebSocket client's raw connection that tells at once when an echo has arrived."""

    def __init__(self) -> None:
        super().__init__()
        self._awaited: tuple[bytes, Deferred[None]] | None = None

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._awaited is not None and self._awaited[0] in self.received:
            done, self._awaited = self._awaited[1], None
            done.callback(None)

    async def echo(self, text: bytes) -> None:
        """Send ``text`` in a masked frame; return once its unmasked echo is back."""
        self.received = b""
        arrived: Deferred[None] = Deferred()
        arrived.addTimeout(10, _reactor())
        self._awaited = (bytes([0x81, len(text)]) + text, arrived)
        self.transport.write(frame(text))  # type: ignore[union-attr]
        await arrived


def start_dev_server(pid: int) -> None:
    """sandbox_dev_server.py on port VITE in the sandbox, in the background."""
    script = DEV_SERVER.read_text()
    started = run_inside(
        pid,
        f"cat > /tmp/dev.py <<'EOF'\n{script}EOF\n"
        f"setsid python3 /tmp/dev.py {VITE} >/dev/null 2>&1 </dev/null &",
    )
    assert started.returncode == 0, started.stderr


def preview_host(sandbox_id: str, port: int) -> str:
    return f"oc-{sandbox_id}-p{port}.localhost:8080"


async def open_preview(real: Real, sandbox_id: str, port: int) -> str:
    """Open the preview as the dashboard's button does: its session cookie's value."""
    reply = await real.owner.call("POST", f"/api/sandboxes/{sandbox_id}/open", {"port": port})
    assert reply.code == 200, reply
    prefix = f"http://{preview_host(sandbox_id, port)}"
    assert reply.body["url"].startswith(prefix), reply.body
    redeemed = await real.app.client().call(
        "GET", reply.body["url"][len(prefix) :], headers={"Host": preview_host(sandbox_id, port)}
    )
    assert redeemed.code == 303, redeemed
    (cookie,) = redeemed.headers.getRawHeaders("set-cookie")
    return str(cookie.split(";")[0].split("=", 1)[1])


async def preview_socket(real: Real, host: str, cookie: str) -> Echoes:
    endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", real.app.port.getHost().port)
    wire = await connectProtocol(endpoint, Echoes())
    head = (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n"
        f"Cookie: cli_sandbox={cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    wire.transport.write(head.encode())  # type: ignore[union-attr]
    wire.closed.addTimeout(30, _reactor())
    await wait_until(_reactor(), lambda: b"\r\n\r\n" in wire.received, timeout=10)
    assert wire.received.startswith(b"HTTP/1.1 101"), wire.received[:200]
    return wire


async def direct_socket(endpoint: Endpoint, host: str) -> Echoes:
    wire = await connectProtocol(
        TCP4ClientEndpoint(_reactor(), endpoint.host, endpoint.port), Echoes()
    )
    head = (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    wire.transport.write(head.encode())  # type: ignore[union-attr]
    wire.closed.addTimeout(30, _reactor())
    await wait_until(_reactor(), lambda: b"\r\n\r\n" in wire.received, timeout=10)
    return wire


async def median_ms(rounds: int, once: Any) -> float:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        await once()
        times.append((time.perf_counter() - began) * 1000)
    return sorted(times)[len(times) // 2]


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_a_real_dev_server_through_its_preview_address(real: Real) -> None:
    """A dev server started in a real sandbox, used through ``oc-{id}-p{port}``: its page, an
    asset, a POST, an event stream and a WebSocket echo, with no opencode credential and none
    of our cookies reaching it; a pause cuts the open WebSocket, and after a resume the
    preview works again. Prints the preview path's overhead against the forward used
    directly (medians)."""
    sid, _ = await real.create("a", "dev")
    start_dev_server(real.pid(sid))

    async def listening() -> bool:
        return VITE in await real.backend.listening_ports(sid)

    await wait_until(_reactor(), listening, timeout=20, step=0.1)
    host = preview_host(sid, VITE)
    cookie = await open_preview(real, sid, VITE)
    browser = real.app.client()
    ours = {"Host": host, "Cookie": f"cli_sandbox={cookie}; cli_session=main; theme=dark"}

    page = await browser.call("GET", "/", headers=ours)
    assert page.code == 200 and b"made in the sandbox" in page.body
    asset = await browser.call("GET", "/app.js", headers=ours)
    assert asset.code == 200 and asset.headers.getRawHeaders("content-type") == [
        "application/javascript"
    ]
    posted = await browser.call(
        "POST", "/save?token=steal", {"name": "é"}, headers={**ours, "Origin": f"http://{host}"}
    )
    assert posted.code == 200 and json.loads(posted.body["body"]) == {"name": "é"}
    seen = await browser.call(
        "GET", "/headers", headers={**ours, "Authorization": "Basic c3RlYWw6c3RlYWw="}
    )
    (row,) = await real.app.db.query(
        "SELECT opencode_password FROM sandboxes WHERE id = %s", (sid,)
    )
    everything = json.dumps([seen.body, posted.body])
    for secret in (row["opencode_password"], "steal", "main", cookie, "c3RlYWw6c3RlYWw="):
        assert secret not in everything
    assert "theme=dark" in everything
    events = await browser.call("GET", "/events", headers=ours)
    assert events.code == 200 and events.body == b"data: tick 0\n\ndata: tick 1\n\ndata: tick 2\n\n"

    # A port nothing listens on: the proxy's page, and no forward for it.
    idle_cookie = await open_preview(real, sid, 5999)
    idle = await browser.call(
        "GET",
        "/",
        headers={"Host": preview_host(sid, 5999), "Cookie": f"cli_sandbox={idle_cookie}"},
    )
    assert idle.code == 503 and b"Nothing is listening on 5999" in idle.body, idle.body
    assert 5999 not in real.backend.live(sid).forwards

    wire = await preview_socket(real, host, cookie)
    await wire.echo(b"hello")
    await wire.echo(b"again")

    # The overhead of the preview path, against the sandbox's forward used directly.
    direct = await real.backend.preview_endpoint(sid, VITE)
    assert direct is not None
    url = f"http://{direct.host}:{direct.port}/app.js"

    async def direct_get() -> None:
        response = await treq.get(url, headers={"Host": host}, reactor=_reactor())
        await treq.content(response)

    async def preview_get() -> None:
        reply = await browser.call("GET", "/app.js", headers=ours)
        assert reply.code == 200

    get_direct = await median_ms(100, direct_get)
    get_preview = await median_ms(100, preview_get)
    plain = await direct_socket(direct, host)
    echo_direct = await median_ms(100, lambda: plain.echo(b"ping"))
    echo_preview = await median_ms(100, lambda: wire.echo(b"ping"))
    plain.transport.loseConnection()  # type: ignore[union-attr]
    print(
        f"\npreview overhead (real sandbox, medians of 100): small GET {get_preview:.2f} ms "
        f"vs {get_direct:.2f} ms direct; WebSocket echo {echo_preview:.2f} ms vs "
        f"{echo_direct:.2f} ms direct"
    )

    # A pause revokes the preview: the open WebSocket ends, the address answers no more.
    assert (await real.owner.call("POST", f"/api/sandboxes/{sid}/pause")).code == 200
    await wire.closed
    await real.wait(sid, "paused")
    after = await browser.call("GET", "/", headers=ours)
    assert after.code == 503 and b"paused" in after.body

    # Resumed, with its dev server started again: the preview works through a new forward.
    assert (await real.owner.call("POST", f"/api/sandboxes/{sid}/resume")).code == 200
    await real.wait(sid, "running")
    start_dev_server(real.pid(sid))
    await wait_until(_reactor(), listening, timeout=20, step=0.1)
    cookie = await open_preview(real, sid, VITE)
    page = await browser.call("GET", "/", headers={"Host": host, "Cookie": f"cli_sandbox={cookie}"})
    assert page.code == 200 and b"made in the sandbox" in page.body
