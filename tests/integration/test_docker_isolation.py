"""Issue 16, classes 4 and 5 on the docker backend, attacked from inside real containers.

The world around the sandbox is built on this machine only: a network namespace behind a veth
pair stands for the rest of the world: a neighbour on a public network the host is attached
to (198.51.100.7, its LAN's router say), and beyond it as router a "public" address
(203.0.113.7), private, shared and metadata ones, all answering HTTP on one port; the host's
end of the pair also holds a private and a link-local address of the host's own (this kernel
has no dummy interfaces).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from cli_server.plumbing.threads import ThreadPoolService
from cli_server.sandboxes import docker_firewall
from cli_server.sandboxes.disk_quota import DiskQuotas, DiskSizes, image_of
from cli_server.sandboxes.docker_backend import DockerBackend, DockerSettings
from cli_server.sandboxes.egress import EgressPolicy
from cli_server.sandboxes.opencode import OpencodeClient

from .conftest import _reactor, server_config, start_server, stop_server
from .docker_engine import Engine, needs_dockerd
from .helpers import free_port, remove_dir, scratch_dir
from .test_docker_backend import DockerWorld, _create, _wait
from .test_sandboxes_api import team

INSTANCE = "test-isolation"
NETNS = "cli-test-outside"
PUBLIC = "203.0.113.7"  # TEST-NET-3, through a router: stands for any internet address
NEIGHBOUR = "198.51.100.7"  # TEST-NET-2, on the host's own (public) network: not the internet
BEYOND = {  # private destinations behind the same "router", none the host's own
    "rfc1918": "10.99.0.7",
    "shared": "100.64.0.7",
    "metadata": "169.254.169.254",
}
HOST_PRIVATE = "10.98.0.1"  # the host's own, on its end of the veth pair
HOST_LINK_LOCAL = "169.254.1.1"  # the same
QUOTA = 64 * 1024**2

pytestmark = needs_dockerd


@attrs.define
class Outside:
    port: int  # where every outside address answers HTTP


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


@pytest.fixture
def outside() -> Iterator[Outside]:
    """The network namespace beyond the host, its HTTP server, and the host's own private
    addresses; all removed afterwards."""
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "link", "del", "clitestv0"], capture_output=True)
    server = None
    try:
        _ip("netns", "add", NETNS)
        _ip("link", "add", "clitestv0", "type", "veth", "peer", "name", "clitestv1")
        _ip("link", "set", "clitestv1", "netns", NETNS)
        _ip("addr", "add", "198.51.100.1/24", "dev", "clitestv0")
        for address in (HOST_PRIVATE, HOST_LINK_LOCAL):
            _ip("addr", "add", f"{address}/32", "dev", "clitestv0")
        _ip("link", "set", "clitestv0", "up")
        inside = ["ip", "-n", NETNS]
        for address in (f"{NEIGHBOUR}/24", *(f"{a}/32" for a in (PUBLIC, *BEYOND.values()))):
            _ip(*inside[1:], "addr", "add", address, "dev", "clitestv1")
        _ip(*inside[1:], "link", "set", "clitestv1", "up")
        _ip(*inside[1:], "link", "set", "lo", "up")
        _ip(*inside[1:], "route", "add", "default", "via", "198.51.100.1")
        for address in BEYOND.values():
            _ip("route", "add", f"{address}/32", "dev", "clitestv0")
        _ip("route", "add", f"{PUBLIC}/32", "via", NEIGHBOUR, "dev", "clitestv0")
        port = free_port()
        server = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, sys.executable, "-m", "http.server", str(port)],
            cwd="/tmp",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((PUBLIC, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "none outside"
                time.sleep(0.1)
        yield Outside(port)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        subprocess.run(["ip", "link", "del", "clitestv0"], capture_output=True)


@attrs.define
class Guarded(DockerWorld):
    door: int = 0  # the Anthropic door's port on the host
    public: Any = None  # its listening port on every host address


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"host"


def _backend(
    pool: ThreadPoolService,
    engine: Engine,
    door: int,
    disk_root: Path | None = None,
    **egress: Any,
) -> DockerBackend:
    settings = DockerSettings(
        engine.host,
        engine.image,
        f"http://host.docker.internal:{door}/proxy/anthropic/v1",
        egress=EgressPolicy(**egress),
        disks=DiskSizes(QUOTA, QUOTA) if disk_root else DiskSizes(),
        disk_root=disk_root,
    )
    quotas = DiskQuotas.on(_reactor()) if disk_root else None
    return DockerBackend(pool.run, settings, INSTANCE, OpencodeClient(_reactor()), quotas=quotas)


async def _guarded(db_url: str, engine: Engine, disk_root: Path | None = None) -> Guarded:
    reactor = _reactor()
    pool = ThreadPoolService(reactor, "docker-isolation", 4)
    pool.startService()
    door = free_port()
    backend = _backend(pool, engine, door, disk_root)
    config = attrs.evolve(server_config(db_url), backend="docker")
    app = await start_server(db_url, config=config, backend=backend)
    # The door as a real deployment has it: the server's port on every host address.
    public = reactor.listenTCP(door, app.server.router, interface="0.0.0.0")
    return Guarded(app, engine, backend, pool, *await team(app), door=door, public=public)


async def _dismantle(w: Guarded) -> None:
    await w.public.stopListening()
    await stop_server(w.app)
    w.pool.stopService()
    mine = f"label=cli-server.instance={INSTANCE}"
    ids = w.engine.docker("ps", "-aq", "--filter", mine).split()
    if ids:
        w.engine.docker("rm", "-f", *ids)
    volumes = w.engine.docker("volume", "ls", "-q", "--filter", mine).split()
    if volumes:
        w.engine.docker("volume", "rm", "-f", *volumes)
    w.engine.attempt(["docker", "network", "rm", f"cli-sandboxes-{INSTANCE}"])
    docker_firewall.remove(
        docker_firewall.EgressRules(
            docker_firewall.chain_prefix(INSTANCE),
            docker_firewall.bridge_name(INSTANCE),
            None,
            (),
            (),
        )
    )


@pytest_twisted.async_yield_fixture
async def guarded(db_url: str, engine: Engine) -> AsyncIterator[Guarded]:
    world = await _guarded(db_url, engine)
    try:
        yield world
    finally:
        await _dismantle(world)


@pytest_twisted.async_yield_fixture
async def quota_world(db_url: str, engine: Engine) -> AsyncIterator[Guarded]:
    """Sandboxes whose volumes have 64 MiB quotas, their images under a scratch directory."""
    root = scratch_dir("cli-test-docker-disks-")
    world = await _guarded(db_url, engine, root / "disks")
    try:
        yield world
    finally:
        await _dismantle(world)
        remove_dir(root)


def _probe(engine: Engine, container: str, targets: list[tuple[str, int]]) -> dict[str, str]:
    """From inside the container, one HTTP request to each address:port; the status line
    each answered ('' where no connection was made within 3 s). busybox nc, as the static
    busybox's wget crashes in name lookups."""
    script = "".join(
        f"printf '{a}:{p} '; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {a} {p}"
        " 2>/dev/null | head -1; echo;"
        for a, p in targets
    )
    done = engine.attempt(["docker", "exec", container, "sh", "-c", script], timeout=120)
    seen: dict[str, str] = {}
    for line in done.stdout.splitlines():
        if line.strip():
            target, _, status = line.partition(" ")
            seen[target] = status.strip()
    return seen


def _host_addresses() -> list[str]:
    """Every IPv4 address of this host but loopback: LAN, docker0, bridges, dummies."""
    listed = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    found = [ln.split()[3].split("/")[0] for ln in listed.splitlines()]
    return [a for a in found if not a.startswith("127.")]


@pytest_twisted.ensureDeferred
async def test_sandbox_reaches_internet_and_door_only(guarded: Guarded, outside: Outside) -> None:
    """From inside a real sandbox: the outside "public" address and the Anthropic door answer;
    a host service on every host address (LAN, docker0, our gateway, RFC 1918, link-local),
    the door's port anywhere but our gateway, private, shared and metadata addresses beyond
    the host, and the other sandbox do not. An operator's allow-list opens its networks."""
    w = guarded
    host_side = _reactor().listenTCP(0, Site(_Hello()), interface="0.0.0.0")
    try:
        first, second = await _create(w, "a"), await _create(w, "b")
        await _wait(w, first, "running")
        await _wait(w, second, "running")
        me = f"cli-sbx-{first}"
        networks = json.loads(
            w.engine.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", me)
        )
        (gateway,) = [n["Gateway"] for n in networks.values()]
        other = json.loads(
            w.engine.docker(
                "inspect", "-f", "{{json .NetworkSettings.Networks}}", f"cli-sbx-{second}"
            )
        )
        (other_address,) = [n["IPAddress"] for n in other.values()]
        hosts = w.engine.docker("exec", me, "cat", "/etc/hosts")
        assert f"{gateway}\thost.docker.internal" in hosts
        env = w.engine.docker("inspect", "-f", "{{json .Config.Env}}", me)
        assert f"http://host.docker.internal:{w.door}/proxy/anthropic/v1" in env

        service = host_side.getHost().port
        host_addresses = _host_addresses()
        assert {gateway, HOST_PRIVATE, HOST_LINK_LOCAL} <= set(host_addresses)
        assert "172.17.0.1" in host_addresses  # the engine's docker0
        lan = [a for a in host_addresses if a not in (gateway, HOST_PRIVATE, HOST_LINK_LOCAL)]
        blocked = [(a, service) for a in host_addresses]
        blocked += [(a, w.door) for a in host_addresses if a != gateway]
        blocked += [(a, outside.port) for a in (NEIGHBOUR, *BEYOND.values())]
        blocked += [(other_address, 4096)]
        allowed = [(gateway, w.door), (PUBLIC, outside.port)]
        seen = await deferToThread(_probe, w.engine, me, allowed + blocked)
        print(f"\nfrom a sandbox (LAN addresses {lan}): {seen}")
        assert seen[f"{gateway}:{w.door}"] == "HTTP/1.0 200 OK"
        assert seen[f"{PUBLIC}:{outside.port}"] == "HTTP/1.0 200 OK"
        for address, port in blocked:
            assert seen[f"{address}:{port}"] == "", (address, port)

        # The operator allows a private network (and a private host address): reachable
        # now, the rest still not. The rules are replaced, not added to.
        opened = _backend(
            w.pool,
            w.engine,
            w.door,
            allow=[ip_network("10.99.0.0/24"), ip_network(f"{HOST_PRIVATE}/32")],
        )
        await opened.prepare()
        seen = await deferToThread(
            _probe,
            w.engine,
            me,
            [
                (BEYOND["rfc1918"], outside.port),
                (HOST_PRIVATE, service),
                (BEYOND["metadata"], outside.port),
                (gateway, service),
            ],
        )
        assert seen[f"{BEYOND['rfc1918']}:{outside.port}"] == "HTTP/1.0 200 OK"
        assert seen[f"{HOST_PRIVATE}:{service}"] == "HTTP/1.0 200 OK"
        assert seen[f"{BEYOND['metadata']}:{outside.port}"] == ""
        assert seen[f"{gateway}:{service}"] == ""
        await w.backend.prepare()  # back to the default
        seen = await deferToThread(_probe, w.engine, me, [(BEYOND["rfc1918"], outside.port)])
        assert seen[f"{BEYOND['rfc1918']}:{outside.port}"] == ""

        # ANTHROPIC_PROXY_URL naming one of the host's other addresses: the door is there
        # now, at its port only.
        named = f"http://{lan[0]}:{w.door}/proxy/anthropic/v1"
        moved = DockerBackend(
            w.pool.run,
            attrs.evolve(w.backend.settings, anthropic_url=named),
            INSTANCE,
            OpencodeClient(_reactor()),
        )
        await moved.prepare()
        seen = await deferToThread(_probe, w.engine, me, [(lan[0], w.door), (lan[0], service)])
        assert seen[f"{lan[0]}:{w.door}"] == "HTTP/1.0 200 OK"
        assert seen[f"{lan[0]}:{service}"] == ""
        await w.backend.prepare()
    finally:
        await host_side.stopListening()


@pytest_twisted.ensureDeferred
async def test_rules_are_idempotent_and_survive_restart(guarded: Guarded) -> None:
    """Preparing again (a restart) leaves one jump per chain and the same chains."""
    w = guarded
    sid = await _create(w, "a")
    await _wait(w, sid, "running")
    prefix = docker_firewall.chain_prefix(INSTANCE)

    def listing() -> tuple[str, str]:
        rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
        six = subprocess.run(["ip6tables", "-S"], capture_output=True, text=True).stdout
        return rules, six

    before = listing()
    await w.backend.prepare()
    await w.backend.prepare()
    assert listing() == before
    rules = before[0]
    bridge = docker_firewall.bridge_name(INSTANCE)
    assert rules.count(f"-A DOCKER-USER -i {bridge} -j {prefix}-FWD") == 1
    assert rules.count(f"-A INPUT -i {bridge} -j {prefix}-HOST") == 1
    assert f"-A {prefix}-FWD -d 169.254.0.0/16 -j REJECT" in rules
    assert f"-A {prefix}-HOST -j REJECT" in rules
    assert before[1].count(f"-A INPUT -i {bridge} -j {prefix}-HOST") == 1


@pytest_twisted.ensureDeferred
async def test_kernel_surface(guarded: Guarded) -> None:
    """Inside a real sandbox, opencode itself and anything it runs: uid 1000, no capabilities,
    no-new-privileges, the engine's seccomp filter; new user namespaces are refused."""
    w = guarded
    sid = await _create(w, "k")
    await _wait(w, sid, "running")
    me = f"cli-sbx-{sid}"
    pid = w.engine.docker("exec", me, "busybox", "pidof", "opencode").split()[0]
    for status in (f"/proc/{pid}/status", "/proc/self/status"):
        fields = dict(
            line.split(":", 1)
            for line in w.engine.docker("exec", me, "cat", status).splitlines()
            if ":" in line
        )
        assert fields["Uid"].split() == ["1000"] * 4, status
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[caps], 16) == 0, (status, caps)
        assert fields["NoNewPrivs"].strip() == "1", status
        assert fields["Seccomp"].strip() == "2", status  # a filter, not merely strict or off
    for argv in (["unshare", "-U", "true"], ["unshare", "-r", "true"], ["unshare", "-Un", "true"]):
        tried = w.engine.attempt(["docker", "exec", me, "busybox", *argv])
        assert tried.returncode != 0, argv
        assert "Operation not permitted" in tried.stderr, (argv, tried.stderr)
    security = w.engine.docker("inspect", "-f", "{{json .HostConfig.SecurityOpt}}", me)
    assert json.loads(security) == ["no-new-privileges"]
    info = json.loads(w.engine.docker("info", "-f", "{{json .SecurityOptions}}"))
    assert "name=seccomp,profile=default" in info
    assert os.path.exists(f"/sys/class/net/{docker_firewall.bridge_name(INSTANCE)}")


@pytest_twisted.ensureDeferred
async def test_container_layer_cannot_fill_the_disk(guarded: Guarded) -> None:
    """The container's own layer (on the engine's disk, without a limit) takes no writes:
    the root file system is read-only even where the image gives uid 1000 a directory, and
    scratch space is a sized memory file system that answers ENOSPC when full."""
    w = guarded
    sid = await _create(w, "disk")
    await _wait(w, sid, "running")
    me = f"cli-sbx-{sid}"
    assert w.engine.docker("inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", me).strip() == "true"
    for path in ("/data/escape", "/home/escape", "/escape"):
        tried = w.engine.attempt(["docker", "exec", me, "busybox", "touch", path])
        assert tried.returncode != 0 and "Read-only file system" in tried.stderr, (path, tried)
    scratch = w.backend.settings.scratch_bytes // 1024**2
    fill = w.engine.attempt(
        [
            "docker",
            "exec",
            me,
            "busybox",
            "dd",
            "if=/dev/zero",
            "of=/tmp/fill",
            "bs=1M",
            f"count={scratch + 16}",
        ]
    )
    assert fill.returncode != 0 and "No space left on device" in fill.stderr, fill
    w.engine.docker("exec", me, "busybox", "rm", "/tmp/fill")
    # Its writable layer is still empty (the volumes and tmpfs are not in it).
    layer = w.engine.docker("ps", "-s", "--filter", f"name={me}", "--format", "{{.Size}}")
    assert layer.split()[0] in ("0B", "0"), layer
    # opencode keeps running on a read-only root (test_docker_lifecycle: sessions too).
    observed = await w.backend.describe(sid)
    assert observed.endpoint is not None


def _fill(
    w: Guarded, container: str, path: str, megabytes: int
) -> subprocess.CompletedProcess[str]:
    argv = ["busybox", "dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={megabytes}"]
    return w.engine.attempt(["docker", "exec", container, *argv])


def _mounted(directory: Path) -> bool:
    return f" {directory} " in Path("/proc/self/mountinfo").read_text()


@pytest_twisted.ensureDeferred
async def test_volumes_have_quotas(quota_world: Guarded) -> None:
    """A sandbox fills its workspace disk and its HOME: ENOSPC at the quota, the host holds
    no more than the quota for each, and a sandbox of another workspace (and the server)
    keep working. Files survive pause/resume (HOME unmounted while paused); deleting the
    sandbox and the workspace removes their images."""
    w = quota_world
    root = w.backend.settings.disk_root
    assert root is not None
    other = (await w.people["owner"].call("POST", "/api/workspaces", {"name": "other"})).body["id"]
    await w.people["owner"].add_member(other, w.people["developer"])
    # The other workspace's volume predates quotas: it keeps working, without a limit, and
    # the server says so.
    w.engine.docker("volume", "create", f"cli-ws-{other}")
    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("volume"):
            warnings.append(str(event["volume"]))

    globalLogPublisher.addObserver(observe)
    try:
        filler, bystander = await _create(w, "filler"), await _create(w, "bystander", other)
        await _wait(w, filler, "running")
        await _wait(w, bystander, "running")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert warnings == [f"cli-ws-{other}"]
    me = f"cli-sbx-{filler}"
    workspace_dir, home_dir = root / "workspaces" / w.workspace, root / "homes" / filler
    device = w.engine.docker(
        "volume", "inspect", "-f", "{{.Options.device}}", f"cli-ws-{w.workspace}"
    ).strip()
    assert device == str(workspace_dir) and _mounted(workspace_dir) and _mounted(home_dir)

    w.engine.docker("exec", me, "sh", "-c", "echo kept > /data/disk0/kept; echo kept > ~/kept")
    for path, directory in (("/data/disk0/fill", workspace_dir), ("/home/opencode/fill", home_dir)):
        filled = await deferToThread(_fill, w, me, path, 2 * QUOTA // 1024**2)
        assert filled.returncode != 0 and "No space left on device" in filled.stderr, filled
        held = image_of(directory).stat().st_blocks * 512
        assert held <= QUOTA, (directory, held)
    # The other workspace's sandbox and the server are unaffected.
    wrote = await deferToThread(_fill, w, f"cli-sbx-{bystander}", "/data/disk0/some", 8)
    assert wrote.returncode == 0, wrote
    assert (await w.people["owner"].call("GET", "/readyz")).code == 200

    w.engine.docker("exec", me, "busybox", "rm", "/data/disk0/fill", "/home/opencode/fill")
    await w.people["developer"].call("POST", f"/api/sandboxes/{filler}/pause")
    await _wait(w, filler, "paused")
    assert not _mounted(home_dir) and _mounted(workspace_dir)
    await w.people["developer"].call("POST", f"/api/sandboxes/{filler}/resume")
    await _wait(w, filler, "running")
    kept = w.engine.docker("exec", me, "cat", "/data/disk0/kept", "/home/opencode/kept")
    assert kept.split() == ["kept", "kept"]

    assert (await w.people["developer"].call("DELETE", f"/api/sandboxes/{filler}")).code == 204
    assert not _mounted(home_dir) and not image_of(home_dir).exists()
    assert (await w.people["developer"].call("DELETE", f"/api/sandboxes/{bystander}")).code == 204
    assert (await w.people["owner"].call("DELETE", f"/api/workspaces/{w.workspace}")).code == 204
    assert not _mounted(workspace_dir) and not image_of(workspace_dir).exists()
