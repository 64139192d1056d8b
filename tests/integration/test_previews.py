"""Previews (``oc-{id}-p{port}``) through the real server and PostgreSQL, with a FAKE backend
whose sandbox ports are a small dev server on the host (``upstream.DevServer``): what reaches
the dev server, who may do what, which session counts where, and what revocation cuts."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.server import Site

from .conftest import Running, _reactor, server_config, start_server, stop_server
from .helpers import Api, Wire, free_port, wait_until
from .test_isolation_browser import BASE, ROOT, Hostile, Upgrades
from .test_sandboxes_api import team as team_of
from .test_sandboxes_api import wait_status
from .test_tunnel import Laptop, Team, team  # noqa: F401  (a fixture: a server for agents)
from .upstream import DevServer, PreviewBackend, Recorder, serve, serve_dev_server

VITE = 5173  # a port with a dev server on it
IDLE = 8000  # a port nothing listens on


@attrs.define
class Previews:
    app: Running
    opencode: Recorder  # the sandbox's opencode (FAKE)
    dev: DevServer  # what listens on port VITE in the sandbox (FAKE)
    backend: PreviewBackend
    people: dict[str, Api]
    workspace: str
    sandbox: str

    def host(self, port: int | None = VITE) -> str:
        label = f"oc-{self.sandbox}" if port is None else f"oc-{self.sandbox}-p{port}"
        return f"{label}.localhost:8080"

    async def link(self, who: str, port: int | None = VITE) -> str:
        """An Open link for ``who``: its path on the preview's (or opencode's) origin."""
        body = None if port is None else {"port": port}
        reply = await self.people[who].call("POST", f"/api/sandboxes/{self.sandbox}/open", body)
        assert reply.code == 200, reply
        prefix = f"http://{self.host(port)}"
        assert reply.body["url"].startswith(prefix + "/_cli/auth?ticket="), reply.body
        return str(reply.body["url"][len(prefix) :])

    async def open(self, who: str, port: int | None = VITE) -> str:
        """Sign ``who`` in on the origin of ``port``; returns its session cookie's value."""
        reply = await self.visit(await self.link(who, port), port=port)
        assert reply.code == 303, reply
        landing = "/" if port is not None else "/_cli/open"
        assert reply.headers.getRawHeaders("location") == [landing]
        (cookie,) = reply.headers.getRawHeaders("set-cookie")
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Domain" not in cookie
        return str(cookie.split(";")[0].split("=", 1)[1])

    async def visit(
        self,
        path: str,
        method: str = "GET",
        *,
        port: int | None = VITE,
        cookie: str | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        hdrs = {"Host": self.host(port), **(headers or {})}
        if cookie:
            hdrs["Cookie"] = f"cli_sandbox={cookie}"
        return await self.app.client().call(method, path, body, headers=hdrs)

    async def socket(self, cookie: str, origin: str | None = None) -> Wire:
        """A WebSocket to the dev server's ``/ws`` through the preview address, raw."""
        endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", self.app.port.getHost().port)
        wire = await connectProtocol(endpoint, Wire())
        head = (
            f"GET /ws?token=steal HTTP/1.1\r\nHost: {self.host()}\r\n"
            f"Origin: {origin or 'http://' + self.host()}\r\n"
            f"Cookie: cli_sandbox={cookie}; cli_session=main\r\n"
            "Authorization: Basic c3RlYWw6c3RlYWw=\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        wire.transport.write(head.encode())  # type: ignore[union-attr]
        wire.closed.addTimeout(20, _reactor())
        return wire


def frame(text: bytes) -> bytes:
    """A client's (masked) WebSocket text frame."""
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    )


async def echoed(wire: Wire, text: bytes) -> None:
    """Sends ``text`` and waits for the dev server's echo (an unmasked text frame)."""
    wire.received = wire.received.partition(b"\r\n\r\n")[2] if b"HTTP/1.1" in wire.received else b""
    wire.transport.write(frame(text))  # type: ignore[union-attr]
    echo = bytes([0x81, len(text)]) + text
    await wait_until(_reactor(), lambda: echo in wire.received, timeout=10)


async def refused(wire: Wire) -> None:
    """The upgrade was answered 403 (by us: the dev server never hears of it)."""
    await wait_until(_reactor(), lambda: b"\r\n\r\n" in wire.received, timeout=10)
    assert wire.received.startswith(b"HTTP/1.1 403"), wire.received[:200]
    wire.transport.loseConnection()  # type: ignore[union-attr]
    await wire.closed


@pytest_twisted.async_yield_fixture
async def previews(db_url: str) -> AsyncIterator[Previews]:
    reactor = _reactor()
    opencode, opencode_port = serve(reactor)
    dev, dev_port = serve_dev_server(reactor)
    backend = PreviewBackend(
        serve_at=opencode_port.getHost().port,
        previews={VITE: dev_port.getHost().port},
        closed=free_port(),
    )
    app = await start_server(db_url, backend=backend, config=server_config(db_url))
    people, wid = await team_of(app)
    made = await people["owner"].call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "p"})
    await wait_status(people["owner"], made.body["id"], "running")
    yield Previews(app, opencode, dev, backend, people, wid, made.body["id"])
    await stop_server(app)
    await opencode_port.stopListening()
    await dev_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_preview_forwards_pages_posts_and_event_streams_without_our_credentials(
    previews: Previews,
) -> None:
    """The dev server gets the page, a POST's body and an event stream through the preview
    address; never opencode's Basic credential, the browser's Authorization, our cookies or
    credential parameters; its Set-Cookie for the parent domain or with our names is
    dropped. opencode itself sees none of it."""
    cookie = await previews.open("developer")
    before = len(previews.opencode.seen)
    page = await previews.visit(
        "/index.html?v=1&ticket=t&auth_token=steal&token=k",
        headers={
            "Cookie": f"cli_sandbox={cookie}; cli_session=main; theme=dark",
            "Authorization": "Bearer mine",
        },
    )
    assert page.code == 200, page
    seen = previews.dev.recorder.seen[-1]
    assert seen["uri"] == "/index.html?v=1"
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["cookie"] == ["theme=dark"]
    assert seen["headers"]["host"] == [previews.host()]
    assert seen["headers"]["x-forwarded-host"] == [previews.host()]
    posted = await previews.visit(
        "/api/items", "POST", cookie=cookie, body={"name": "é"}, headers={"Origin": "null"}
    )
    assert posted.code == 403  # (a null Origin without fetch metadata: unplaceable)
    posted = await previews.visit(
        "/api/items",
        "POST",
        cookie=cookie,
        body={"name": "é"},
        headers={"Origin": f"http://{previews.host()}"},
    )
    assert posted.code == 200 and json.loads(previews.dev.recorder.seen[-1]["body"]) == {
        "name": "é"
    }
    events = await previews.visit("/sse", cookie=cookie)
    assert events.code == 200 and events.body == b"data: first\n\ndata: second\n\n"
    cookies = await previews.visit("/cookies", cookie=cookie)
    assert cookies.headers.getRawHeaders("set-cookie") == ["a=1; Path=/", "d=4; HttpOnly"]
    (row,) = await previews.app.db.query("SELECT opencode_password FROM sandboxes")
    everything = json.dumps(previews.dev.recorder.seen)
    for secret in (row["opencode_password"], "steal", "main", "Bearer", cookie):
        assert secret not in everything
    assert len(previews.opencode.seen) == before
    assert (previews.sandbox, VITE) in previews.backend.asked


@pytest_twisted.ensureDeferred
async def test_a_preview_websocket_echoes_and_its_101_is_cleaned(previews: Previews) -> None:
    """Vite's hot-reload socket: the upgrade reaches the dev server without opencode's
    credential, our cookies or credential parameters; its 101 loses the parent-domain
    cookie; messages echo both ways."""
    cookie = await previews.open("developer")
    wire = await previews.socket(cookie)
    await wait_until(_reactor(), lambda: b"\r\n\r\n" in wire.received, timeout=10)
    head = wire.received.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 101"), head
    assert b"set-cookie: vite=2; path=/" in head and b"hmr=1" not in head
    await echoed(wire, b"hello")
    await echoed(wire, b"again")
    (handshake,) = previews.dev.sockets.handshakes
    assert "authorization" not in handshake and "steal" not in json.dumps(handshake)
    assert "cookie" not in handshake  # (only ours were sent)
    (row,) = await previews.app.db.query("SELECT opencode_password FROM sandboxes")
    assert row["opencode_password"] not in json.dumps(handshake)
    wire.transport.loseConnection()  # type: ignore[union-attr]
    await wire.closed


@pytest_twisted.ensureDeferred
async def test_guests_only_read_a_preview(previews: Previews) -> None:
    """A guest may GET and HEAD a preview; writes and WebSockets are refused before the dev
    server hears of them; another origin's page may not write to it at all."""
    guest = await previews.open("guest")
    assert (await previews.visit("/page", cookie=guest)).code == 200
    assert (await previews.visit("/page", "HEAD", cookie=guest)).code == 200
    before = len(previews.dev.recorder.seen)
    own = {"Origin": f"http://{previews.host()}"}
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        refusal = await previews.visit("/x", method, cookie=guest, body={}, headers=own)
        assert refusal.code == 403 and "previews are read-only" in json.dumps(refusal.body)
    await refused(await previews.socket(guest))
    assert len(previews.dev.recorder.seen) == before and not previews.dev.sockets.handshakes
    developer = await previews.open("developer")
    for origin in (f"http://{previews.host(None)}", f"http://{previews.host(IDLE)}"):
        posted = await previews.visit(
            "/x", "POST", cookie=developer, body={}, headers={"Origin": origin}
        )
        assert posted.code == 403
        await refused(await previews.socket(developer, origin=origin))
    assert len(previews.dev.recorder.seen) == before


@pytest_twisted.ensureDeferred
async def test_bad_ports_are_refused_at_the_api_and_at_the_address(previews: Previews) -> None:
    """0, 80, 65536, non-numbers, floats, booleans, opencode's 4096 and extra fields are a
    400 in the API's error shape; such a name is a not-found page saying why, never the
    main site or opencode."""
    owner = previews.people["owner"]
    path = f"/api/sandboxes/{previews.sandbox}/open"
    for body in (
        {"port": 0},
        {"port": 80},
        {"port": 1023},
        {"port": 65536},
        {"port": 4096},
        {"port": "5173"},
        {"port": "abc"},
        {"port": 5173.0},
        {"port": True},
        {"port": None},
        {"port": 5173, "host": "evil.example"},
    ):
        reply = await owner.call("POST", path, body)
        assert reply.code == 400 and reply.error_code == "invalid_request", (body, reply)
        assert "port" in reply.body["error"]["message"] or "host" in reply.body["error"]["message"]
    refused = await owner.call("POST", path, {"port": 4096})
    assert "not opencode's 4096" in refused.body["error"]["message"]
    assert (
        await owner.call("POST", path, raw=b"[5173]", headers={"Content-Type": "application/json"})
    ).code == 400
    assert (await owner.call("POST", path, {})).code == 200  # (no port: opencode's, as before)
    outsider = await previews.people["outsider"].call("POST", path, {"port": VITE})
    assert outsider.code == 404
    cookie = await previews.open("owner")
    before = (len(previews.opencode.seen), len(previews.dev.recorder.seen))
    for label, text in (
        ("p80", b"Port 80 cannot be previewed: ports 1024-65535, not opencode&#x27;s 4096."),
        ("p4096", b"Port 4096 cannot be previewed"),
        ("p65536", b"Port 65536 cannot be previewed"),
        ("p0", b"Port 0 cannot be previewed"),
        ("p05173", b"without leading zeros"),
        ("pabc", b"&#x27;abc&#x27; is not a port"),
    ):
        host = f"oc-{previews.sandbox}-{label}.localhost:8080"
        page = await previews.app.client().call(
            "GET", "/", headers={"Host": host, "Cookie": f"cli_sandbox={cookie}"}
        )
        assert page.code == 404 and text in page.body, (label, page)
    assert (len(previews.opencode.seen), len(previews.dev.recorder.seen)) == before


@pytest_twisted.ensureDeferred
async def test_a_ticket_or_session_of_one_origin_is_refused_on_every_other(
    previews: Previews,
) -> None:
    """A ticket minted for 5173 opens nothing on opencode's origin or 8000's (and is burnt);
    a session made on one origin authenticates on no other; opencode's session is none on a
    preview."""
    for elsewhere in (None, IDLE):
        link = await previews.link("developer", VITE)
        wrong = await previews.visit(link, port=elsewhere)
        assert wrong.code == 401 and b"expired" in wrong.body
        assert (await previews.visit(link)).code == 401  # burnt by the wrong origin
    link = await previews.link("developer", None)
    assert (await previews.visit(link)).code == 401
    vite = await previews.open("developer")
    opencode = await previews.open("developer", None)
    idle = await previews.open("developer", IDLE)
    assert (await previews.visit("/echo", cookie=vite)).code == 200
    assert (await previews.visit("/echo", port=None, cookie=opencode)).code == 200
    for port, cookie in ((None, vite), (IDLE, vite), (VITE, opencode), (VITE, idle)):
        assert (await previews.visit("/echo", port=port, cookie=cookie)).code == 401
    navigation = await previews.visit("/app", headers={"Sec-Fetch-Mode": "navigate"})
    assert navigation.code == 303
    location = navigation.headers.getRawHeaders("location")
    assert location == [f"http://localhost:8080/open/{previews.sandbox}?port={VITE}"]


@pytest_twisted.ensureDeferred
async def test_nothing_listening_is_a_page_that_reloads(previews: Previews) -> None:
    """A port nothing listens on in the sandbox is a 503 page saying so, reloading itself;
    opencode is not told to restart for it."""
    cookie = await previews.open("developer", IDLE)
    for upgrade in (False, True):
        headers = {"Upgrade": "websocket", "Connection": "Upgrade"} if upgrade else {}
        page = await previews.visit("/", port=IDLE, cookie=cookie, headers=headers)
        assert page.code == 503, page
        assert b"Nothing is listening on 8000 in this sandbox yet" in page.body
        assert b'http-equiv="refresh"' in page.body
    (row,) = await previews.app.db.query("SELECT status FROM sandboxes")
    assert row["status"] == "running"


@pytest_twisted.ensureDeferred
async def test_revocation_cuts_an_open_preview_websocket(previews: Previews) -> None:
    """Logout, a role change and a pause each cut a preview's open WebSocket, as they cut
    opencode's terminal, and a member's removal their event stream; the preview's traffic
    keeps the sandbox awake meanwhile."""
    reactor, people = _reactor(), previews.people
    await previews.app.db.execute("UPDATE sandboxes SET last_activity_at = now() - interval '1h'")
    previews.app.server.activity.forget()

    async def opened(who: str) -> Wire:
        wire = await previews.socket(await previews.open(who))
        await wait_until(reactor, lambda: b"\r\n\r\n" in wire.received, timeout=10)
        await echoed(wire, b"ping")
        return wire

    async def recent() -> bool:
        (row,) = await previews.app.db.query(
            "SELECT last_activity_at > now() - interval '1 minute' AS recent FROM sandboxes"
        )
        return bool(row["recent"])

    cookie = await previews.open("developer")
    assert not await recent()  # (opening is no activity)
    wire = await previews.socket(cookie)
    await wait_until(reactor, lambda: b"\r\n\r\n" in wire.received, timeout=10)
    await echoed(wire, b"ping")
    await wait_until(reactor, lambda: previews.dev.sockets.open == 1, timeout=10)
    await wait_until(reactor, recent, timeout=10)
    await people["developer"].call("POST", "/api/auth/logout")
    await wire.closed
    await wait_until(reactor, lambda: previews.dev.sockets.open == 0, timeout=10)

    wire = await opened("maintainer")
    maintainer_id = people["maintainer"].user["id"]  # type: ignore[index]
    await people["owner"].call(
        "PUT", f"/api/workspaces/{previews.workspace}/members/{maintainer_id}", {"role": "guest"}
    )
    await wire.closed
    await wait_until(reactor, lambda: previews.dev.sockets.open == 0, timeout=10)

    # A guest's event stream (guests read) ends when the guest is removed.
    guest = await previews.open("guest")
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", previews.app.port.getHost().port)
    stream = await connectProtocol(endpoint, Wire())
    stream.transport.write(  # type: ignore[union-attr]
        f"GET /ticks HTTP/1.1\r\nHost: {previews.host()}\r\n"
        f"Cookie: cli_sandbox={guest}\r\n\r\n".encode()
    )
    stream.closed.addTimeout(20, reactor)
    await wait_until(reactor, lambda: stream.received.count(b"data: tick") >= 2, timeout=10)
    guest_id = people["guest"].user["id"]  # type: ignore[index]
    await people["owner"].call("DELETE", f"/api/workspaces/{previews.workspace}/members/{guest_id}")
    await stream.closed
    await wait_until(reactor, lambda: previews.dev.recorder.ticking == 0, timeout=10)

    cookie = await previews.open("owner")
    wire = await previews.socket(cookie)
    await wait_until(reactor, lambda: b"\r\n\r\n" in wire.received, timeout=10)
    paused = await people["owner"].call("POST", f"/api/sandboxes/{previews.sandbox}/pause")
    assert paused.code == 200, paused
    await wire.closed
    await wait_status(people["owner"], previews.sandbox, "paused")
    page = await previews.visit("/", cookie=cookie)
    assert page.code == 503 and b"paused" in page.body and b"/_cli/resume" in page.body
    resumed = await previews.visit(
        "/_cli/resume", "POST", cookie=cookie, headers={"Origin": f"http://{previews.host()}"}
    )
    assert resumed.code == 303 and resumed.headers.getRawHeaders("location") == ["/"]
    await wait_status(people["owner"], previews.sandbox, "running")
    assert (await previews.visit("/again", cookie=cookie)).code == 200  # (the app, not opencode)
    assert previews.dev.recorder.seen[-1]["uri"] == "/again"


@pytest_twisted.ensureDeferred
async def test_a_laptop_port_its_agent_does_not_share_is_a_page(team: Team) -> None:  # noqa: F811
    """A local sandbox's preview goes through its agent's tunnel, and only to ports the laptop
    user allowed: this agent runs without --allow-port, so port 5173 is a page saying so,
    while opencode (a FAKE one on the laptop) is still reached."""
    reactor = _reactor()
    laptop_opencode, listening = serve(reactor)
    laptop = Laptop(team.root, team.base, f"http://127.0.0.1:{listening.getHost().port}")
    try:
        laptop.register(await team.code())
        await team.wait_status("running")
        sandbox_id = (await team.local_sandbox())["id"]
        opened = await team.owner.call("POST", f"/api/sandboxes/{sandbox_id}/open", {"port": VITE})
        host = f"oc-{sandbox_id}-p{VITE}.localhost:{team.port}"
        redeemed = await team.app.client().call(
            "GET", opened.body["url"].split(host, 1)[1], headers={"Host": host}
        )
        assert redeemed.code == 303, redeemed
        cookie = redeemed.headers.getRawHeaders("set-cookie")[0].split(";")[0]
        page = await team.app.client().call("GET", "/", headers={"Host": host, "Cookie": cookie})
        assert page.code == 403, page
        assert (
            b"Port 5173 is not shared by this laptop: its agent runs without --allow-port 5173."
            in page.body
        )
        _, opencode_cookie = await team.open(sandbox_id)
        home = await team.app.client().call(
            "GET",
            "/echo",
            headers={
                "Host": f"oc-{sandbox_id}.localhost:{team.port}",
                "Cookie": f"cli_sandbox={opencode_cookie}",
            },
        )
        assert home.code == 200 and laptop_opencode.seen[-1]["uri"] == "/echo"
    finally:
        laptop.kill()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_preview_page_cannot_act_on_its_sandboxs_opencode_in_chromium(
    db_url: str,
) -> None:
    """Real Chromium, the victim signed in on the main site, opencode's origin and the preview
    of port 5173 of the same sandbox, whose dev server is hostile (it serves the attacker's
    page): the preview's page POSTs to opencode (no-cors fetch and a form), opens its terminal
    WebSocket and reads it with CORS; opencode sees none of it. Cookies that opencode's 101
    tries to set for the parent domain or with our names are not stored; the main site still
    knows the victim; opencode's own page keeps working."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    reactor = _reactor()
    recorder, upgraded = Hostile(reactor), list[Any]()
    site = Site(recorder)
    factory = Factory.forProtocol(lambda: Upgrades(recorder, site, upgraded))
    upstream = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port = free_port()
    config = attrs.evolve(server_config(db_url), base_domain=f"{BASE}:{port}")
    where = upstream.getHost().port
    backend = PreviewBackend(serve_at=where, previews={VITE: where})
    app = await start_server(db_url, backend=backend, config=config, port=port)
    try:
        victim = app.client()
        await victim.register_and_login("victim", "correct horse battery")
        wid = (await victim.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
        made = await victim.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})
        sid = made.body["id"]
        await wait_status(victim, sid, "running")
        opening = f"/api/sandboxes/{sid}/open"
        plan = {
            "base": f"http://{BASE}:{port}",
            "a": (await victim.call("POST", opening, {"port": VITE})).body["url"],
            "b": (await victim.call("POST", opening)).body["url"],
            "bId": sid,
            "username": "victim",
            "password": "correct horse battery",
        }
        assert plan["a"].startswith(f"http://oc-{sid}-p{VITE}.{BASE}:{port}/_cli/auth?ticket=")
        run: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
            "node",
            ["e2e/isolation.mjs", json.dumps(plan)],
            env={"PATH": "/usr/bin:/bin:/usr/local/bin", "CHROMIUM": chromium, "HOME": "/tmp"},
            path=os.path.join(ROOT, "webui"),
            reactor=reactor,
        )
        out, err, code = await run
        assert code == 0, (out + err).decode()[-3000:]
        report = json.loads(out.decode().strip().splitlines()[-1])
        opencode_host = f"oc-{sid}.{BASE}:{port}"
        on_opencode = [
            (s["method"], s["uri"])
            for s in recorder.seen
            if s["headers"]["host"] == [opencode_host]
        ]
        assert not [uri for _, uri in on_opencode if "attack" in uri], on_opencode
        statuses = {uri: status for _, uri, status in report["statuses"]}
        assert statuses["/session?attack=fetch"] == 403, report
        assert statuses["/session?attack=form"] == 403, report
        assert report["attack"]["ws"] == "refused" and report["attack"]["cors"] == "blocked"
        assert report["own"] == {"post": 200, "ws": "open"}, report
        assert report["framed"] == [], report  # framing refused (the frame shows an error)
        assert not [c for c in report["cookies"] if "evil" in c], report["cookies"]
        assert report["me"] == [200, "victim"]
        previewed = [s for s in recorder.seen if s["headers"]["host"] != [opencode_host]]
        assert previewed and all("authorization" not in s["headers"] for s in previewed)
        assert report["paused"] == 200 and report["resume"] == 303, report
    finally:
        for transport in upgraded:
            transport.abortConnection()
        await stop_server(app)
        await upstream.stopListening()
