"""The docker backend against a real Docker engine started privately for the test run."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from cli_server.plumbing.threads import ThreadPoolService
from cli_server.sandboxes.docker_backend import DockerBackend, DockerSettings
from cli_server.sandboxes.opencode import OpencodeClient

from .conftest import Running, _reactor, server_config, start_server, stop_server
from .docker_engine import Engine, needs_dockerd
from .helpers import Api
from .test_sandboxes_api import team

ROOT = Path(__file__).resolve().parents[2]
INSTANCE = "test-instance"

pytestmark = needs_dockerd


@attrs.define
class DockerWorld:
    app: Running
    engine: Engine
    backend: DockerBackend
    pool: ThreadPoolService
    people: dict[str, Api]
    workspace: str


async def _start(db_url: str, engine: Engine, image: str | None = None) -> DockerWorld:
    reactor = _reactor()
    pool = ThreadPoolService(reactor, "docker-test", 4)
    pool.startService()
    settings = DockerSettings(
        engine.host, image or engine.image, "http://host.docker.internal:1/proxy/anthropic/v1"
    )
    backend = DockerBackend(pool.run, settings, INSTANCE, OpencodeClient(reactor))
    config = attrs.evolve(server_config(db_url), backend="docker")
    app = await start_server(db_url, config=config, backend=backend)
    return DockerWorld(app, engine, backend, pool, {}, "")


@pytest_twisted.async_yield_fixture
async def world(db_url: str, engine: Engine) -> AsyncIterator[DockerWorld]:
    w = await _start(db_url, engine)
    w.people, w.workspace = await team(w.app)
    yield w
    try:
        await stop_server(w.app)
    finally:
        w.pool.stopService()
    ids = w.engine.docker("ps", "-aq", "--filter", f"label=cli-server.instance={INSTANCE}")
    if ids.split():
        w.engine.docker("rm", "-f", *ids.split())
    volumes = w.engine.docker(
        "volume", "ls", "-q", "--filter", f"label=cli-server.instance={INSTANCE}"
    )
    if volumes.split():
        w.engine.docker("volume", "rm", "-f", *volumes.split())


async def _create(w: DockerWorld, name: str, workspace: str | None = None) -> str:
    made = await w.people["developer"].call(
        "POST", f"/api/workspaces/{workspace or w.workspace}/sandboxes", {"name": name}
    )
    assert made.code == 201, made
    return str(made.body["id"])


async def _wait(w: DockerWorld, sid: str, status: str) -> None:
    from .helpers import wait_until

    async def reached() -> bool:
        reply = await w.people["owner"].call("GET", f"/api/sandboxes/{sid}")
        assert reply.body["status"] != "failed", reply.body.get("error")
        return bool(reply.body["status"] == status)

    await wait_until(_reactor(), reached, timeout=120, step=0.2)


@pytest_twisted.ensureDeferred
async def test_docker_lifecycle(world: DockerWorld) -> None:
    """create → running → pause → resume (session kept) → delete (nothing of ours left)."""
    began = time.monotonic()
    sid = await _create(world, "box")
    await _wait(world, sid, "running")
    create_s = time.monotonic() - began
    client = OpencodeClient(_reactor())
    observed = await world.backend.describe(sid)
    (row,) = await world.app.db.query("SELECT opencode_password FROM sandboxes")
    password = row["opencode_password"]
    assert observed.endpoint is not None
    assert (await client.get_json(observed.endpoint, password, "/global/health"))[0] == 200
    assert (await client.get_json(observed.endpoint, "wrong", "/global/health"))[0] == 401
    inspect = world.engine.docker(
        "inspect",
        "--format",
        "{{.Config.User}} {{.HostConfig.Init}} {{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}",
        f"cli-sbx-{sid}",
    )
    assert inspect.split() == ["1000:1000", "true", str(2 * 1024**3), "1024"]
    env = world.engine.docker("inspect", "--format", "{{json .Config.Env}}", f"cli-sbx-{sid}")
    assert "sk-ant" not in env and "ANTHROPIC_API_KEY" in env

    from treq.client import HTTPClient
    from twisted.web.client import Agent

    from cli_server.sandboxes.opencode import basic_auth

    http = HTTPClient(Agent(_reactor()))
    made = await http.post(
        f"http://127.0.0.1:{observed.endpoint.port}/session",
        json={"title": "kept"},
        headers={"authorization": basic_auth(password)},
    )
    session = await made.json()

    # The browser path: a ticket, the sandbox's subdomain, opencode's UI through the proxy.
    url = (await world.people["developer"].call("POST", f"/api/sandboxes/{sid}/open")).body["url"]
    host = f"oc-{sid}.localhost:8080"
    redeemed = await world.app.client().call("GET", url.split(host, 1)[1], headers={"Host": host})
    cookie = redeemed.headers.getRawHeaders("set-cookie")[0].split(";")[0]
    page = await world.app.client().call("GET", "/", headers={"Host": host, "Cookie": cookie})
    assert page.code == 200 and b"<html" in page.body.lower()

    await world.people["developer"].call("POST", f"/api/sandboxes/{sid}/pause")
    await _wait(world, sid, "paused")
    assert "Exited" in world.engine.docker("ps", "-a", "--filter", f"name=cli-sbx-{sid}")
    began = time.monotonic()
    await world.people["developer"].call("POST", f"/api/sandboxes/{sid}/resume")
    await _wait(world, sid, "running")
    resume_s = time.monotonic() - began
    observed = await world.backend.describe(sid)
    assert observed.endpoint is not None
    code, sessions = await client.get_json(observed.endpoint, password, "/session")
    assert session["id"] in [s["id"] for s in sessions]

    assert (await world.people["developer"].call("DELETE", f"/api/sandboxes/{sid}")).code == 204
    label = f"label=cli-server.sandbox={sid}"
    assert world.engine.docker("ps", "-aq", "--filter", label).strip() == ""
    assert world.engine.docker("volume", "ls", "-q", "--filter", label).strip() == ""
    assert f"cli-ws-{world.workspace}" in world.engine.docker("volume", "ls", "-q")
    print(f"\ndocker: create->running {create_s:.2f}s, resume->running {resume_s:.2f}s")


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"host"


def _http_from(engine: Engine, container: str, address: str, port: int) -> str:
    """The status line a sandbox gets from address:port ('' if it cannot connect in 3 s).
    busybox nc, not wget: the static busybox's wget crashes in its name-service lookups."""
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {address} {port}"
    done = engine.attempt(["docker", "exec", container, "sh", "-c", request], timeout=60)
    return (done.stdout.splitlines() or [""])[0]


@pytest_twisted.ensureDeferred
async def test_sandboxes_cannot_reach_each_other(world: DockerWorld) -> None:
    """Our network disables inter-container traffic: a sandbox cannot open another sandbox's
    port (on the engine's default bridge it could), nor a host service at
    host.docker.internal on any port but the Anthropic door's (test_docker_isolation.py)."""
    host_side = _reactor().listenTCP(0, Site(_Hello()), interface="0.0.0.0")
    try:
        first, second = await _create(world, "a"), await _create(world, "b")
        await _wait(world, first, "running")
        await _wait(world, second, "running")
        network = world.engine.docker(
            "inspect", "-f", "{{json .NetworkSettings.Networks}}", f"cli-sbx-{second}"
        )
        (address,) = [n["IPAddress"] for n in json.loads(network).values()]
        # The engine's hosts entry for host.docker.internal (busybox does not resolve names).
        hosts = world.engine.docker("exec", f"cli-sbx-{first}", "cat", "/etc/hosts")
        (gateway,) = [ln.split()[0] for ln in hosts.splitlines() if "host.docker.internal" in ln]
        port = host_side.getHost().port
        to_host = await deferToThread(_http_from, world.engine, f"cli-sbx-{first}", gateway, port)
        assert to_host == ""
        to_other = await deferToThread(_http_from, world.engine, f"cli-sbx-{first}", address, 4096)
        assert to_other == ""
        icc = world.engine.docker(
            "network", "inspect", "-f", "{{json .Options}}", f"cli-sandboxes-{INSTANCE}"
        )
        assert json.loads(icc)["com.docker.network.bridge.enable_icc"] == "false"
    finally:
        await host_side.stopListening()


@pytest_twisted.ensureDeferred
async def test_reconciliation_and_adoption(world: DockerWorld, db_url: str) -> None:
    """A foreign container survives; a container killed behind our back is noticed (failed,
    with how it ended); a restarted server adopts running containers."""
    foreign = world.engine.docker(
        "run", "-d", "--name", "foreign", "--entrypoint", "/bin/sleep", world.engine.image, "300"
    ).strip()
    workspace_b = (await world.people["owner"].call("POST", "/api/workspaces", {"name": "b"})).body[
        "id"
    ]
    await world.people["owner"].add_member(workspace_b, world.people["developer"], "developer")
    killed = await _create(world, "killed")
    kept = await _create(world, "kept", workspace_b)
    await _wait(world, killed, "running")
    await _wait(world, kept, "running")
    volumes = world.engine.docker("volume", "ls", "-q").split()
    assert f"cli-ws-{world.workspace}" in volumes and f"cli-ws-{workspace_b}" in volumes

    world.engine.docker("kill", f"cli-sbx-{killed}")
    reconciler = world.app.server.root.getServiceNamed("reconciler")
    await reconciler.run_now()
    reply = await world.people["owner"].call("GET", f"/api/sandboxes/{killed}")
    assert (reply.body["status"], reply.body["error"]) == (
        "failed",
        "opencode was killed by signal 9 (SIGKILL)",
    ), reply.body
    assert foreign in world.engine.docker("ps", "-q", "--no-trunc")

    await stop_server(world.app)  # containers keep running
    assert kept[:12] in world.engine.docker("ps", "--format", "{{.Names}}")
    again = await _start(db_url, world.engine)
    try:
        owner = again.app.client()
        await owner.call(
            "POST", "/api/auth/login", {"username": "owner", "password": "password123"}
        )
        reply = await owner.call("GET", f"/api/sandboxes/{kept}")
        assert reply.body["status"] == "running"
        observed = await again.backend.describe(kept)
        assert observed.endpoint is not None
    finally:
        await stop_server(again.app)
        again.pool.stopService()
    world.engine.docker("rm", "-f", "foreign")


@pytest_twisted.ensureDeferred
async def test_missing_image_fails_readably(db_url: str, engine: Engine) -> None:
    """An image the engine does not have: the sandbox is failed with a readable error."""
    w = await _start(db_url, engine, image="cli-server-sandbox:does-not-exist")
    try:
        w.people, w.workspace = await team(w.app)
        sid = await _create(w, "x")
        from .helpers import wait_until

        async def failed() -> Any:
            body = (await w.people["owner"].call("GET", f"/api/sandboxes/{sid}")).body
            return body["status"] == "failed" and body

        await wait_until(_reactor(), failed, timeout=60)
        body = (await w.people["owner"].call("GET", f"/api/sandboxes/{sid}")).body
        assert "is not on the Docker engine" in body["error"]
        assert (await w.people["owner"].call("GET", "/readyz")).code == 200
    finally:
        await stop_server(w.app)
        w.pool.stopService()


@pytest_twisted.ensureDeferred
async def test_unreachable_engine_fails_readably(db_url: str) -> None:
    """No engine at the address: failed with the reason; the server keeps serving."""
    w = await _start(db_url, Engine("unix:///tmp/no-such-docker.sock", "x"))
    try:
        w.people, w.workspace = await team(w.app)
        sid = await _create(w, "x")
        from .helpers import wait_until

        async def failed() -> bool:
            body = (await w.people["owner"].call("GET", f"/api/sandboxes/{sid}")).body
            return bool(body["status"] == "failed")

        await wait_until(_reactor(), failed, timeout=60)
        body = (await w.people["owner"].call("GET", f"/api/sandboxes/{sid}")).body
        assert body["error"].startswith("Docker engine:")
    finally:
        await stop_server(w.app)
        w.pool.stopService()


@pytest_twisted.ensureDeferred
async def test_network_mode(db_url: str, engine: Engine) -> None:
    """With --docker-network (a server in a container), sandboxes join that network and are
    reached at their address there; no port is published on the host."""
    engine.docker("network", "create", "cli-test-net")
    reactor = _reactor()
    pool = ThreadPoolService(reactor, "docker-net-test", 2)
    pool.startService()
    settings = DockerSettings(
        engine.host, engine.image, "http://server:8080/proxy/anthropic/v1", network="cli-test-net"
    )
    backend = DockerBackend(pool.run, settings, INSTANCE, OpencodeClient(reactor))
    app = await start_server(
        db_url, config=attrs.evolve(server_config(db_url), backend="docker"), backend=backend
    )
    try:
        w = DockerWorld(app, engine, backend, pool, *await team(app))
        sid = await _create(w, "net")
        await _wait(w, sid, "running")
        observed = await backend.describe(sid)
        assert observed.endpoint is not None and observed.endpoint.port == 4096
        assert not observed.endpoint.host.startswith("127.")
        ports = engine.docker(
            "inspect", "--format", "{{json .NetworkSettings.Ports}}", f"cli-sbx-{sid}"
        )
        assert "HostPort" not in ports
        await w.people["developer"].call("DELETE", f"/api/sandboxes/{sid}")
    finally:
        await stop_server(app)
        pool.stopService()
        engine.docker("network", "rm", "cli-test-net")


@pytest_twisted.ensureDeferred
async def test_docker_preview(world: DockerWorld) -> None:
    """A dev server in a container: listed, reached from the host at the container's address
    on our network and through its preview address, not from another sandbox; a pause ends
    it."""
    import treq

    from .helpers import wait_until

    a, b = await _create(world, "dev"), await _create(world, "other")
    await _wait(world, a, "running")
    await _wait(world, b, "running")
    assert await world.backend.listening_ports(a) == []  # opencode's own port is not listed
    world.engine.docker("exec", f"cli-sbx-{a}", "sh", "-c", "echo made inside > /tmp/index.html")
    world.engine.docker(
        "exec", "-d", f"cli-sbx-{a}", "/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/tmp"
    )

    async def listed() -> bool:
        return await world.backend.listening_ports(a) == [8000]

    await wait_until(_reactor(), listed, timeout=20, step=0.1)
    assert world.backend.lists_ports
    ports = await world.people["guest"].call("GET", f"/api/sandboxes/{a}/ports")
    assert (ports.code, ports.body) == (200, {"ports": [8000], "listed": True})

    address = world.engine.docker(
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        f"cli-sbx-{a}",
    ).strip()
    endpoint = await world.backend.preview_endpoint(a, 8000)
    assert endpoint is not None and (endpoint.host, endpoint.port) == (address, 8000)
    got = treq.get(f"http://{address}:8000/index.html", reactor=_reactor())
    got.addTimeout(10, _reactor())
    response = await got
    assert response.code == 200 and b"made inside" in await treq.content(response)

    # Through the preview address, as a browser: a one-time link, then the page.
    host = f"oc-{a}-p8000.localhost:8080"
    opened = await world.people["guest"].call("POST", f"/api/sandboxes/{a}/open", {"port": 8000})
    assert opened.code == 200 and opened.body["url"].startswith(f"http://{host}/"), opened
    browser = world.app.client()
    path = opened.body["url"].split(host, 1)[1]
    redeemed = await browser.call("GET", path, headers={"Host": host})
    assert redeemed.code == 303, redeemed
    cookie = redeemed.headers.getRawHeaders("set-cookie")[0].split(";")[0]
    page = await browser.call("GET", "/index.html", headers={"Host": host, "Cookie": cookie})
    assert page.code == 200 and b"made inside" in page.body, page

    def fetch_from(sid: str) -> int:
        script = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 3 {address} 8000"
        done = world.engine.attempt(["docker", "exec", f"cli-sbx-{sid}", "sh", "-c", script])
        return done.returncode

    assert fetch_from(a) == 0  # (the check can succeed)
    assert fetch_from(b) != 0  # no traffic between sandboxes

    await world.people["developer"].call("POST", f"/api/sandboxes/{a}/pause")
    await _wait(world, a, "paused")
    assert await world.backend.preview_endpoint(a, 8000) is None
    assert await world.backend.listening_ports(a) == []
