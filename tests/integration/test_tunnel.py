"""Local agents end to end: a real `twistd cli-agent` process joins a "laptop" opencode (the
real binary, or the FAKE upstream for byte-exact bulk transfers) to a workspace through the
tunnel, and the browser reaches it through the subdomain proxy."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
import treq
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from .conftest import FAKE_KEY, Running, _reactor, server_config, start_server, stop_server
from .daemon import twistd
from .fake_anthropic import FakeAnthropic
from .fake_anthropic import serve as serve_fake_anthropic
from .helpers import (
    Api,
    chromium_dom_argv,
    free_port,
    opencode_binary,
    remove_dir,
    scratch_dir,
    wait_until,
)
from .test_proxy_opencode import Wire, frame
from .upstream import Recorder, serve


@attrs.define
class Laptop:
    """The laptop: a `twistd cli-agent` process with its own HOME and config file."""

    root: Path
    server: str
    target: str  # the "opencode" URL on the laptop
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def config(self) -> Path:
        return self.root / "home" / ".cli-server" / "agent.json"

    @property
    def log(self) -> Path:
        return self.root / f"agent-{self.runs}.log"

    def start(self, *args: str) -> None:
        self.runs += 1
        env = {**os.environ, "HOME": str(self.root / "home")}
        self.proc = subprocess.Popen(
            [twistd(), "-n", "--pidfile=", f"--logfile={self.log}", "cli-agent", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.root,
            start_new_session=True,
        )

    def register(self, code: str, *extra: str) -> None:
        args = ["--server", self.server, "--code", code, "--name", "laptop"]
        self.start(*args, "--opencode-url", self.target, *extra)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exited(self, timeout: float = 30) -> int:
        assert self.proc is not None
        proc = self.proc
        await wait_until(_reactor(), lambda: proc.poll() is not None, timeout=timeout)
        return int(proc.returncode)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()

    def logs(self) -> str:
        return "\n".join(
            (self.root / f"agent-{n}.log").read_text(errors="replace")
            for n in range(1, self.runs + 1)
            if (self.root / f"agent-{n}.log").exists()
        )


@attrs.define
class Team:
    app: Running
    port: int
    db_url: str
    owner: Api
    workspace: str
    root: Path
    anthropic: FakeAnthropic  # FAKE Anthropic upstream behind the server's proxy
    anthropic_port: Any

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def code(self) -> str:
        made = await self.owner.call("POST", f"/api/workspaces/{self.workspace}/agent-code")
        assert made.code == 201, made
        return str(made.body["code"])

    async def local_sandbox(self) -> dict[str, Any]:
        listed = await self.owner.call("GET", f"/api/workspaces/{self.workspace}/sandboxes")
        local = [s for s in listed.body if s["is_local"]]
        assert len(local) == 1, listed.body
        return dict(local[0])

    async def wait_status(self, status: str, timeout: float = 30) -> float:
        began = time.monotonic()

        async def reached() -> bool:
            listed = await self.owner.call("GET", f"/api/workspaces/{self.workspace}/sandboxes")
            return any(s["is_local"] and s["status"] == status for s in listed.body)

        await wait_until(_reactor(), reached, timeout=timeout, step=0.05)
        return time.monotonic() - began

    async def open(self, sandbox_id: str) -> tuple[str, str]:
        """The sandbox's Host and a subdomain session cookie, through the ticket flow."""
        url = (await self.owner.call("POST", f"/api/sandboxes/{sandbox_id}/open")).body["url"]
        host = f"oc-{sandbox_id}.localhost:{self.port}"
        reply = await self.app.client().call("GET", url.split(host, 1)[1], headers={"Host": host})
        assert reply.code == 303, reply
        cookie = reply.headers.getRawHeaders("set-cookie")[0].split(";")[0].split("=", 1)[1]
        return host, str(cookie)

    async def restart(self) -> None:
        await stop_server(self.app)
        self.app = await self.start()

    async def start(self) -> Running:
        return await start_server(self.db_url, config=self.config, port=self.port)

    @property
    def config(self) -> Any:
        return attrs.evolve(
            server_config(self.db_url),
            base_domain=f"localhost:{self.port}",
            anthropic_api_key=FAKE_KEY,
            anthropic_base_url=f"http://127.0.0.1:{self.anthropic_port.getHost().port}",
        )


@pytest_twisted.async_yield_fixture
async def team(db_url: str) -> AsyncIterator[Team]:
    root = scratch_dir("cli-test-tunnel-")
    anthropic, anthropic_port = serve_fake_anthropic(_reactor())
    made = Team(None, free_port(), db_url, None, "", root, anthropic, anthropic_port)  # type: ignore[arg-type]
    made.app = await made.start()
    made.owner = made.app.client()
    await made.owner.register_and_login("owner")
    made.workspace = (await made.owner.call("POST", "/api/workspaces", {"name": "t"})).body["id"]
    yield made
    await stop_server(made.app)
    await anthropic_port.stopListening()
    remove_dir(root)


def start_opencode(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real `opencode serve` on the "laptop" (no password, as people run it locally)."""
    home = root / "oc-home"
    project = root / "project"
    project.mkdir(parents=True)
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(home),
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    }
    proc = subprocess.Popen(
        [str(opencode_binary()), "serve", "--port", str(port), "--hostname", "127.0.0.1"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


async def raw_get(port: int, request: bytes) -> Wire:
    wire = Wire()
    await connectProtocol(TCP4ClientEndpoint(_reactor(), "127.0.0.1", port), wire)
    assert wire.transport is not None
    wire.transport.write(request)
    return wire


@pytest_twisted.ensureDeferred
async def test_local_opencode_through_the_tunnel(team: Team) -> None:
    """Register with a code; through the proxy the UI, health, events, a session and the
    terminal work; a frozen agent goes offline within the dead-peer timeout; the agent comes
    back without a code; a restarted server is found again by itself; deleting the sandbox
    stops the agent for good."""
    reactor = _reactor()
    team.app.server.tunnels.ping_interval = 0.5
    team.app.server.tunnels.dead_after = 2.0
    opencode, opencode_url = start_opencode(team.root)
    laptop = Laptop(team.root, team.base, opencode_url)
    try:
        await wait_until(reactor, lambda: _answers(opencode_url), timeout=60, step=0.2)
        code = await team.code()
        laptop.register(code)
        await team.wait_status("running")
        sandbox = await team.local_sandbox()
        assert laptop.config.stat().st_mode & 0o777 == 0o600
        assert laptop.config.parent.stat().st_mode & 0o777 == 0o700
        saved = json.loads(laptop.config.read_text())
        assert saved["sandbox_id"] == sandbox["id"]

        assert team.app.server.tunnels.count == 1
        assert b"cli_tunnels 1.0" in (await team.app.client().call("GET", "/metrics")).body

        # A real browser: the Open link signs in on the subdomain and opencode's UI renders.
        dom = await chromium_dom(
            (await team.owner.call("POST", f"/api/sandboxes/{sandbox['id']}/open")).body["url"]
        )
        assert "<title>OpenCode</title>" in dom and 'data-component="' in dom, dom[-2000:]

        host, cookie = await team.open(sandbox["id"])
        client = team.app.client()
        headers = {"Host": host, "Cookie": f"cli_sandbox={cookie}"}
        page = await client.call("GET", "/", headers=headers)
        assert page.code == 200 and b"<html" in page.body.lower()
        asset = page.body.split(b'src="', 1)[1].split(b'"', 1)[0].decode()
        loaded = await client.call("GET", asset, headers=headers)
        assert loaded.code == 200 and len(loaded.body) > 100_000
        health = await client.call("GET", "/global/health", headers=headers)
        assert health.code == 200 and health.body["healthy"] is True
        session = await client.call("POST", "/session", {"title": "via tunnel"}, headers=headers)
        assert session.code == 200 and session.body["id"], session

        events = await raw_get(
            team.port,
            f"GET /event HTTP/1.1\r\nHost: {host}\r\nCookie: cli_sandbox={cookie}\r\n\r\n".encode(),
        )
        await wait_until(reactor, lambda: b"server.connected" in events.received, timeout=15)

        pty = await client.call("POST", "/pty", {}, headers=headers)
        assert pty.code == 200, pty
        key = base64.b64encode(os.urandom(16)).decode()
        wire = await raw_get(
            team.port,
            f"GET /pty/{pty.body['id']}/connect HTTP/1.1\r\nHost: {host}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: http://{host}\r\n"
            f"Cookie: cli_sandbox={cookie}\r\n\r\n".encode(),
        )
        await wait_until(reactor, lambda: b"101 Switching Protocols" in wire.received, timeout=15)
        assert wire.transport is not None
        wire.transport.write(frame(b"echo tunnel-$((6*7))\n"))
        await wait_until(reactor, lambda: b"tunnel-42" in wire.received, timeout=15)

        # A frozen laptop (no FIN, no pings): offline within the dead-peer timeout, and the
        # open event stream ends rather than hanging.
        laptop.signal(signal.SIGSTOP)
        offline_after = await team.wait_status("offline", timeout=10)
        print(f"\nfrozen agent to offline (dead-peer timeout 2 s): {offline_after:.2f} s")
        assert offline_after < 2.0 + 0.5 + 1.5, offline_after
        await wait_until(reactor, lambda: events.closed.called, timeout=10)
        gone = await client.call("GET", "/global/health", headers=headers)
        assert gone.code == 503 and b"offline" in gone.body
        laptop.signal(signal.SIGCONT)
        laptop.kill()

        # Back without a code: the saved credentials are enough.
        began = time.monotonic()
        laptop.start("--opencode-url", opencode_url)
        await team.wait_status("running")
        print(f"agent restart to running: {time.monotonic() - began:.2f} s")
        assert (await client.call("GET", "/global/health", headers=headers)).code == 200

        # The server restarts; the agent finds it again by itself.
        began = time.monotonic()
        await team.restart()
        await team.wait_status("running", timeout=30)
        print(f"server restart to tunnel back: {time.monotonic() - began:.2f} s")
        host, cookie = await team.open(sandbox["id"])
        headers = {"Host": host, "Cookie": f"cli_sandbox={cookie}"}
        again = await team.app.client().call("GET", "/global/health", headers=headers)
        assert again.code == 200, again

        # Deleting the sandbox revokes the agent: it says so and stops retrying.
        deleted = await team.owner.call("DELETE", f"/api/sandboxes/{sandbox['id']}")
        assert deleted.code == 204
        assert await laptop.exited() == 1
        logs = laptop.logs()
        assert "cli-agent stops: this local sandbox was deleted from its workspace" in logs
        assert saved["tunnel_token"] not in logs and code not in logs
    finally:
        laptop.kill()
        opencode.kill()
        opencode.wait(10)


async def chromium_dom(url: str) -> str:
    """Chromium's DOM of ``url``, run as a child process so the in-process server keeps
    serving."""
    from twisted.internet.utils import getProcessOutputAndValue

    chromium, *args = chromium_dom_argv(url)
    out, err, code = await getProcessOutputAndValue(chromium, args, env=dict(os.environ))
    assert code == 0, err[-2000:]
    return out.decode("utf-8", "replace")


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/global/health", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@asynccontextmanager
async def laptop_on_fake_upstream(
    team: Team, *extra: str
) -> AsyncIterator[tuple[Laptop, Recorder, dict[str, str]]]:
    """An agent whose "opencode" is the FAKE upstream, registered (with ``extra`` options) and
    running; with the Host and Cookie headers that reach it through the proxy."""
    recorder, port = serve(_reactor())
    laptop = Laptop(team.root, team.base, f"http://127.0.0.1:{port.getHost().port}")
    laptop.register(await team.code(), *extra)
    try:
        await team.wait_status("running")
        sandbox = await team.local_sandbox()
        host, cookie = await team.open(sandbox["id"])
        yield laptop, recorder, {"Host": host, "Cookie": f"cli_sandbox={cookie}"}
    finally:
        laptop.kill()
        await port.stopListening()


@pytest_twisted.async_yield_fixture
async def fake_laptop(team: Team) -> AsyncIterator[tuple[Laptop, Recorder, dict[str, str]]]:
    async with laptop_on_fake_upstream(team) as running:
        yield running


@pytest_twisted.ensureDeferred
async def test_fifty_megabytes_each_way_arrive_intact(
    team: Team, fake_laptop: tuple[Laptop, Recorder, dict[str, str]]
) -> None:
    _, recorder, headers = fake_laptop
    client = team.app.client()
    n = 50 * 2**20
    began = time.monotonic()
    down = await client.call("GET", f"/random?n={n}", headers=headers)
    took = time.monotonic() - began
    assert down.code == 200
    assert (
        hashlib.sha256(down.body).digest() == hashlib.sha256(random.Random(n).randbytes(n)).digest()
    )
    print(f"\n50 MiB down through the tunnel: {took:.2f} s ({n / took / 1e6:.0f} MB/s)")
    upload = os.urandom(n)
    began = time.monotonic()
    up = await client.call("POST", "/digest", raw=upload, headers=headers)
    took = time.monotonic() - began
    assert up.code == 200, up
    assert up.body == {"length": n, "sha256": hashlib.sha256(upload).hexdigest()}
    print(f"50 MiB up through the tunnel: {took:.2f} s ({n / took / 1e6:.0f} MB/s)")


@pytest_twisted.ensureDeferred
async def test_a_reader_that_stops_holds_back_only_its_own_stream(
    team: Team, fake_laptop: tuple[Laptop, Recorder, dict[str, str]]
) -> None:
    """A browser that stops reading: the agent's upstream is paused after a bounded amount,
    the server buffers no more than a window, and other requests still go through."""
    reactor = _reactor()
    _, recorder, headers = fake_laptop

    class Stalled(Protocol):
        def connectionMade(self) -> None:
            self.transport.pauseProducing()  # type: ignore[union-attr]  # never read

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", team.port)
    stalled = await connectProtocol(endpoint, Stalled())
    stalled.transport.write(
        f"GET /flood HTTP/1.1\r\nHost: {headers['Host']}\r\nCookie: "
        f"{headers['Cookie']}\r\n\r\n".encode()
    )
    await wait_until(reactor, lambda: recorder.streamed > 0 and recorder.flood_paused, timeout=20)
    history: list[int] = []

    def settled() -> bool:
        history.append(recorder.streamed)
        return len(history) > 2 and history[-1] == history[-2] == history[-3]

    await wait_until(reactor, settled, timeout=20, step=0.5)
    streamed = recorder.streamed
    assert streamed < 32 * 2**20, f"{streamed} bytes pulled for a reader that reads nothing"
    for _ in range(20):
        quick = await team.app.client().call("GET", "/echo", headers=headers)
        assert quick.code == 200
    assert recorder.streamed - streamed < 2**20
    stalled.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_use_server_key(team: Team) -> None:
    """An agent registered with --use-server-key gets a proxy token (in anthropic.env, 0600)
    with which the laptop's opencode calls Claude through the server, with the server's key;
    the token works only from the address the agent's tunnel comes from, and only while it is
    connected: the moment the server sees the tunnel go, the token is refused."""
    async with laptop_on_fake_upstream(team, "--use-server-key") as (laptop, _, _):
        env_file = laptop.config.with_name("anthropic.env")
        assert env_file.stat().st_mode & 0o777 == 0o600
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert env["ANTHROPIC_BASE_URL"] == f"http://localhost:{team.port}/proxy/anthropic/v1"
        path = "/proxy/anthropic/v1/messages"
        body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}
        client = team.app.client()
        token = {"x-api-key": env["ANTHROPIC_API_KEY"]}
        answered = await client.call("POST", path, body, headers=token)
        assert answered.code == 200, answered
        assert team.anthropic.seen[-1]["headers"]["x-api-key"] == [FAKE_KEY]
        assert env["ANTHROPIC_API_KEY"] not in laptop.logs()
        # the tunnel comes from 127.0.0.1; the same token from 127.0.0.2 is somebody else
        elsewhere = await _post_from("127.0.0.2", team.port, path, body, token)
        assert elsewhere == 401
        assert len(team.anthropic.seen) == 1
        sandbox_id = (await team.local_sandbox())["id"]
        team.anthropic.stream_pause = 30.0  # a call still streaming when the agent goes
        streamed = json.dumps({**body, "stream": True}).encode()
        running = await raw_get(
            team.port,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nx-api-key: {env['ANTHROPIC_API_KEY']}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(streamed)}\r\n\r\n".encode()
            + streamed,
        )
        await wait_until(_reactor(), lambda: b"message_start" in running.received, timeout=10)
        laptop.kill()
        tunnels = team.app.server.tunnels
        await wait_until(_reactor(), lambda: tunnels.session(sandbox_id) is None, timeout=10)
        refused = await client.call("POST", path, body, headers=token)
        assert refused.code == 401, refused
        await running.closed  # cut (the stream had 30 s to go)
        assert b"message_stop" not in running.received
        assert len(team.anthropic.seen) == 2


async def _post_from(source: str, port: int, path: str, body: Any, headers: dict[str, str]) -> int:
    """POST from another loopback address than 127.0.0.1; the answer's status."""
    reactor = _reactor()

    @implementer(IAgentEndpointFactory)
    class From:
        def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:
            return TCP4ClientEndpoint(reactor, uri.host, uri.port, bindAddress=(source, 0))

    agent = Agent.usingEndpointFactory(reactor, From())
    response = await agent.request(
        b"POST",
        f"http://127.0.0.1:{port}{path}".encode(),
        Headers({k: [v] for k, v in {**headers, "content-type": "application/json"}.items()}),
        FileBodyProducer(BytesIO(json.dumps(body).encode())),
    )
    await treq.content(response)
    return int(response.code)


@pytest_twisted.ensureDeferred
async def test_in_flight_requests_end_clearly_when_the_agent_dies(
    team: Team, fake_laptop: tuple[Laptop, Recorder, dict[str, str]]
) -> None:
    """A request still waiting for its answer gets the offline page (503), and a body being
    streamed is cut off: never an empty or truncated 200 that looks complete."""
    reactor = _reactor()
    laptop, recorder, headers = fake_laptop
    cookie_line = f"Cookie: {headers['Cookie']}\r\n"
    waiting = await raw_get(
        team.port, f"GET /hang HTTP/1.1\r\nHost: {headers['Host']}\r\n{cookie_line}\r\n".encode()
    )
    streaming = await raw_get(
        team.port, f"GET /flood HTTP/1.1\r\nHost: {headers['Host']}\r\n{cookie_line}\r\n".encode()
    )
    await wait_until(reactor, lambda: len(streaming.received) > 2**20, timeout=20)
    await wait_until(reactor, lambda: any(s["uri"] == "/hang" for s in recorder.seen))
    laptop.kill()
    await wait_until(reactor, lambda: waiting.received.startswith(b"HTTP/1.1 "), timeout=20)
    assert waiting.received.startswith(b"HTTP/1.1 503"), waiting.received[:200]
    assert b"offline" in waiting.received
    await wait_until(reactor, lambda: streaming.closed.called, timeout=20)
    assert streaming.received.startswith(b"HTTP/1.1 200")
    assert not streaming.received.endswith(b"0\r\n\r\n")  # no clean end of a chunked body
