"""compose.yml as an operator runs it: the server image built from docker/Dockerfile.server,
PostgreSQL, the engine's socket, and docker sandboxes reached through the subdomain proxy.

The engine is a private real dockerd without registry access, so `debian:bookworm-slim` is
bootstrapped from Debian's mirror (docker/bootstrap-debian-image) and PostgreSQL is a STAND-IN
for the official image (postgres_standin/: Debian's PostgreSQL with the same environment
contract). Everything else is what a user gets: the real builds of both images, compose, the
server, and opencode in the full sandbox image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import requests

from .docker_engine import ROOT, Engine, needs_dockerd
from .helpers import chromium_dom_argv, free_port

HERE = Path(__file__).resolve().parent
PROJECT = "clicompose"
STANDIN = "cli-test/postgres-standin:15"
SERVER_IMAGE = "cli-server:compose-test"
SANDBOX_IMAGE = "cli-server-sandbox:compose-test"
KEY = "sk-ant-compose-test-key-never-in-a-sandbox"

pytestmark = [
    needs_dockerd,
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("docker-compose", "debootstrap", "chromium"))
        and not os.environ.get("CI"),
        reason="needs docker-compose, debootstrap and chromium (apt-get install …)",
    ),
]


def _extra_ca_certs() -> str:
    """The CAs this host adds to the system's (a TLS-re-signing egress proxy, say): the builds
    inside the engine download through the same network."""
    return "".join(
        p.read_text() for p in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    )


@attrs.define
class Deployment:
    engine: Engine
    port: int
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 120) -> str:
        argv = ["docker-compose", "-p", PROJECT, "-f", str(ROOT / "compose.yml"), *args]
        return self.engine.run(argv, timeout=timeout, env=self.env)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 120) -> float:
        started = time.monotonic()
        while True:
            try:
                if requests.get(self.url("/readyz"), timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            assert time.monotonic() - started < timeout, self.compose("logs", "--tail=60")
            time.sleep(0.5)

    def through_proxy(self, sandbox_id: str, path: str, cookie: str) -> requests.Response:
        """A request to the sandbox's subdomain (Host names it; *.localhost need not resolve)."""
        host = f"oc-{sandbox_id}.localhost:{self.port}"
        return requests.get(self.url(path), headers={"Host": host, "Cookie": cookie}, timeout=10)

    def open(self, api: requests.Session, sandbox_id: str) -> str:
        """Redeem an Open link as the browser does; the subdomain's session cookie."""
        url = api.post(self.url(f"/api/sandboxes/{sandbox_id}/open"), timeout=10).json()["url"]
        ticket_path = url.split(f":{self.port}", 1)[1]
        host = f"oc-{sandbox_id}.localhost:{self.port}"
        redeemed = requests.get(
            self.url(ticket_path), headers={"Host": host}, allow_redirects=False, timeout=10
        )
        assert redeemed.status_code in (302, 303), redeemed.text
        return redeemed.headers["Set-Cookie"].split(";", 1)[0]


@pytest.fixture(scope="module")
def deployment(engine: Engine) -> Iterator[Deployment]:
    engine.run([str(ROOT / "docker" / "bootstrap-debian-image")], timeout=300)
    engine.docker("build", "-q", "-t", STANDIN, str(HERE / "postgres_standin"), timeout=300)
    started = time.monotonic()
    engine.docker(
        "build", "-q", "-t", SANDBOX_IMAGE, "-f", str(ROOT / "docker" / "Dockerfile.sandbox"),
        "--build-arg", f"EXTRA_CA_CERTS={_extra_ca_certs()}", str(ROOT), timeout=900,
    )  # fmt: skip
    print(f"\ndocker/Dockerfile.sandbox built in {time.monotonic() - started:.1f} s")
    port = free_port()
    env = {
        "DB_PORT": str(free_port()),
        "DOCKER_SOCKET": str(engine.socket),
        "PORT": str(port),
        "BASE_DOMAIN": f"localhost:{port}",
        "AGENT_IMAGE": SANDBOX_IMAGE,
        "POSTGRES_IMAGE": STANDIN,
        "SERVER_IMAGE": SERVER_IMAGE,
        "ANTHROPIC_API_KEY": KEY,
        "EXTRA_CA_CERTS": _extra_ca_certs(),
    }
    deployed = Deployment(engine, port, env)
    try:
        started = time.monotonic()
        deployed.compose("up", "-d", "--build", timeout=900)
        deployed.wait_ready()
        print(f"compose up --build → /readyz: {time.monotonic() - started:.1f} s")
        yield deployed
    finally:
        # Sandboxes and their network are the server's, not compose's: remove what a failure
        # left. Each step whatever the last did.
        try:
            ours = engine.docker("ps", "-aq", "--filter", "label=cli-server.kind=sandbox")
            if ours.split():
                engine.docker("rm", "-f", *ours.split())
            engine.docker("network", "prune", "-f", "--filter", "label=cli-server.kind=network")
        finally:
            deployed.compose("down", "-v", "--remove-orphans", timeout=180)


def _sandbox(d: Deployment, api: requests.Session, sid: str) -> dict[str, Any]:
    reply = api.get(d.url(f"/api/sandboxes/{sid}"), timeout=10)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _wait_status(d: Deployment, api: requests.Session, sid: str, status: str) -> float:
    started = time.monotonic()
    while (seen := _sandbox(d, api, sid))["status"] != status:
        assert seen["status"] not in ("failed",) or status == "failed", seen
        assert time.monotonic() - started < 120, seen
        time.sleep(0.2)
    return time.monotonic() - started


def test_compose_runs_docker_sandboxes_that_survive_a_new_server_container(
    deployment: Deployment,
) -> None:
    d, engine = deployment, deployment.engine
    api = requests.Session()
    account = {"username": "operator", "password": "password123"}
    assert api.post(d.url("/api/auth/register"), json=account, timeout=10).status_code == 201
    assert api.post(d.url("/api/auth/login"), json=account, timeout=10).status_code == 200
    made = api.post(d.url("/api/workspaces"), json={"name": "compose"}, timeout=10)
    wid = made.json()["id"]
    made = api.post(d.url(f"/api/workspaces/{wid}/sandboxes"), json={"name": "one"}, timeout=10)
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    print(f"create → running: {_wait_status(d, api, sid, 'running'):.2f} s")

    # The opencode UI and API through the subdomain proxy, into the sandbox's container.
    cookie = d.open(api, sid)
    page = d.through_proxy(sid, "/", cookie)
    assert page.status_code == 200 and "<html" in page.text.lower(), page.text[:300]
    health = d.through_proxy(sid, "/global/health", cookie)
    assert health.status_code == 200 and health.json()["healthy"] is True

    # A real browser: the Open link signs in on the subdomain and opencode's UI renders.
    link = api.post(d.url(f"/api/sandboxes/{sid}/open"), timeout=10).json()["url"]
    shown = subprocess.run(chromium_dom_argv(link), capture_output=True, text=True, timeout=120)
    assert "<title>OpenCode</title>" in shown.stdout, shown.stderr[-2000:]
    assert 'data-component="' in shown.stdout, shown.stdout[-2000:]

    # The sandbox reaches the server's Anthropic proxy through the host and never sees the key.
    container = f"cli-sbx-{sid}"
    sandbox_env = json.loads(engine.docker("inspect", "-f", "{{json .Config.Env}}", container))
    proxy_url = f"http://host.docker.internal:{d.port}/proxy/anthropic/v1"
    assert f"ANTHROPIC_BASE_URL={proxy_url}" in sandbox_env
    assert not any(KEY in entry for entry in sandbox_env)
    healthz = f"http://host.docker.internal:{d.port}/healthz"
    assert engine.docker("exec", container, "curl", "-fsS", "-m", "5", healthz)

    # ... but not another sandbox, whose opencode the host itself does reach.
    other = api.post(d.url(f"/api/workspaces/{wid}/sandboxes"), json={"name": "two"}, timeout=10)
    _wait_status(d, api, other.json()["id"], "running")
    networks = engine.docker(
        "inspect", "-f", "{{json .NetworkSettings.Networks}}", f"cli-sbx-{other.json()['id']}"
    )
    (address,) = [n["IPAddress"] for n in json.loads(networks).values()]
    assert requests.get(f"http://{address}:4096/", timeout=5).status_code == 401
    curl = ["docker", "exec", container, "curl", "-sS", "-m", "3", f"http://{address}:4096/"]
    blocked = engine.attempt(curl, timeout=60)
    assert blocked.returncode != 0 and "401" not in blocked.stdout, blocked
    assert api.delete(d.url(f"/api/sandboxes/{other.json()['id']}"), timeout=30).ok

    # The tools the image promises, as the sandbox's user, in its workspace disk and HOME.
    tools = engine.docker(
        "exec", container, "sh", "-c",
        "id -u && go version && cargo --version && gcc --version && node --version && fd --version"
        " && python3 --version && git --version && touch /data/disk0/made && touch ~/made",
    )  # fmt: skip
    assert tools.startswith("1000\n") and "go1.23" in tools and "v20." in tools, tools

    # The server itself runs unprivileged: its own uid, no capabilities, no way back to root.
    # (server-entrypoint execs it, so it is the container's first process.)
    server = d.compose("ps", "-q", "server").strip()
    assert "twistd" in engine.docker("exec", server, "cat", "/proc/1/cmdline")
    status = engine.docker("exec", server, "cat", "/proc/1/status")
    fields = {k: v.split() for k, _, v in (ln.partition(":") for ln in status.splitlines())}
    assert fields["Uid"] == [fields["Uid"][0]] * 4 and fields["Uid"][0] != "0", fields["Uid"]
    assert int(fields["CapEff"][0], 16) == 0 and int(fields["CapBnd"][0], 16) == 0
    assert fields["NoNewPrivs"] == ["1"]

    # A new server container (a new image, `up --force-recreate`) adopts the running sandbox:
    # same container, same session cookie, the proxy still works.
    before = engine.docker("inspect", "-f", "{{.Id}}", container)
    label = '{{index .Config.Labels "cli-server.instance"}}'
    instance = engine.docker("inspect", "-f", label, container).strip()
    id_file = "/var/lib/cli-server/instance-id"
    assert instance == engine.docker("exec", server, "cat", id_file).strip()
    started = time.monotonic()
    d.compose("up", "-d", "--force-recreate", "--no-build", "--no-deps", "server", timeout=180)
    d.wait_ready()
    print(f"server recreated → ready: {time.monotonic() - started:.1f} s")
    assert d.compose("ps", "-q", "server").strip() != server
    assert _sandbox(d, api, sid)["status"] == "running"
    assert engine.docker("inspect", "-f", "{{.Id}}", container) == before
    new_server = d.compose("ps", "-q", "server").strip()
    kept = engine.docker("exec", new_server, "cat", id_file).strip()
    assert kept == instance  # the new container is the same server to the engine's labels
    assert d.through_proxy(sid, "/global/health", cookie).json()["healthy"] is True

    # Deleting the sandbox removes its container and its own volume, not the workspace's.
    assert api.delete(d.url(f"/api/sandboxes/{sid}"), timeout=30).status_code in (200, 202, 204)
    deadline = time.monotonic() + 60
    while engine.docker("ps", "-aq", "--filter", f"name={container}").strip():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    volumes = engine.docker("volume", "ls", "-q").split()
    assert f"cli-home-{sid}" not in volumes and f"cli-ws-{wid}" in volumes
