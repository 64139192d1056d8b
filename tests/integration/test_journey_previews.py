"""The previews journey (webui/e2e/previews.mjs) in headless Chromium against a real
`twistd cli-server` with a real process-backend sandbox: a dev server started inside the
sandbox is listed on its card, Copy link gives its address, Open shows its page (stylesheet and
fetch included) in a new tab, a second one answers a POST, an event stream and a WebSocket echo
from the page, and a browser without a session there goes through the dashboard and back.
The same for a local sandbox (webui/e2e/previews-local.mjs): a real `twistd cli-agent` shares
one port of the laptop and not another. Screenshots land in docs/screenshots (preview.png,
preview-app.png, preview-local.png)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .daemon import twistd
from .helpers import free_port, needs_isolation, remove_dir, scratch_dir
from .journeys import (
    converse,
    origin,
    require_web_ui,
    run_journey,
    running_daemon,
)
from .sandbox_shell import opencode_pid, run_inside

PORT = 5173  # the page: python3 -m http.server
LIVE_PORT = 8000  # an event stream, a POST and a WebSocket echo: sandbox_dev_server.py
DEV_SERVER = Path(__file__).with_name("sandbox_dev_server.py")

# A small app as a dev server would serve it: a page, its stylesheet, a script that fetches.
SITE = {
    "index.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sandbox app</title>
<link rel="stylesheet" href="style.css"></head>
<body><main><h1>Hello from the sandbox</h1><p id="said">loading…</p></main>
<script src="app.js"></script></body></html>
""",
    "style.css": """body { font: 18px/1.5 system-ui, sans-serif; margin: 3rem; }
h1 { color: #3056d3; }
""",
    "app.js": """fetch("data.json").then((r) => r.json()).then((d) => {
  document.getElementById("said").textContent = `data.json says: ${d.message}`;
});
""",
    "data.json": '{"message": "served from inside the sandbox"}\n',
}


def start_dev_servers(pid: int) -> list[int]:
    """Writes ``SITE`` and the dev server to the workspace disk, then starts
    ``python3 -m http.server`` on ``PORT`` and ``sandbox_dev_server.py`` on ``LIVE_PORT``
    inside the sandbox of opencode ``pid``, as its user; their pids there, once they listen."""
    files = {**SITE, "dev_server.py": DEV_SERVER.read_text()}
    writes = "\n".join(
        f"cat > /data/disk0/preview-site/{name} <<'CLI_EOF'\n{body}CLI_EOF"
        for name, body in files.items()
    )
    script = f"""set -e
mkdir -p /data/disk0/preview-site
{writes}
cd /data/disk0/preview-site
nohup python3 -m http.server {PORT} >/dev/null 2>&1 </dev/null &
echo $!
nohup python3 dev_server.py {LIVE_PORT} >/dev/null 2>&1 </dev/null &
echo $!
for port in {PORT} {LIVE_PORT}; do
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && continue 2
    sleep 0.1
  done
  echo "nothing listens on $port" >&2
  exit 1
done
"""
    result = run_inside(pid, script)
    assert result.returncode == 0, result.stdout + result.stderr
    return [int(word) for word in result.stdout.split()]


@needs_isolation
def test_previews_journey(data_dir: Path) -> None:
    require_web_ui()
    servers: list[tuple[int, int]] = []  # (opencode's pid, the dev server's pid inside)

    def serve(line: str) -> str | None:
        """Starts the dev servers in the sandbox of each ``SERVE <id>`` the journey asks for."""
        if not line.startswith("SERVE "):
            return None
        sandbox_id = line.split()[1]
        root_pid = int((data_dir / "sandboxes" / sandbox_id / "pid").read_text())
        pid = opencode_pid(root_pid)
        servers.extend((pid, inside) for inside in start_dev_servers(pid))
        return "served"

    with running_daemon(data_dir) as server:
        try:
            code, said, errors = converse("previews.mjs", origin(server), data_dir.parent, serve)
        finally:
            for pid, inside in servers:  # (the sandbox's end would stop them too)
                run_inside(pid, f"kill {inside} 2>/dev/null || true")
    assert code == 0, "".join(said)[-3000:] + errors[-3000:]
    assert any(line.startswith(f"port {PORT} listed") for line in said), said
    assert any(line.startswith("preview rendered") for line in said), said
    assert any(line.startswith("live preview") for line in said), said


@contextmanager
def laptop_servers(root: Path, count: int) -> Iterator[list[int]]:
    """``count`` small web servers on this machine's 127.0.0.1, as a laptop's dev servers (the
    first serves a page that says where it is); their ports."""
    site = root / "site"
    site.mkdir()
    (site / "index.html").write_text(
        '<!doctype html><title>Laptop app</title><h1 lang="en">Hello from the laptop</h1>'
    )
    ports = []
    while len(ports) < count:  # distinct, and never opencode's 4096
        port = free_port()
        if port not in ports and port != 4096:
            ports.append(port)
    servers = [
        subprocess.Popen(
            ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=site,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        yield ports
    finally:
        for server in servers:
            server.kill()
            server.wait(10)


@needs_isolation
def test_local_previews_journey(data_dir: Path) -> None:
    require_web_ui()
    root = scratch_dir("cli-test-laptop-")
    agent: subprocess.Popen[bytes] | None = None
    try:
        with (
            laptop_servers(root, 3) as (shared, other, opencode),
            running_daemon(data_dir) as server,
        ):
            account = {"username": "lena", "password": "correct horse battery"}
            assert server.request("POST", "/api/auth/register", account)[0] == 201
            assert server.request("POST", "/api/auth/login", account)[0] == 200
            status, workspace = server.request("POST", "/api/workspaces", {"name": "Laptops"})
            assert status == 201, workspace
            status, made = server.request("POST", f"/api/workspaces/{workspace['id']}/agent-code")
            assert status == 201, made
            agent = subprocess.Popen(
                [
                    twistd(),
                    "-n",
                    "--pidfile=",
                    f"--logfile={root / 'agent.log'}",
                    "cli-agent",
                    *("--server", server.base, "--code", made["code"], "--name", "laptop"),
                    *("--opencode-url", f"http://127.0.0.1:{opencode}"),
                    *("--allow-port", str(shared)),
                ],
                cwd=root,
                env={**os.environ, "HOME": str(root / "home")},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 60
            while True:
                listed = server.request("GET", f"/api/workspaces/{workspace['id']}/sandboxes")[1]
                if any(s["is_local"] and s["status"] == "running" for s in listed):
                    break
                assert agent.poll() is None, (root / "agent.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (root / "agent.log").read_text()[-3000:]
                time.sleep(0.2)
            printed = run_journey(
                "previews-local.mjs",
                origin(server),
                "lena",
                str(shared),
                str(other),
                home=data_dir.parent,
                timeout=300,
            )
            assert "local preview rendered" in printed, printed
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
        remove_dir(root)
