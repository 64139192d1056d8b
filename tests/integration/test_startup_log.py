"""What a real `twistd cli-server` says in its log: one line with the address to open, a
warning when Claude is not set up, and no line per connection about factories."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

from .daemon import Daemon
from .helpers import needs_isolation


def _get(port: int, path: str, host: str, cookie: str = "") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": host, **({"Cookie": cookie} if cookie else {})}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@needs_isolation
def test_one_ready_line_and_no_factory_noise(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox is started, opened and used through the proxy, the API and the Anthropic proxy
    are called: the log has exactly one "open http://…" line (the address people type), one
    warning that Claude is not set up, and not one "Starting/Stopping factory" line; /readyz
    stays 200 and says Claude is not configured."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    server = Daemon(data_dir)
    server.start()
    try:
        assert server.request("GET", "/readyz") == (
            200,
            {"status": "ready", "claude": "not configured"},
        )
        credentials = {"username": "alice", "password": "correct horse"}
        assert server.request("POST", "/api/auth/register", credentials)[0] == 201
        assert server.request("POST", "/api/auth/login", credentials)[0] == 200
        _, workspace = server.request("POST", "/api/workspaces", {"name": "w"})
        made = server.request("POST", f"/api/workspaces/{workspace['id']}/sandboxes", {"name": "s"})
        sid = made[1]["id"]
        deadline = time.monotonic() + 90
        while server.request("GET", f"/api/sandboxes/{sid}")[1]["status"] != "running":
            assert time.monotonic() < deadline, "the sandbox did not start"
            time.sleep(0.2)
        usage = server.request("GET", f"/api/workspaces/{workspace['id']}/usage")[1]
        assert usage["claude"]["configured"] is False
        url = server.request("POST", f"/api/sandboxes/{sid}/open")[1]["url"]
        host = f"oc-{sid}.localhost:{server.port}"
        code, headers, _ = _get(server.port, url.split(host, 1)[1], host)
        assert code == 303
        cookie = headers["Set-Cookie"].split(";")[0]
        for path in ("/", "/global/health", "/session", "/global/health"):
            assert _get(server.port, path, host, cookie)[0] == 200, path
        refused = server.request("POST", "/proxy/anthropic/v1/messages", {})
        assert refused[0] == 403 and "ANTHROPIC_API_KEY" in refused[1]["error"]["message"]
        for _ in range(3):
            assert server.request("GET", "/api/workspaces")[0] == 200
    finally:
        server.stop()
    log = server.log.read_text()
    ready = [line for line in log.splitlines() if "open http" in line]
    assert len(ready) == 1, ready
    assert ready[0].endswith(f"cli-server is ready: open http://localhost:{server.port}"), ready
    assert "Starting factory" not in log and "Stopping factory" not in log, log[-3000:]
    assert log.count("Claude is not set up") == 1, log[-3000:]
