"""Ports a laptop shares through the tunnel (``--allow-port``): a real `twistd cli-agent`
process, the real in-process server, and a small dev server on the laptop's 127.0.0.1 (plain
HTTP, a 3 MiB download and a WebSocket echo). The server side connects through the hub's
endpoint, the seam the preview proxy uses, and end to end through the preview address
``oc-{id}-p{port}``."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from cli_server.tunnel.hub import TunnelHub
from cli_server.tunnel.shared_ports import PortNotShared

from .conftest import _reactor
from .helpers import Api, Wire, wait_until
from .test_proxy_opencode import frame
from .test_tunnel import Laptop, Team, team  # noqa: F401  (the fixture)
from .upstream import serve

BIG = random.Random(3).randbytes(3 * 2**20)  # > a window: flow control must carry it


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(b"echo: " + payload, isBinary)


class Page(Resource):
    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.hits = 0

    def render_GET(self, request: Any) -> Any:
        self.hits += 1
        if request.path == b"/big":
            return BIG
        if request.path == b"/events":  # one event now, the stream open until the client goes
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b"data: first\n\n")
            return NOT_DONE_YET
        return f"hello from {self.name}".encode()

    def render_POST(self, request: Any) -> bytes:
        self.hits += 1
        return b"got " + hashlib.sha256(request.content.read()).hexdigest().encode()


async def dev_server(name: str) -> tuple[Page, Any]:
    """A dev server on the laptop's loopback: / and /big, an event stream at /events, POST
    /form, and a WebSocket echo at /ws."""
    page = Page(name)
    root = Resource()
    root.putChild(b"", page)
    root.putChild(b"big", page)
    root.putChild(b"events", page)
    root.putChild(b"form", page)
    factory = WebSocketServerFactory()
    factory.protocol = Echo
    root.putChild(b"ws", WebSocketResource(factory))
    port = await TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(Site(root))
    return page, port


async def through_tunnel(hub: TunnelHub, sandbox_id: str, port: int | None, request: bytes) -> Wire:
    """A raw connection to the laptop's ``port`` through the tunnel, ``request`` written."""
    wire = Wire()
    await connectProtocol(hub.endpoint(sandbox_id, port), wire)
    assert wire.transport is not None
    wire.transport.write(request)
    return wire


async def get(hub: TunnelHub, sandbox_id: str, port: int, path: str) -> bytes:
    wire = await through_tunnel(
        hub,
        sandbox_id,
        port,
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    await wire.closed
    head, _, body = wire.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


@pytest_twisted.async_yield_fixture
async def laptop(team: Team) -> AsyncIterator[dict[str, Any]]:  # noqa: F811
    """An agent sharing one dev server's port (``allowed``) and not another's
    (``other``), with the FAKE upstream as its opencode."""
    reactor = _reactor()
    opencode, opencode_port = serve(reactor)
    allowed, allowed_port = await dev_server("the allowed port")
    other, other_port = await dev_server("a port not shared")
    agent = Laptop(team.root, team.base, f"http://127.0.0.1:{opencode_port.getHost().port}")
    shared = allowed_port.getHost().port
    agent.register(await team.code(), "--allow-port", f"{shared}")
    try:
        await team.wait_status("running")
        sandbox_id = (await team.local_sandbox())["id"]
        yield {
            "agent": agent,
            "id": sandbox_id,
            "allowed": (allowed, shared),
            "other": (other, other_port.getHost().port),
            "opencode": opencode,
        }
    finally:
        agent.kill()
        for port in (opencode_port, allowed_port, other_port):
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_allowed_port_is_served_through_the_tunnel(
    team: Team,  # noqa: F811
    laptop: dict[str, Any],
) -> None:
    """HTTP (a page, and 3 MiB with flow control) and a WebSocket echo reach the dev server
    on the laptop's 127.0.0.1; opencode's own stream still goes to opencode."""
    sandbox_id = laptop["id"]
    page, port = laptop["allowed"]
    hub = team.app.server.tunnels
    assert hub.allowed_ports(sandbox_id) == (port,)

    assert await get(hub, sandbox_id, port, "/") == b"hello from the allowed port"
    big = await get(hub, sandbox_id, port, "/big")
    assert len(big) == len(BIG), (len(big), big[:200])
    assert hashlib.sha256(big).digest() == hashlib.sha256(BIG).digest()

    key = base64.b64encode(os.urandom(16)).decode()
    ws = await through_tunnel(
        hub,
        sandbox_id,
        port,
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    reactor = _reactor()
    await wait_until(reactor, lambda: b"\r\n\r\n" in ws.received, timeout=10)
    assert ws.received.startswith(b"HTTP/1.1 101"), ws.received
    ws.received = ws.received.partition(b"\r\n\r\n")[2]
    assert ws.transport is not None
    for word in (b"one", b"two"):
        ws.transport.write(frame(word))
        want = bytes([0x81, len(b"echo: " + word)]) + b"echo: " + word
        await wait_until(reactor, lambda want=want: want in ws.received, timeout=10)
    ws.transport.loseConnection()
    await ws.closed

    opencode = await through_tunnel(hub, sandbox_id, None, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_until(reactor, lambda: b"HTTP/1.1 200" in opencode.received, timeout=10)
    assert opencode.transport is not None
    opencode.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_port_not_allowed_is_refused_by_the_server_and_by_the_agent(
    team: Team,  # noqa: F811
    laptop: dict[str, Any],
) -> None:
    """The hub refuses an unshared port with PortNotShared before asking the laptop; a
    server that asks anyway is refused by the agent; the dev server never sees a request.
    Shared ports are a run-time choice: the agent restarted without --allow-port shares none."""
    reactor = _reactor()
    sandbox_id = laptop["id"]
    other, other_port = laptop["other"]
    _, allowed_port = laptop["allowed"]
    hub = team.app.server.tunnels
    opencode_port = int(laptop["agent"].target.rsplit(":", 1)[1])
    for port in (other_port, opencode_port):
        try:
            await connectProtocol(hub.endpoint(sandbox_id, port), Wire())
        except PortNotShared as e:
            assert f"port {port} is not shared" in str(e)
        else:
            raise AssertionError(f"port {port} was let through")

    session = hub.session(sandbox_id)
    assert session is not None
    session.shared_ports = frozenset({allowed_port, other_port, opencode_port})  # asked anyway
    for port in (other_port, opencode_port):
        try:
            await connectProtocol(hub.endpoint(sandbox_id, port), Wire())
        except ConnectError as e:
            assert f"port {port} is not shared by this laptop (--allow-port)" in str(e)
        else:
            raise AssertionError(f"the agent connected port {port}")
    assert other.hits == 0
    assert laptop["opencode"].seen == []  # (nor was opencode asked in their place)
    assert "refused the server a stream to port" in laptop["agent"].logs()

    agent: Laptop = laptop["agent"]
    agent.kill()
    await team.wait_status("offline")
    assert hub.allowed_ports(sandbox_id) == ()
    agent.start()  # the saved credentials, no --allow-port this time
    await team.wait_status("running")
    await wait_until(reactor, lambda: hub.session(sandbox_id) is not None, timeout=10)
    assert hub.allowed_ports(sandbox_id) == ()
    try:
        await connectProtocol(hub.endpoint(sandbox_id, allowed_port), Wire())
    except PortNotShared:
        pass
    else:
        raise AssertionError("a port shared by an earlier run was let through")


async def preview_session(on: Team, sandbox_id: str, port: int) -> tuple[str, str]:
    """The preview's Host and a session cookie on it, through the Open link for ``port``."""
    link = await on.owner.call("POST", f"/api/sandboxes/{sandbox_id}/open", {"port": port})
    assert link.code == 200, link
    host = f"oc-{sandbox_id}-p{port}.localhost:{on.port}"
    path = link.body["url"].split(host, 1)[1]
    reply = await on.app.client().call("GET", path, headers={"Host": host})
    assert reply.code == 303, reply
    assert reply.headers.getRawHeaders("location") == ["/"]
    cookie = reply.headers.getRawHeaders("set-cookie")[0].split(";")[0].split("=", 1)[1]
    return host, str(cookie)


@pytest_twisted.ensureDeferred
async def test_a_local_preview_end_to_end(
    team: Team,  # noqa: F811
    laptop: dict[str, Any],
) -> None:
    """Through ``oc-{id}-p{port}``: the shared port's page and a WebSocket echo reach the
    dev server on the laptop; a port not shared answers the "not shared" page and its dev
    server never hears of it."""
    reactor = _reactor()
    sandbox_id = laptop["id"]
    page, port = laptop["allowed"]
    other, other_port = laptop["other"]
    client = team.app.client()

    host, cookie = await preview_session(team, sandbox_id, port)
    headers = {"Host": host, "Cookie": f"cli_sandbox={cookie}"}
    reply = await client.call("GET", "/", headers=headers)
    assert reply.code == 200, reply
    assert reply.body == b"hello from the allowed port"
    big = await client.call("GET", "/big", headers=headers)
    assert big.code == 200 and hashlib.sha256(big.body).digest() == hashlib.sha256(BIG).digest()

    wire = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", team.port), Wire())
    assert wire.transport is not None
    wire.transport.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n"
            f"Cookie: cli_sandbox={cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode()
    )
    await wait_until(reactor, lambda: b"\r\n\r\n" in wire.received, timeout=10)
    assert wire.received.startswith(b"HTTP/1.1 101"), wire.received[:300]
    wire.received = wire.received.partition(b"\r\n\r\n")[2]
    wire.transport.write(frame(b"hot reload"))
    echo = bytes([0x81, len(b"echo: hot reload")]) + b"echo: hot reload"
    await wait_until(reactor, lambda: echo in wire.received, timeout=10)
    wire.transport.loseConnection()
    await wire.closed

    posted = os.urandom(100_000)
    form = await client.call(
        "POST", "/form", raw=posted, headers={**headers, "Origin": f"http://{host}"}
    )
    assert form.code == 200, form
    assert form.body == b"got " + hashlib.sha256(posted).hexdigest().encode()

    events = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", team.port), Wire())
    assert events.transport is not None
    events.transport.write(
        f"GET /events HTTP/1.1\r\nHost: {host}\r\nCookie: cli_sandbox={cookie}\r\n\r\n".encode()
    )
    await wait_until(reactor, lambda: b"data: first\n\n" in events.received, timeout=10)
    assert events.received.startswith(b"HTTP/1.1 200")
    events.transport.abortConnection()

    # the preview path's overhead, for the record: small GETs through it vs straight to it
    direct = Api(reactor, f"http://127.0.0.1:{port}", team.app.pool)  # (same pool kind)
    timings = {}
    for name, call in (
        ("direct", lambda: direct.call("GET", "/")),
        ("preview through the tunnel", lambda: client.call("GET", "/", headers=headers)),
    ):
        began = time.monotonic()
        for _ in range(100):
            assert (await call()).code == 200
        timings[name] = (time.monotonic() - began) / 100 * 1000
    print(f"\nsmall GET, mean of 100: {', '.join(f'{k} {v:.2f} ms' for k, v in timings.items())}")

    other_host, other_cookie = await preview_session(team, sandbox_id, other_port)
    refused = await client.call(
        "GET", "/", headers={"Host": other_host, "Cookie": f"cli_sandbox={other_cookie}"}
    )
    assert refused.code == 403, refused
    assert f"Port {other_port} is not shared".encode() in refused.body
    assert other.hits == 0
