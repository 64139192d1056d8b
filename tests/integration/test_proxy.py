"""The subdomain proxy against a FAKE sandbox (an upstream that records what it receives),
with real PostgreSQL; the same paths with real opencode are in test_proxy_opencode.py."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from cli_server.proxy.relay.wire import RENEWED
from cli_server.proxy.workers import RelayWorkers
from cli_server.testing import FakeBackend

from .conftest import Running, _reactor, server_config, start_server, stop_server
from .helpers import Api, Wire, wait_until
from .test_sandboxes_api import team, wait_status
from .upstream import Recorder, serve


@attrs.define
class Proxy:
    app: Running
    upstream: Recorder
    people: dict[str, Api]
    workspace: str
    sandbox: str

    def host(self, sandbox_id: str | None = None) -> str:
        return f"oc-{sandbox_id or self.sandbox}.localhost:8080"

    async def open(self, who: str, sandbox_id: str | None = None) -> str:
        """Sign ``who`` in on the sandbox's subdomain; returns the sandbox cookie value."""
        sid = sandbox_id or self.sandbox
        url = (await self.people[who].call("POST", f"/api/sandboxes/{sid}/open")).body["url"]
        prefix = f"http://{self.host(sid)}"
        assert url.startswith(prefix + "/_cli/auth?ticket=")
        reply = await self.visit(url[len(prefix) :], sandbox_id=sid)
        assert reply.code == 303, reply
        cookie = reply.headers.getRawHeaders("set-cookie")[0]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Domain" not in cookie
        return str(cookie.split(";")[0].split("=", 1)[1])

    async def visit(
        self,
        path: str,
        method: str = "GET",
        *,
        cookie: str | None = None,
        sandbox_id: str | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        hdrs = {"Host": self.host(sandbox_id), **(headers or {})}
        if cookie:
            hdrs["Cookie"] = f"cli_sandbox={cookie}"
        return await self.app.client().call(method, path, body, headers=hdrs)


@pytest_twisted.async_yield_fixture
async def proxy(db_url: str) -> AsyncIterator[Proxy]:
    reactor = _reactor()
    recorder, port = serve(reactor)
    backend = FakeBackend(serve_at=port.getHost().port)
    app = await start_server(db_url, backend=backend, config=server_config(db_url))
    people, wid = await team(app)
    sid = (
        await people["owner"].call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "p"})
    ).body["id"]
    await wait_status(people["owner"], sid, "running")
    yield Proxy(app, recorder, people, wid, sid)
    await stop_server(app)
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_forwarding_and_header_hygiene(proxy: Proxy) -> None:
    """Our cookies, Authorization, tickets and spoofed forwarding headers never reach the
    sandbox; opencode's Basic credential and our X-Forwarded-* do."""
    cookie = await proxy.open("developer")
    reply = await proxy.visit(
        "/echo?x=1&auth_token=steal&ticket=t&token=k&y=2",
        headers={
            "Cookie": f"cli_sandbox={cookie}; cli_session=main; theirs=ok",
            "Authorization": "Bearer mine",
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
            "Forwarded": "for=6.6.6.6",
        },
    )
    assert reply.code == 200, reply
    seen = proxy.upstream.seen[-1]
    assert seen["uri"] == "/echo?x=1&y=2"
    headers = seen["headers"]
    assert headers["cookie"] == ["theirs=ok"]
    (row,) = await proxy.app.db.query("SELECT opencode_password FROM sandboxes")
    from cli_server.sandboxes.opencode import basic_auth

    assert headers["authorization"] == [basic_auth(row["opencode_password"]).decode()]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [proxy.host()]
    assert headers["host"] == [proxy.host()]  # opencode's Origin checks see the public host
    assert "forwarded" not in headers
    everything = json.dumps(proxy.upstream.seen)
    assert "steal" not in everything and "main" not in everything and cookie not in everything


@pytest_twisted.ensureDeferred
async def test_post_body_and_repeated_headers(proxy: Proxy) -> None:
    """Bodies reach the sandbox; several Set-Cookie survive, unsafe ones do not."""
    cookie = await proxy.open("developer")
    posted = await proxy.visit("/session", "POST", cookie=cookie, body={"title": "é"})
    assert posted.code == 200 and json.loads(proxy.upstream.seen[-1]["body"]) == {"title": "é"}
    cookies = await proxy.visit("/cookies", cookie=cookie)
    assert cookies.headers.getRawHeaders("set-cookie") == ["a=1; Path=/", "d=4; HttpOnly"]


@pytest_twisted.ensureDeferred
async def test_tickets(proxy: Proxy) -> None:
    """A ticket works once, for one sandbox, for a minute; failures are HTML pages."""
    dev = proxy.people["developer"]
    url = (await dev.call("POST", f"/api/sandboxes/{proxy.sandbox}/open")).body["url"]
    path = url.split(proxy.host(), 1)[1]
    other = (
        await dev.call("POST", f"/api/workspaces/{proxy.workspace}/sandboxes", {"name": "other"})
    ).body["id"]
    await wait_status(dev, other, "running")
    wrong_host = await proxy.visit(path, sandbox_id=other)
    assert wrong_host.code == 401 and b"expired" in wrong_host.body
    assert (await proxy.visit(path)).code == 401  # burnt by the wrong-host attempt

    url = (await dev.call("POST", f"/api/sandboxes/{proxy.sandbox}/open")).body["url"]
    path = url.split(proxy.host(), 1)[1]
    assert (await proxy.visit(path)).code == 303
    reused = await proxy.visit(path)
    assert reused.code == 401 and reused.headers.getRawHeaders("referrer-policy") == ["no-referrer"]

    url = (await dev.call("POST", f"/api/sandboxes/{proxy.sandbox}/open")).body["url"]
    await proxy.app.db.execute("UPDATE sandbox_tickets SET expires_at = now() - interval '1s'")
    assert (await proxy.visit(url.split(proxy.host(), 1)[1])).code == 401
    assert (await proxy.visit("/_cli/auth")).code == 401
    rows = await proxy.app.db.query("SELECT ticket_hash FROM sandbox_tickets")
    assert all(len(bytes(r["ticket_hash"])) == 32 for r in rows)  # hashes only


@pytest_twisted.ensureDeferred
async def test_no_cookie_wrong_sandbox_and_unknown_hosts(proxy: Proxy) -> None:
    """Without a session: 401 page; a session for one sandbox opens no other; unknown and
    malformed sandbox hosts are 404; the main site does not route on spoofed headers."""
    none = await proxy.visit("/")
    assert none.code == 401 and b"dashboard" in none.body
    assert proxy.upstream.seen == []
    cookie = await proxy.open("developer")
    other = (
        await proxy.people["developer"].call(
            "POST", f"/api/workspaces/{proxy.workspace}/sandboxes", {"name": "o"}
        )
    ).body["id"]
    assert (await proxy.visit("/", cookie=cookie, sandbox_id=other)).code == 401
    unknown = await proxy.visit("/", sandbox_id="00000000-0000-4000-8000-000000000000")
    assert unknown.code == 401  # no session there; no hint whether it exists
    client = proxy.app.client()
    for host in ("oc-nope.localhost:8080", "x.localhost:8080", "OC-BAD.LOCALHOST"):
        assert (await client.call("GET", "/", headers={"Host": host})).code == 404
    upper = await proxy.visit("/echo", cookie=cookie, headers={"Host": proxy.host().upper()})
    assert upper.code == 200
    spoof = await client.call(
        "GET", "/api/auth/providers", headers={"X-Forwarded-Host": proxy.host()}
    )
    assert spoof.code == 200 and spoof.body == []
    assert all(s["uri"] != "/api/auth/providers" for s in proxy.upstream.seen)
    evil = await client.call("GET", "/", headers={"Host": f"oc-{proxy.sandbox}.evil.example"})
    assert evil.headers.getRawHeaders("set-cookie") is None


@pytest_twisted.ensureDeferred
async def test_path_tricks_stay_inside(proxy: Proxy) -> None:
    """Odd paths are passed to the sandbox as paths; an absolute-URI request line is refused."""
    cookie = await proxy.open("developer")
    for path in ("//evil.example/x", "/..%2f..%2fetc/passwd", "/a/../../b"):
        reply = await proxy.visit(path, cookie=cookie)
        assert reply.code == 200, (path, reply)
        assert proxy.upstream.seen[-1]["headers"]["host"] == [proxy.host()]
    raw = await _raw(
        proxy,
        b"GET http://evil.example/ HTTP/1.1\r\nHost: "
        + proxy.host().encode()
        + b"\r\nCookie: cli_sandbox="
        + cookie.encode()
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 400"), raw[:100]


async def _raw(proxy: Proxy, data: bytes) -> bytes:
    reactor = _reactor()
    done: Deferred[bytes] = Deferred()

    class Raw(Protocol):
        buf = b""

        def connectionMade(self) -> None:
            self.transport.write(data)  # type: ignore[union-attr]

        def dataReceived(self, chunk: bytes) -> None:
            self.buf += chunk

        def connectionLost(self, reason: Any = None) -> None:
            done.callback(self.buf)

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.app.port.getHost().port)
    await connectProtocol(endpoint, Raw())
    done.addTimeout(10, reactor)
    return await done


@pytest_twisted.ensureDeferred
async def test_guest_is_read_only(proxy: Proxy) -> None:
    """Guests may GET, HEAD and read events; other methods and WebSockets are 403."""
    cookie = await proxy.open("guest")
    assert (await proxy.visit("/echo", cookie=cookie)).code == 200
    assert (await proxy.visit("/echo", "HEAD", cookie=cookie)).code == 200
    assert (await proxy.visit("/sse", cookie=cookie)).code == 200
    before = len(proxy.upstream.seen)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert (await proxy.visit("/session", method, cookie=cookie, body={})).code == 403
    ws = await proxy.visit(
        "/pty/1/connect",
        cookie=cookie,
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert ws.code == 403
    assert len(proxy.upstream.seen) == before


@pytest_twisted.ensureDeferred
async def test_status_pages_and_resume(proxy: Proxy) -> None:
    """A paused sandbox shows a 503 page; developers get Resume (same-origin POST only)."""
    dev_cookie, guest_cookie = await proxy.open("developer"), await proxy.open("guest")
    owner = proxy.people["owner"]
    await owner.call("POST", f"/api/sandboxes/{proxy.sandbox}/pause")
    await wait_status(owner, proxy.sandbox, "paused")
    proxy.app.server.proxy_access.forget()
    paused = await proxy.visit("/", cookie=dev_cookie)
    assert paused.code == 503 and b"paused" in paused.body and b"/_cli/resume" in paused.body
    guest = await proxy.visit("/", cookie=guest_cookie)
    assert guest.code == 503 and b"/_cli/resume" not in guest.body
    forged = await proxy.visit(
        "/_cli/resume", "POST", cookie=dev_cookie, headers={"Origin": "http://evil.example"}
    )
    assert forged.code == 403
    assert (await proxy.visit("/_cli/resume", "POST", cookie=guest_cookie)).code == 403
    resumed = await proxy.visit(
        "/_cli/resume", "POST", cookie=dev_cookie, headers={"Origin": f"http://{proxy.host()}"}
    )
    assert resumed.code == 303
    await wait_status(owner, proxy.sandbox, "running")


@pytest_twisted.ensureDeferred
async def test_sessions_are_revoked(proxy: Proxy) -> None:
    """Logout, member removal, role change and sandbox deletion end subdomain sessions."""
    people, wid = proxy.people, proxy.workspace
    cookie = await proxy.open("developer")
    await people["developer"].call("POST", "/api/auth/logout")
    assert (await proxy.visit("/echo", cookie=cookie)).code == 401

    cookie = await proxy.open("maintainer")
    maintainer_id = people["maintainer"].user["id"]  # type: ignore[index]
    await people["owner"].call(
        "PUT", f"/api/workspaces/{wid}/members/{maintainer_id}", {"role": "developer"}
    )
    assert (await proxy.visit("/echo", cookie=cookie)).code == 401

    cookie = await proxy.open("guest")
    guest_id = people["guest"].user["id"]  # type: ignore[index]
    await people["owner"].call("DELETE", f"/api/workspaces/{wid}/members/{guest_id}")
    assert (await proxy.visit("/echo", cookie=cookie)).code == 401

    cookie = await proxy.open("owner")
    await people["owner"].call("DELETE", f"/api/sandboxes/{proxy.sandbox}")
    assert (await proxy.visit("/echo", cookie=cookie)).code == 401


@pytest_twisted.ensureDeferred
async def test_streaming_and_activity(proxy: Proxy) -> None:
    """SSE events arrive as they are sent; a 1 MiB body arrives whole; activity is recorded."""
    cookie = await proxy.open("developer")
    await proxy.app.db.execute("UPDATE sandboxes SET last_activity_at = now() - interval '1h'")
    proxy.app.server.activity.forget()
    big = await proxy.visit("/big", cookie=cookie)
    assert len(big.body) == 1024 * 1024
    reactor = _reactor()
    recent: list[bool] = []

    async def recorded() -> None:  # (each relay worker reports what it relayed each second)
        (row,) = await proxy.app.db.query(
            "SELECT last_activity_at > now() - interval '1 minute' AS recent FROM sandboxes"
        )
        recent.append(row["recent"])

    while not (recent and recent[-1]):
        assert len(recent) < 50, "no activity recorded"
        await recorded()
        await deferLater(reactor, 0.1)
    events: list[tuple[float, bytes]] = []
    done: Deferred[None] = Deferred()

    class Events(Protocol):
        def dataReceived(self, data: bytes) -> None:
            events.append((reactor.seconds(), data))

        def connectionLost(self, reason: Any = None) -> None:
            done.callback(None)

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.app.port.getHost().port)
    client = await connectProtocol(endpoint, Events())
    client.transport.write(
        f"GET /sse HTTP/1.1\r\nHost: {proxy.host()}\r\nCookie: "
        f"cli_sandbox={cookie}\r\nConnection: close\r\n\r\n".encode()
    )
    done.addTimeout(10, reactor)
    await done
    text = b"".join(d for _, d in events)
    assert b"data: first" in text and b"data: second" in text
    first = next(t for t, d in events if b"data: first" in d)
    second = next(t for t, d in events if b"data: second" in d)
    assert second - first >= 0.15  # delivered as sent, not buffered to the end


async def _stream(proxy: Proxy, path: str, cookie: str, extra: str = "") -> Wire:
    endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", proxy.app.port.getHost().port)
    client = await connectProtocol(endpoint, Wire())
    head = f"GET {path} HTTP/1.1\r\nHost: {proxy.host()}\r\nCookie: cli_sandbox={cookie}\r\n{extra}"
    client.transport.write(head.encode() + b"\r\n")  # type: ignore[union-attr]
    client.closed.addTimeout(10, _reactor())
    return client


@pytest_twisted.ensureDeferred
async def test_event_streams_are_carried_by_the_relay_workers(proxy: Proxy) -> None:
    """A GET goes to a relay worker with its keep-alive connection, which serves it and
    what follows: an event stream ends there as it would in twisted.web and the connection
    serves the next request; streams end when their session is revoked or their sandbox
    deleted, and the workers end with the server."""
    reactor, relay = _reactor(), proxy.app.server.relay_workers
    cookie = await proxy.open("developer")
    await wait_until(reactor, lambda: relay.ready, timeout=10)
    finite = await _stream(proxy, "/sse", cookie)
    await wait_until(reactor, lambda: finite.received.endswith(b"0\r\n\r\n"), timeout=10)
    head, _, body = finite.received.partition(b"\r\n\r\n")
    assert b"connection: close" not in head and b"transfer-encoding: chunked" in head
    assert body == b"d\r\ndata: first\n\n\r\ne\r\ndata: second\n\n\r\n0\r\n\r\n"
    assert relay.carried_count == 1  # the connection, waiting for its next request there
    finite.received = b""
    head = f"GET /next HTTP/1.1\r\nHost: {proxy.host()}\r\nCookie: cli_sandbox={cookie}\r\n"
    finite.transport.write(head.encode() + b"\r\n")  # type: ignore[union-attr]
    await wait_until(reactor, lambda: b'"uri": "/next"' in finite.received, timeout=10)
    assert finite.received.startswith(b"HTTP/1.1 200 OK\r\n")
    finite.transport.loseConnection()  # type: ignore[union-attr]
    await wait_until(reactor, lambda: relay.carried_count == 0, timeout=10)

    ticking = await _stream(proxy, "/ticks", cookie)
    # (a head the router leaves to twisted.web: that path's streams are cut too)
    slow_path = await _stream(proxy, "/ticks", cookie, "Expect: 100-continue\r\n")
    for stream in (ticking, slow_path):
        await wait_until(reactor, lambda s=stream: s.received.count(b"data: tick") >= 3, timeout=10)
    assert relay.carried_count == 1 and proxy.upstream.ticking == 2
    await proxy.people["developer"].call("POST", "/api/auth/logout")
    for stream in (ticking, slow_path):
        await stream.closed  # cut by the revocation, with no ending chunk
        assert not stream.received.endswith(b"0\r\n\r\n")
    await wait_until(reactor, lambda: proxy.upstream.ticking == 0, timeout=10)
    await wait_until(reactor, lambda: relay.carried_count == 0, timeout=10)
    # Deleting the sandbox ends its streams too (this fake sandbox would tick on).
    ticking = await _stream(proxy, "/ticks", await proxy.open("owner"))
    await wait_until(reactor, lambda: relay.carried_count == 1, timeout=10)
    await proxy.people["owner"].call("DELETE", f"/api/sandboxes/{proxy.sandbox}")
    await ticking.closed
    await wait_until(reactor, lambda: relay.carried_count == 0, timeout=10)

    children = [w.pid for w in relay.workers]
    await stop_server(proxy.app)
    assert children and all(w.pid is None for w in relay.workers)
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)


@pytest_twisted.ensureDeferred
async def test_a_paused_sandbox_keeps_no_stream_open_on_any_path(proxy: Proxy) -> None:
    """A status change away from running (here: a pause) cuts what the sandbox has open,
    carried by a relay worker or by twisted.web alike, as a revocation does (this FAKE
    sandbox would tick on: only the cut ends them)."""
    reactor, relay = _reactor(), proxy.app.server.relay_workers
    cookie = await proxy.open("developer")
    await wait_until(reactor, lambda: relay.ready, timeout=10)
    carried = await _stream(proxy, "/ticks", cookie)
    served = await _stream(proxy, "/ticks", cookie, "Expect: 100-continue\r\n")  # twisted.web
    for stream in (carried, served):
        await wait_until(reactor, lambda s=stream: s.received.count(b"data: tick") >= 2, timeout=10)
    assert relay.carried_count == 1
    paused = await proxy.people["developer"].call("POST", f"/api/sandboxes/{proxy.sandbox}/pause")
    assert paused.code == 200, paused
    for stream in (carried, served):
        await stream.closed  # cut, with no ending chunk
        assert not stream.received.endswith(b"0\r\n\r\n")
    await wait_until(reactor, lambda: relay.carried_count == 0, timeout=10)


@pytest_twisted.ensureDeferred
async def test_slow_reader_is_backpressured(proxy: Proxy) -> None:
    """A client that stops reading pauses its upstream instead of growing our memory, and
    other requests are served meanwhile."""
    cookie = await proxy.open("developer")
    reactor = _reactor()

    class Stalled(Protocol):
        def connectionMade(self) -> None:
            self.transport.pauseProducing()  # type: ignore[union-attr]  # never read

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.app.port.getHost().port)
    stalled = await connectProtocol(endpoint, Stalled())
    stalled.transport.write(
        f"GET /flood HTTP/1.1\r\nHost: {proxy.host()}\r\nCookie: "
        f"cli_sandbox={cookie}\r\n\r\n".encode()
    )
    await wait_until(reactor, lambda: proxy.upstream.flood_paused, timeout=20)
    streamed = proxy.upstream.streamed
    assert streamed < 64 * 2**20, f"{streamed} bytes pulled for a reader that reads nothing"
    quick = await proxy.visit("/echo", cookie=cookie)
    assert quick.code == 200
    assert proxy.upstream.streamed - streamed < 2**20
    stalled.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_keep_alive_connection_moves_between_the_relay_workers_and_the_server(
    proxy: Proxy,
) -> None:
    """Requests on a connection are served by a relay worker, uploads too; a status change of
    the sandbox sends it back with its next request, which is routed afresh and given to a
    worker again; a HEAD (an odd head) goes to twisted.web, which answers it and what follows.
    (Renewals while in use are driven by a clock: ``test_router.py``.)"""
    reactor, relay = _reactor(), proxy.app.server.relay_workers
    cookie = await proxy.open("developer")
    await wait_until(reactor, lambda: relay.ready, timeout=10)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.app.port.getHost().port)
    client = await connectProtocol(endpoint, Wire())
    head = f"Host: {proxy.host()}\r\nCookie: cli_sandbox={cookie}\r\n"

    async def ask(request: str, body: bytes = b"") -> None:
        client.received = b""
        client.transport.write(request.encode() + head.encode() + b"\r\n" + body)  # type: ignore[union-attr]
        path = request.split()[1]
        await wait_until(
            reactor, lambda: f'"uri": "{path}"'.encode() in client.received, timeout=10
        )
        assert client.received.startswith(b"HTTP/1.1 200 OK\r\n")

    await ask("GET /first HTTP/1.1\r\n")
    [first] = relay.carried()
    await ask("POST /p HTTP/1.1\r\nContent-Length: 2\r\n", b"{}")  # relayed there too
    assert relay.carried() == [first] and proxy.upstream.seen[-1]["body"] == "{}"

    _end_grant(relay, first)
    await ask("GET /after HTTP/1.1\r\n")  # back, routed afresh, and given again
    assert relay.carried() not in ([], [first])
    client.received = b""
    client.transport.write(b"HEAD /h HTTP/1.1\r\n" + head.encode() + b"\r\n")  # type: ignore[union-attr]
    await wait_until(reactor, lambda: client.received.startswith(b"HTTP/1.1 200"), timeout=10)
    assert relay.carried_count == 0  # twisted.web's from now on
    await ask("GET /last HTTP/1.1\r\n")
    assert relay.carried_count == 0 and not client.closed.called


def _end_grant(relay: RelayWorkers, conn_id: int) -> None:
    """Ends a connection's grant early (as a renewal refused does): its next request comes
    back to the server, which routes it afresh."""
    worker = relay.carrier(conn_id)
    assert worker is not None
    worker.send(RENEWED.pack(b"G", conn_id, 0.0))


def _answers(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """The whole answers in ``data``, in order: status, head, body (by Content-Length or
    chunked framing; an answer not whole yet is left out). Each is parsed where the last one
    ended: a status line follows a body directly, not after a line break."""
    answers: list[tuple[int, bytes, bytes]] = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return answers
        head, rest = data[:end], data[end + 4 :]
        assert head.startswith(b"HTTP/1.1 "), data[:200]
        fields = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        if fields.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_end = rest.find(b"\r\n")
                if size_end < 0:
                    return answers
                size = int(rest[:size_end], 16)
                if len(rest) < size_end + 2 + size + 2:
                    return answers
                body += rest[size_end + 2 : size_end + 2 + size]
                rest = rest[size_end + 2 + size + 2 :]
                if not size:
                    break
        else:
            length = int(fields.get(b"content-length", b"0"))
            if len(rest) < length:
                return answers
            body, rest = rest[:length], rest[length:]
        answers.append((int(head[9:12]), head, body))
        data = rest


@pytest_twisted.ensureDeferred
async def test_refused_requests_on_a_relayed_connection_are_answered_and_never_relayed(
    proxy: Proxy,
) -> None:
    """On one keep-alive connection a relay worker serves: same-origin GETs are relayed;
    a GET and a POST sent by a page of another origin are answered 403 by the server, and
    never reach the sandbox; a same-origin GET after them is answered again. Each answer
    comes within seconds. The same after the connection went back to the server (its
    grant ended) and was handed to a worker again, with the refused request sent in the same
    write as a relayed one."""
    reactor, relay = _reactor(), proxy.app.server.relay_workers
    cookie = await proxy.open("developer")
    await wait_until(reactor, lambda: relay.ready, timeout=10)
    # (a page of another sandbox reading or posting to this one)
    foreign = "Origin: http://oc-0b6f1a3e-2222-4222-8333-444455556666.localhost:8080\r\n"
    head = f"Host: {proxy.host()}\r\nCookie: cli_sandbox={cookie}\r\n"

    async def ask(client: Wire, *requests: tuple[str, str, bytes]) -> list[int]:
        """Sends ``requests`` (request line, extra headers, body) in one write; the status
        of each answer, all of which must come within 5 s."""
        before = len(_answers(client.received))
        data = b"".join(
            f"{line}\r\n{head}{extra}".encode()
            + (b"content-length: %d\r\n" % len(body) if body else b"")
            + b"\r\n"
            + body
            for line, extra, body in requests
        )
        client.transport.write(data)  # type: ignore[union-attr]
        wanted = before + len(requests)
        await wait_until(
            reactor,
            lambda: len(_answers(client.received)) >= wanted or client.closed.called,
            timeout=5,
        )
        return [status for status, _, _ in _answers(client.received)[before:]]

    def seen() -> list[str]:
        return [s["uri"] for s in proxy.upstream.seen]

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.app.port.getHost().port)
    client = await connectProtocol(endpoint, Wire())
    assert await ask(client, ("GET /one HTTP/1.1", "", b"")) == [200]
    [carried] = relay.carried()
    assert await ask(client, ("GET /two HTTP/1.1", "", b"")) == [200]
    assert relay.carried() == [carried]  # relayed there: it never came back
    await deferLater(reactor, 0.5)  # (as a page would, some time later)
    assert await ask(client, ("GET /three HTTP/1.1", foreign, b"")) == [403]
    assert relay.carried_count == 0  # given back, and refused here
    assert await ask(client, ("POST /four HTTP/1.1", foreign, b"{}")) == [403]
    assert await ask(client, ("GET /five HTTP/1.1", "", b"")) == [200]
    # (a fetch that says it came from another site, with no Origin, is refused the same)
    fetched = "Sec-Fetch-Site: same-site\r\n"
    assert await ask(client, ("POST /six HTTP/1.1", fetched, b"{}")) == [403]
    assert not client.closed.called
    assert seen()[-3:] == ["/one", "/two", "/five"], seen()
    client.transport.loseConnection()

    client = await connectProtocol(endpoint, Wire())
    assert await ask(client, ("GET /a HTTP/1.1", "", b"")) == [200]
    [first] = relay.carried()
    assert await ask(client, ("POST /b HTTP/1.1", "", b"{}")) == [200]  # relayed there too
    assert relay.carried() == [first]
    _end_grant(relay, first)
    assert await ask(client, ("GET /c HTTP/1.1", "", b"")) == [200]
    [again] = relay.carried()  # handed over again
    assert again != first
    refused = ("GET /d HTTP/1.1", foreign, b"")
    assert await ask(client, ("GET /e HTTP/1.1", "", b""), refused) == [200, 403]
    assert relay.carried_count == 0
    assert await ask(client, ("GET /f HTTP/1.1", "", b"")) == [200]
    assert await ask(client, ("POST /g HTTP/1.1", foreign, b"{}")) == [403]
    assert not client.closed.called
    assert seen()[-5:] == ["/a", "/b", "/c", "/e", "/f"], seen()
    assert not [uri for uri in seen() if uri in ("/three", "/four", "/six", "/d", "/g")]
    client.transport.loseConnection()
