"""A real OpenID provider (npm ``oidc-provider``, tests/integration/oidc/provider.mjs) in a
node process on loopback, for the single sign-on tests; and a browser-like client that walks
the redirects between our server and it."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool

from .helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "oidc" / "provider.mjs"
CLIENT_ID, CLIENT_SECRET = "cli-server", "test-client-secret"
# The test servers' origin (conftest.server_config): the callback the provider accepts.
ORIGIN = "http://localhost:8080"


class OidcProvider:
    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.process = process
        self.issuer = f"http://127.0.0.1:{port}"

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.issuer + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read() or b"null")

    def account(self, subject: str, **claims: Any) -> None:
        self.admin("PUT", f"/_test/accounts/{subject}", claims)

    def tamper(self, **how: Any) -> None:
        self.admin("POST", "/_test/tamper", how)

    def rotate(self) -> str:
        return str(self.admin("POST", "/_test/rotate")["kid"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_oidc_provider(
    redirect_uris: list[str], port: int | None = None, timeout: float = 60.0
) -> OidcProvider:
    port = port or free_port()
    settings = {
        "port": port,
        "clients": [
            {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": redirect_uris,
            }
        ],
    }
    process = subprocess.Popen(
        ["node", str(SCRIPT), json.dumps(settings)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    provider = OidcProvider(port, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode() if process.stderr else ""
            raise AssertionError(f"oidc-provider exited: {error[-2000:]}")
        try:
            provider.admin("GET", "/_test/ready")
            return provider
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    provider.stop()
    raise AssertionError(f"oidc-provider did not answer within {timeout} s")


@pytest.fixture(scope="module")
def oidc_provider() -> Iterator[OidcProvider]:
    provider = start_oidc_provider([f"{ORIGIN}/api/auth/oidc/oidc/callback"])
    yield provider
    provider.stop()


class Browser:
    """Cookies and redirects, by hand: every hop is looked at, none followed blindly.
    ``base`` is our server; URLs on ``ORIGIN`` (what the provider was told) are sent there."""

    def __init__(self, reactor: Any, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool), cookiejar=cast(Any, self.jar))

    def ours(self, url: str) -> str:
        if url.startswith(ORIGIN):
            return self.base + url[len(ORIGIN) :]
        return urljoin(self.base + "/", url)

    async def get(self, url: str) -> tuple[int, str | None, str]:
        response = await self.http.get(url, allow_redirects=False, timeout=15)
        body = (await response.content()).decode("utf-8", "replace")
        location = response.headers.getRawHeaders(b"location", [None])[0]
        return response.code, location.decode() if location else None, body

    async def post_form(self, url: str, form: dict[str, str]) -> tuple[int, str | None]:
        response = await self.http.post(url, data=form, allow_redirects=False, timeout=15)
        await response.content()
        location = response.headers.getRawHeaders(b"location", [None])[0]
        return response.code, location.decode() if location else None

    async def start(self, provider: str = "oidc", query: str = "") -> str:
        """``/login``: where it sends the browser (the provider, or a landing on error)."""
        code, location, body = await self.get(f"{self.base}/api/auth/oidc/{provider}/login{query}")
        assert code in (302, 303) and location, (code, body)
        return location

    async def at_provider(self, url: str, subject: str, *, deny: bool = False) -> str:
        """Log in as ``subject`` at the provider (and consent, or cancel there); the
        callback URL it sends the browser back to, on our server."""
        for _ in range(12):
            if url.startswith(ORIGIN) or url.startswith(self.base):
                return self.ours(url)
            code, location, body = await self.get(url)
            if location:
                url = urljoin(url, location)
                continue
            assert code == 200, (code, body[:500])
            action = re.search(r'<form[^>]*action="([^"]+)"', body)
            prompt = re.search(r'name="prompt" value="(\w+)"', body)
            assert action and prompt, body[:500]
            uid_url = urljoin(url, action.group(1))
            if deny:
                code, location, _ = await self.get(uid_url + "/abort")
            elif prompt.group(1) == "login":
                code, location = await self.post_form(
                    uid_url, {"prompt": "login", "login": subject, "password": "any"}
                )
            else:
                code, location = await self.post_form(uid_url, {"prompt": "consent"})
            assert location, code
            url = urljoin(url, location)
        raise AssertionError("the provider kept redirecting")

    async def sign_in(self, subject: str, provider: str = "oidc", query: str = "") -> str:
        """The whole round; where our callback sends the browser in the end."""
        callback = await self.at_provider(await self.start(provider, query), subject)
        code, location, body = await self.get(callback)
        assert code == 303 and location, (code, body)
        return location

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name and c.value), None)

    async def me(self) -> tuple[int, Any]:
        code, _, body = await self.get(f"{self.base}/api/auth/me")
        return code, json.loads(body) if body else None


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)
