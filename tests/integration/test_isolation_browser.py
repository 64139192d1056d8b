"""Issue 16, classes 1 and 2, attacked from where an adversary stands: a page served by one
sandbox against another (real headless Chromium, and the same requests on raw sockets), a
hostile sandbox answering a WebSocket upgrade with cookies for the parent domain, and a
browser carrying two of our session cookies. The sandboxes are a FAKE upstream (a hostile
one, legitimately: it serves the attacker's page) that records every request reaching it;
the server, its database and the browser are real."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.server import Site

from cli_server.proxy.takeover import hand_over
from cli_server.testing import FakeBackend

from .conftest import Running, _reactor, server_config, start_server, stop_server
from .helpers import Api, Wire, free_port, wait_until
from .test_sandboxes_api import wait_status
from .upstream import Recorder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A registrable domain, so that every sandbox origin is same-site with every other and with
# the main site, as in production (``*.localhost`` origins are each a site of their own to
# Chromium). Chromium maps it to loopback (isolation.mjs): no name is looked up.
BASE = "cli.test"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What the hostile sandbox answers a WebSocket upgrade with, besides the upgrade itself.
TOSSED = [
    b"cli_session=evil; Domain=cli.test; Path=/",
    b"cli_session=evil; Path=/",
    b"CLI_Sandbox=evil; Path=/",
    b"__Host-cli_sandbox=evil; Secure; Path=/",
    b"evil",
    b"other=evil; Domain=cli.test; Path=/",
    b"kept=1; Path=/",
]
ATTACK = b"""<!doctype html><html><body><iframe name="sink"></iframe><script>
window.results = {};
(async () => {
  const t = new URLSearchParams(location.search).get("target"), r = window.results;
  try {
    await fetch(t + "/session?attack=fetch",
      {method: "POST", mode: "no-cors", credentials: "include", body: "{}"});
    r.fetch = "sent";
  } catch (e) { r.fetch = "failed"; }
  try {
    const read = await fetch(t + "/echo?attack=cors", {credentials: "include"});
    r.cors = "read " + read.status;
  } catch (e) { r.cors = "blocked"; }
  r.form = await new Promise((resolve) => {
    const f = document.createElement("form"), i = document.createElement("input");
    f.method = "POST"; f.action = t + "/session?attack=form"; f.target = "sink";
    i.name = "x"; i.value = "1"; f.appendChild(i); document.body.appendChild(f);
    document.querySelector("iframe").onload = () => resolve("loaded");
    f.submit();
    setTimeout(() => resolve("no load"), 5000);
  });
  r.ws = await new Promise((resolve) => {
    const ws = new WebSocket(t.replace(/^http/, "ws") + "/pty/attack/connect");
    ws.onopen = () => { ws.close(); resolve("open"); };
    ws.onerror = () => resolve("refused");
    setTimeout(() => resolve("no answer"), 5000);
  });
  window.done = true;
})();
</script></body></html>"""
OWN = b"""<!doctype html><html><body><script>
window.results = {};
(async () => {
  const r = window.results;
  const posted = await fetch("/session?own=1",
    {method: "POST", headers: {"content-type": "application/json"}, body: "{}"});
  r.post = posted.status;
  r.ws = await new Promise((resolve) => {
    const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/pty/own/connect");
    ws.onopen = () => { ws.close(); resolve("open"); };
    ws.onerror = () => resolve("refused");
    setTimeout(() => resolve("no answer"), 5000);
  });
  window.done = true;
})();
</script></body></html>"""


class Hostile(Recorder):
    """The FAKE sandbox: records as ``Recorder`` does, and serves the two pages above."""

    def render(self, request: Any) -> Any:
        page = {b"/attack.html": ATTACK, b"/own.html": OWN}.get(request.path)
        if page is None:
            return super().render(request)
        request.setHeader(b"content-type", b"text/html")
        return page


class Upgrades(Protocol):
    """Answers a WebSocket upgrade itself (101 with ``TOSSED`` cookies, recorded in ``seen``
    like any request); any other connection goes to the recorder's twisted.web site."""

    def __init__(self, recorder: Recorder, site: Site, upgraded: list[Any]) -> None:
        self.recorder, self.site, self.upgraded = recorder, site, upgraded
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.transport is None:
            return
        lines = self.buffer[:end].split(b"\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.decode().lower(), []).append(value.strip().decode())
        if headers.get("upgrade") != ["websocket"]:
            channel = self.site.buildProtocol(None)
            hand_over(self.transport, channel)
            channel.makeConnection(self.transport)
            channel.dataReceived(self.buffer)
            return
        method, uri, _ = lines[0].decode().split(" ")
        self.recorder.seen.append({"method": method, "uri": uri, "headers": headers, "body": ""})
        key = headers["sec-websocket-key"][0].encode()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        cookies = b"".join(b"Set-Cookie: " + c + b"\r\n" for c in TOSSED)
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n" + cookies + b"\r\n"
        )
        self.upgraded.append(self.transport)
        self.buffer = b""


@attrs.define
class Attack:
    app: Running
    upstream: Recorder
    victim: Api
    a: str  # the attacker's sandbox, in the attacker's... or anyone's workspace
    b: str  # the victim's sandbox, in another workspace
    port: int
    upgraded: list[Any]

    def host(self, sandbox_id: str) -> str:
        return f"oc-{sandbox_id}.{BASE}:{self.port}"

    async def ticket(self, sandbox_id: str) -> str:
        reply = await self.victim.call("POST", f"/api/sandboxes/{sandbox_id}/open")
        assert reply.code == 200, reply
        return str(reply.body["url"])

    async def cookie(self, sandbox_id: str) -> str:
        """The victim's subdomain session, redeemed over a plain client."""
        url = await self.ticket(sandbox_id)
        reply = await self.app.client().call(
            "GET", url.split(self.host(sandbox_id), 1)[1], headers={"Host": self.host(sandbox_id)}
        )
        assert reply.code == 303, reply
        return str(reply.headers.getRawHeaders("set-cookie")[0].split(";")[0].split("=", 1)[1])

    def seen_on(self, sandbox_id: str) -> list[dict[str, Any]]:
        return [s for s in self.upstream.seen if s["headers"]["host"] == [self.host(sandbox_id)]]


@pytest_twisted.async_yield_fixture
async def attack(db_url: str) -> AsyncIterator[Attack]:
    reactor = _reactor()
    recorder, upgraded = Hostile(reactor), list[Any]()
    site = Site(recorder)
    factory = Factory.forProtocol(lambda: Upgrades(recorder, site, upgraded))
    upstream = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port = free_port()
    config = attrs.evolve(server_config(db_url), base_domain=f"{BASE}:{port}")
    backend = FakeBackend(serve_at=upstream.getHost().port)
    app = await start_server(db_url, backend=backend, config=config, port=port)
    victim = app.client()
    await victim.register_and_login("victim", "correct horse battery")
    ids = []
    for name in ("a", "b"):  # two workspaces: the pages of one must not act on the other
        wid = (await victim.call("POST", "/api/workspaces", {"name": name})).body["id"]
        made = await victim.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": name})
        await wait_status(victim, made.body["id"], "running")
        ids.append(made.body["id"])
    yield Attack(app, recorder, victim, ids[0], ids[1], port, upgraded)
    for transport in upgraded:
        transport.abortConnection()
    await stop_server(app)
    await upstream.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_page_on_one_sandbox_cannot_act_on_another_in_chromium(attack: Attack) -> None:
    """Victim signed in on the main site, A and B. A's page POSTs to B (no-cors fetch and a
    form), opens B's terminal WebSocket and reads B with CORS: B's opencode sees none of it,
    and the browser gets 403s. B's own page POSTs and opens its WebSocket as before, and the
    cookies B's 101 answer tries to set are not stored. B's paused page resumes with its
    button."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    plan = {
        "base": f"http://{BASE}:{attack.port}",
        "a": await attack.ticket(attack.a),
        "b": await attack.ticket(attack.b),
        "bId": attack.b,
        "username": "victim",
        "password": "correct horse battery",
    }
    run: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
        "node",
        ["e2e/isolation.mjs", json.dumps(plan)],
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "CHROMIUM": chromium, "HOME": "/tmp"},
        path=os.path.join(ROOT, "webui"),
        reactor=_reactor(),
    )
    out, err, code = await run
    assert code == 0, (out + err).decode()[-3000:]
    report = json.loads(out.decode().strip().splitlines()[-1])

    on_b = [(s["method"], s["uri"]) for s in attack.seen_on(attack.b)]
    assert not [uri for _, uri in on_b if "attack" in uri], on_b  # nothing of A's reached B
    statuses = {uri: status for _, uri, status in report["statuses"]}
    assert statuses["/session?attack=fetch"] == 403, report
    assert statuses["/session?attack=form"] == 403, report
    assert report["attack"]["ws"] == "refused" and report["attack"]["cors"] == "blocked"

    assert report["own"] == {"post": 200, "ws": "open"}, report
    assert report["framed"] == [], report  # framing refused (the frame shows an error)
    assert ("POST", "/session?own=1") in on_b and ("GET", "/pty/own/connect") in on_b
    assert not [c for c in report["cookies"] if "evil" in c], report["cookies"]
    assert f"kept=1@oc-{attack.b}.{BASE}" in report["cookies"]
    assert report["me"] == [200, "victim"]  # the main site still knows the victim

    assert report["paused"] == 200 and report["resume"] == 303, report
    # (over plain http Chromium sends no fetch metadata to a host that is not localhost: the
    # page's Referrer-Policy lets its Origin through)
    assert report["resumeOrigin"] == f"http://{attack.host(attack.b)}", report
    await wait_status(attack.victim, attack.b, "running")


def _upgrade(host: str, cookie: str, path: str = "/pty/own/connect", **extra: str) -> bytes:
    headers = {
        "Host": host,
        "Cookie": cookie,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **extra,
    }
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _exchange(attack: Attack, data: bytes, until: bytes = b"\r\n\r\n") -> bytes:
    """What the server answers ``data`` on a raw connection, up to ``until`` or its close."""
    reactor = _reactor()
    wire = Wire()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", attack.port)
    await connectProtocol(endpoint, wire)
    assert wire.transport is not None
    wire.transport.write(data)
    await wait_until(reactor, lambda: until in wire.received or wire.closed.called, timeout=10)
    wire.transport.loseConnection()
    return wire.received


@pytest_twisted.ensureDeferred
async def test_a_hostile_101_sets_no_cookie_for_other_hosts_or_with_our_names(
    attack: Attack,
) -> None:
    """A sandbox answering its terminal's upgrade with Set-Cookie for the parent domain, with
    our names or with none: the browser gets the 101 with only its own harmless cookie; the
    upgrade reaches the sandbox without credential parameters."""
    cookie = await attack.cookie(attack.b)
    host = attack.host(attack.b)
    answer = await _exchange(
        attack,
        _upgrade(
            host,
            f"cli_sandbox={cookie}",
            "/pty/own/connect?auth_token=steal&x=1&ticket=t",
            Origin=f"http://{host}",
        ),
    )
    head = answer.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 101 "), head
    cookies = [line for line in head.split("\r\n") if line.lower().startswith("set-cookie:")]
    assert cookies == ["Set-Cookie: kept=1; Path=/"], head
    assert "cross-origin-resource-policy: same-origin" in head.lower()
    assert "sec-websocket-accept:" in head.lower() and "upgrade: websocket" in head.lower()
    (seen,) = attack.seen_on(attack.b)
    assert seen["uri"] == "/pty/own/connect?x=1", seen


@pytest_twisted.ensureDeferred
async def test_requests_from_other_origins_never_reach_the_sandbox(attack: Attack) -> None:
    """The same attacks without a browser, on each path: the fast path (POST, a CORS read),
    twisted.web (a WebSocket, a chunked upload), a null Origin without same-origin fetch
    metadata; the sandbox's own origin and non-browser clients pass; Resume from a
    no-referrer page (Origin: null, same-origin) works."""
    cookie = f"cli_sandbox={await attack.cookie(attack.b)}"
    host = attack.host(attack.b)
    a_origin = f"http://{attack.host(attack.a)}"
    client = attack.app.client()

    async def visit(method: str, path: str, **headers: str) -> int:
        reply = await client.call(
            method, path, raw=b"{}", headers={"Host": host, "Cookie": cookie, **headers}
        )
        return reply.code

    assert await visit("POST", "/session?attack=1", Origin=a_origin) == 403
    assert await visit("POST", "/session?attack=2", Origin="null") == 403
    assert await visit("POST", "/session?attack=3", **{"Sec-Fetch-Site": "same-site"}) == 403
    assert await visit("PUT", "/session?attack=4", Origin="null", **{"Sec-Fetch-Site": "none"}) == (
        403
    )
    assert await visit("GET", "/echo?attack=5", Origin=a_origin) == 403
    assert await visit("OPTIONS", "/echo?attack=6", Origin=a_origin) == 403
    chunked = (
        f"POST /session?attack=7 HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
        f"Origin: {a_origin}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    ).encode()
    assert (await _exchange(attack, chunked)).startswith(b"HTTP/1.1 403 ")
    ws = _upgrade(host, cookie, "/pty/attack8/connect", Origin=a_origin)
    assert (await _exchange(attack, ws)).startswith(b"HTTP/1.1 403 ")
    ws = _upgrade(host, cookie, "/pty/attack9/connect", **{"Sec-Fetch-Site": "same-site"})
    assert (await _exchange(attack, ws)).startswith(b"HTTP/1.1 403 ")
    assert not [s for s in attack.seen_on(attack.b) if "attack" in s["uri"]]

    assert await visit("POST", "/session?own=1", Origin=f"http://{host}") == 200
    assert await visit(
        "POST", "/session?own=2", Origin="null", **{"Sec-Fetch-Site": "same-origin"}
    ) == (200)
    assert await visit("POST", "/session?own=3") == 200  # no browser: opencode's own clients
    assert await visit("GET", "/echo?own=4", **{"Sec-Fetch-Site": "cross-site"}) == 200  # a link
    assert len([s for s in attack.seen_on(attack.b) if "own=" in s["uri"]]) == 4

    await attack.victim.call("POST", f"/api/sandboxes/{attack.b}/pause")
    await wait_status(attack.victim, attack.b, "paused")
    attack.app.server.proxy_access.forget()
    forged = await visit("POST", "/_cli/resume", Origin="null", **{"Sec-Fetch-Site": "same-site"})
    assert forged == 403
    resumed = await visit(
        "POST", "/_cli/resume", Origin="null", **{"Sec-Fetch-Site": "same-origin"}
    )
    assert resumed == 303
    await wait_status(attack.victim, attack.b, "running")


@pytest_twisted.ensureDeferred
async def test_two_of_our_session_cookies_authenticate_nobody(attack: Attack) -> None:
    """A tossed cookie next to the real one: the main site answers 401 and expires both
    (host-only and for the parent domain); a subdomain shows its sign-in page, on the fast
    path (a GET) and on twisted.web's (a HEAD, a WebSocket), and the sandbox sees nothing."""
    me = attack.victim.jar
    session = next(str(c.value) for c in me if c.name == "cli_session")
    intruder = attack.app.client()
    await intruder.register_and_login("intruder", "correct horse battery")
    theirs = next(str(c.value) for c in intruder.jar if c.name == "cli_session")
    client = attack.app.client()
    main = f"{BASE}:{attack.port}"

    async def whoami(cookie: str) -> Any:
        return await client.call("GET", "/api/auth/me", headers={"Host": main, "Cookie": cookie})

    assert (await whoami(f"cli_session={session}")).body["username"] == "victim"
    for cookie in (
        f"cli_session={theirs}; cli_session={session}",  # swapped onto the intruder: no
        f"cli_session={session}; cli_session={session}",
    ):
        reply = await whoami(cookie)
        assert reply.code == 401, reply
        cleared = reply.headers.getRawHeaders("set-cookie")
        assert "cli_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax" in cleared
        assert "cli_session=; Path=/; Domain=cli.test; Max-Age=0; HttpOnly; SameSite=Lax" in (
            cleared
        )
        assert any("Path=/api/auth/me;" in c for c in cleared)
    two_headers = b"GET /api/auth/me HTTP/1.1\r\nHost: %s\r\nCookie: cli_session=%s\r\n" % (
        main.encode(),
        session.encode(),
    )
    two_headers += b"Cookie: cli_session=%s\r\nConnection: close\r\n\r\n" % theirs.encode()
    assert (await _exchange(attack, two_headers)).startswith(b"HTTP/1.1 401 ")

    mine = await attack.cookie(attack.b)
    other = await attack.cookie(attack.b)
    host = attack.host(attack.b)
    doubled = f"cli_sandbox={other}; cli_sandbox={mine}"
    for method in ("GET", "HEAD"):
        reply = await client.call(
            method, "/echo?twice=1", headers={"Host": host, "Cookie": doubled}
        )
        assert reply.code == 401, (method, reply)
        assert "cli_sandbox=; Path=/; Domain=cli.test; Max-Age=0; HttpOnly; SameSite=Lax" in (
            reply.headers.getRawHeaders("set-cookie")
        )
    ws = _upgrade(host, doubled, "/pty/twice/connect", Origin=f"http://{host}")
    assert (await _exchange(attack, ws)).startswith(b"HTTP/1.1 401 ")
    assert not [s for s in attack.seen_on(attack.b) if "twice" in s["uri"]]
    single = await client.call(
        "GET", "/echo?once=1", headers={"Host": host, "Cookie": f"cli_sandbox={mine}"}
    )
    assert single.code == 200
