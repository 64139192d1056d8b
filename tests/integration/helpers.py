"""Shared pieces for tests that run against real components."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
from attrs import define, field
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool


class Wire(Protocol):
    """A raw connection: what arrives is kept in ``received``; ``closed`` fires at its end."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


def scratch_dir(prefix: str) -> Path:
    """A temporary directory the embedded database's system account can enter when we are root.

    pytest's tmp_path lives under 0700 directories, which PostgreSQL's account cannot cross.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(path.stat().st_mode | stat.S_IXOTH)
    return path


def remove_dir(path: Path) -> None:
    """Unmount what a test left mounted below ``path`` (quota images, netns files), then
    remove it: removing through a mount would leave the mount and its loop device behind."""
    from cli_server.sandboxes.disk_quota import parse_mountinfo

    below = [
        m.point
        for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        if Path(m.point).is_relative_to(path)
    ]
    for point in sorted(set(below), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)


def chromium_dom_argv(url: str) -> list[str]:
    """Headless Chromium printing the DOM it shows after loading ``url`` (``*.localhost``
    resolves to loopback there, so sandbox subdomains need no DNS)."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000"]
    return [chromium, *flags, "--dump-dom", url]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@define
class Reply:
    code: int
    body: Any
    headers: Any

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return str(code) if code is not None else None
        return None


@define(eq=False)
class Api:
    """One browser-like client: its own cookie jar, JSON in and out."""

    reactor: Any
    base: str
    pool: HTTPConnectionPool
    jar: CookieJar = field(factory=CookieJar)
    user: dict[str, Any] | None = None
    # An api_document.ApiDocument: every answer is checked against the server's document.
    document: Any = None

    @property
    def http(self) -> HTTPClient:
        return HTTPClient(Agent(self.reactor, pool=self.pool), cookiejar=self.jar)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Deferred[Reply]:
        """A Deferred, so calls can also be raced with gatherResults."""
        return Deferred.fromCoroutine(self._call(method, path, body, raw, headers))

    async def _call(
        self,
        method: str,
        path: str,
        body: Any,
        raw: bytes | None,
        headers: dict[str, str] | None,
    ) -> Reply:
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        d = self.http.request(
            method, self.base + path, data=data, headers=hdrs, allow_redirects=False
        )
        d.addTimeout(30, self.reactor)
        response = await d
        content = await response.content()
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = content
        if self.document is not None:
            ctype = response.headers.getRawHeaders(b"content-type", [b""])[0].decode()
            self.document.check(method, path, response.code, parsed, ctype)
        return Reply(response.code, parsed, response.headers)

    async def register_and_login(self, username: str, password: str = "password123") -> None:
        made = await self.call(
            "POST", "/api/auth/register", {"username": username, "password": password}
        )
        assert made.code == 201, made
        logged = await self.call(
            "POST", "/api/auth/login", {"username": username, "password": password}
        )
        assert logged.code == 200, logged
        self.user = logged.body

    async def add_member(self, workspace_id: str, invitee: Api, role: str = "developer") -> str:
        """Make ``invitee`` (logged in) a member the way people join: this client invites,
        ``invitee`` accepts. Returns the invitee's user id."""
        assert invitee.user is not None, "log the invitee in first"
        invited = await self.call(
            "POST",
            f"/api/workspaces/{workspace_id}/members",
            {"username": invitee.user["username"], "role": role},
        )
        assert invited.code in (200, 201), invited
        if invited.body["status"] == "invited":
            iid = invited.body["invitation_id"]
            accepted = await invitee.call("POST", f"/api/invitations/{iid}/accept")
            assert accepted.code == 200 and accepted.body["role"] == role, accepted
        return str(invitee.user["id"])


async def wait_until(reactor: Any, check: Any, timeout: float = 30.0, step: float = 0.05) -> None:
    """Poll ``check()`` (sync or async) until it is truthy; integration tests only."""
    waited = 0.0
    while True:
        result = check()
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            result = await result
        if result:
            return
        if waited >= timeout:
            raise TimeoutError(f"condition not met within {timeout}s")
        await deferLater(reactor, step)
        waited += step


def running_as_root() -> bool:
    return os.geteuid() == 0


def opencode_binary() -> Path:
    """The real opencode (npm opencode-ai@1.18.33, installed by the README's test command)."""
    from cli_server.sandboxes.process_backend import find_opencode

    found = find_opencode(os.environ.get("OPENCODE_BIN"))
    assert found is not None, "opencode is not installed: run 'npm install' in the checkout"
    return found


def _isolation_missing() -> str | None:
    from cli_server.sandboxes.process_backend import check_isolation_tools

    return check_isolation_tools()


# Tests that need bubblewrap, slirp4netns and root. Outside CI they skip with the reason; in
# CI (CI=true) they never skip, so a missing install step fails loudly instead of hiding.
needs_isolation = pytest.mark.skipif(
    _isolation_missing() is not None and not os.environ.get("CI"),
    reason=f"cannot isolate sandboxes here: {_isolation_missing()}",
)
