"""Real opencode behind the subdomain proxy: UI, API, events and the terminal WebSocket."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from .conftest import Real, _reactor
from .helpers import Wire, needs_isolation, wait_until

pytestmark = needs_isolation


async def connect(real: Real) -> Wire:
    endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", real.app.port.getHost().port)
    wire = Wire()
    await connectProtocol(endpoint, wire)
    return wire


def frame(payload: bytes) -> bytes:
    """One masked client text frame (payload < 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def open_sandbox(real: Real, sandbox_id: str) -> str:
    url = (await real.owner.call("POST", f"/api/sandboxes/{sandbox_id}/open")).body["url"]
    host = f"oc-{sandbox_id}.localhost:8080"
    reply = await real.app.client().call("GET", url.split(host, 1)[1], headers={"Host": host})
    assert reply.code == 303
    return str(reply.headers.getRawHeaders("set-cookie")[0].split(";")[0].split("=", 1)[1])


@pytest_twisted.ensureDeferred
async def test_opencode_through_the_proxy(real: Real) -> None:
    """The UI and its assets load, health answers, /event says server.connected (served by
    a relay worker), a session is created, and the terminal WebSocket runs a command inside
    the sandbox; logging out ends both the event stream and the terminal."""
    reactor = _reactor()
    sid, _ = await real.create("a", "web")
    cookie = await open_sandbox(real, sid)
    host = f"oc-{sid}.localhost:8080"
    client = real.app.client()

    async def get(path: str, method: str = "GET", body: Any = None) -> Any:
        return await client.call(
            method, path, body, headers={"Host": host, "Cookie": f"cli_sandbox={cookie}"}
        )

    page = await get("/")
    assert page.code == 200 and b"<html" in page.body.lower()
    asset = page.body.split(b'src="', 1)[1].split(b'"', 1)[0].decode()
    loaded = await get(asset)
    assert loaded.code == 200 and len(loaded.body) > 100_000
    health = await get("/global/health")
    assert health.code == 200 and health.body["healthy"] is True
    session = await get("/session", "POST", {"title": "through the proxy"})
    assert session.code == 200 and session.body["directory"] == "/data/disk0"

    events = await connect(real)
    events.transport.write(
        f"GET /event HTTP/1.1\r\nHost: {host}\r\nCookie: cli_sandbox={cookie}\r\n\r\n".encode()
    )
    await wait_until(reactor, lambda: b"server.connected" in events.received, timeout=15)
    await wait_until(reactor, lambda: real.app.server.relay_workers.carried_count == 1, timeout=15)

    pty = await get("/pty", "POST", {})
    assert pty.code == 200, pty
    wire = await connect(real)
    key = base64.b64encode(os.urandom(16)).decode()
    wire.transport.write(
        f"GET /pty/{pty.body['id']}/connect HTTP/1.1\r\nHost: {host}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: http://{host}\r\n"
        f"Cookie: cli_sandbox={cookie}\r\n\r\n".encode()
    )
    await wait_until(reactor, lambda: b"101 Switching Protocols" in wire.received, timeout=15)
    wire.transport.write(frame(b"echo $((6*7))-from-$(id -u)\n"))
    await wait_until(reactor, lambda: b"42-from-1000" in wire.received, timeout=15)

    await real.owner.call("POST", "/api/auth/logout")
    for cut in (events.closed, wire.closed):
        await cut.addTimeout(10, reactor)
    await wait_until(reactor, lambda: real.app.server.relay_workers.carried_count == 0, timeout=10)


@pytest_twisted.ensureDeferred
async def test_prompt_reaches_claude_through_the_anthropic_proxy(real: Real) -> None:
    """opencode in a sandbox, prompted through the subdomain, answers with the (FAKE) upstream's
    text: its call went through the door in its namespace, with our key, and was metered."""
    from .fake_anthropic import REPLY

    sid, _ = await real.create("a", "prompt")
    cookie = await open_sandbox(real, sid)
    host = f"oc-{sid}.localhost:8080"
    client = real.app.client()
    headers = {"Host": host, "Cookie": f"cli_sandbox={cookie}"}
    session = (await client.call("POST", "/session", {"title": "t"}, headers=headers)).body
    reply = await client.call(
        "POST",
        f"/session/{session['id']}/message",
        {
            "model": {"providerID": "anthropic", "modelID": "claude-sonnet-4-5"},
            "parts": [{"type": "text", "text": "Say hello"}],
        },
        headers=headers,
    )
    assert reply.code == 200, reply
    texts = [p.get("text", "") for p in reply.body.get("parts", []) if p.get("type") == "text"]
    assert REPLY in " ".join(texts), reply.body
    seen = real.anthropic.seen
    assert seen and all(s["headers"]["x-api-key"] == ["sk-ant-fake-server-key"] for s in seen)
    usage = (await real.owner.call("GET", f"/api/workspaces/{real.workspaces['a']}/usage")).body
    assert usage["month"]["requests"] >= 1 and usage["month"]["total_tokens"] > 0
