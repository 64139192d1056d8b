"""The proxy's router, in memory: a string transport for the browser, a Clock for time, FAKE
session/endpoint lookups and a FAKE set of relay workers (the real ones are in the integration
tests, which all go through the router too)."""

from __future__ import annotations

import socket
from ipaddress import ip_network
from typing import Any

from attrs import define, field
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from cli_server.domain.roles import Role
from cli_server.plumbing.client_address import TrustedProxies
from cli_server.proxy.access import Access
from cli_server.proxy.live import LiveStreams, Whose
from cli_server.proxy.relay.wire import RENEWED, Back, Grant
from cli_server.proxy.router import Router, RouterFactory
from cli_server.proxy.routes import Routes
from cli_server.proxy.upload import MAX_SANDBOX_BODY
from cli_server.sandboxes.backend import Endpoint

SID = "0b6f1a3e-1111-4222-8333-444455556666"
HOST = f"oc-{SID}.localhost:8080".encode()
TOKEN = "session-token"
HERE = Endpoint("127.0.0.1", 41000)


@define
class FakeAccess:
    """Sessions by token; ``slow`` makes lookups wait for the test."""

    role: Role = Role.DEVELOPER
    status: str = "running"
    slow: bool = False
    waiting: list[Deferred[Any]] = field(factory=list)
    clock: Clock = field(factory=Clock)
    generation: int = 0
    fetched: float = 0.0  # when sessions were read (as the cache's timestamps)
    refreshed: int = 0
    local: bool = False
    port: int | None = None  # the origin TOKEN's session is for: a preview's port, or None

    def fresh_until(self, access: Access) -> float:
        return access.fetched_at + 2.0

    def _access(self, token: str, sandbox_id: str, port: int | None) -> Access | None:
        if token != TOKEN or sandbox_id != SID or port != self.port:
            return None
        return Access(
            "u", SID, "w", self.role, self.status, self.local, "pw", self.fetched, port=port
        )

    def refresh(self, token: str, sandbox_id: str, port: int | None = None) -> Deferred[None]:
        self.refreshed += 1
        self.fetched = self.clock.seconds()
        return succeed(None)

    def cached(self, token: str, sandbox_id: str, port: int | None = None) -> Access | None:
        return None if self.slow else self._access(token, sandbox_id, port)

    def lookup(
        self, token: str, sandbox_id: str, port: int | None = None
    ) -> Deferred[Access | None]:
        d: Deferred[Access | None] = Deferred()
        self.waiting.append(d)
        d.callback(None) if not self.slow else None
        d.addCallback(lambda _: self._access(token, sandbox_id, port))
        return d


@define
class FakeEndpoints:
    endpoint: Endpoint | None = HERE
    forgotten: list[str] = field(factory=list)
    generation: int = 0
    previews: dict[int, Endpoint] = field(factory=dict)  # where each previewed port is

    def cached(self, sandbox_id: str, port: int | None = None) -> Endpoint | None:
        return self.endpoint if port is None else self.previews.get(port)

    def get(self, sandbox_id: str, port: int | None = None) -> Deferred[Endpoint | None]:
        return succeed(self.cached(sandbox_id, port))

    def forget(self, sandbox_id: str) -> None:
        self.forgotten.append(sandbox_id)
        self.generation += 1


@define
class FakeActivity:
    touched: list[str] = field(factory=list)

    def touch(self, sandbox_id: str) -> None:
        self.touched.append(sandbox_id)


class Channel(Protocol):
    """Stands in for twisted.web's channel: records what it is handed."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


@define
class FakeSite:
    channels: list[Channel] = field(factory=list)
    trusted_proxies: TrustedProxies = field(factory=TrustedProxies)

    def buildProtocol(self, addr: Any) -> Channel:
        self.channels.append(Channel())
        return self.channels[-1]


@define
class FakeWorkers:
    """Stands in for the relay workers: take connections when ``keep``, record them."""

    keep: bool = True
    ready: bool = True
    served: list[tuple[Any, ...]] = field(factory=list)  # (grant, seconds, data, whose, lease)
    let_go_of: list[Any] = field(factory=list)

    def serve(self, browser: Any, *rest: Any) -> bool:
        if self.keep:
            self.served.append(rest)
        return self.keep

    def let_go(self, transport: Any) -> None:
        self.let_go_of.append(transport)


@define
class Door:
    router: Router
    browser: StringTransport
    workers: FakeWorkers
    site: FakeSite
    access: FakeAccess
    endpoints: FakeEndpoints
    clock: Clock

    def send(self, data: bytes) -> None:
        self.router.dataReceived(data)

    def got(self) -> bytes:
        return bytes(self.browser.value())

    @property
    def handed(self) -> list[bytes]:
        """What twisted.web's channels were handed."""
        return [c.received for c in self.site.channels]


def door(
    workers: FakeWorkers | None = None,
    live: LiveStreams | None = None,
    replay: tuple[bytes, Back] | tuple[bytes, Back, int | None] | None = None,
    site: Any = None,
    **access: Any,
) -> Door:
    clock = Clock()
    fake_access, endpoints = FakeAccess(**access, clock=clock), FakeEndpoints()
    workers = FakeWorkers() if workers is None else workers
    routes = Routes(
        fake_access,  # type: ignore[arg-type]
        endpoints,  # type: ignore[arg-type]
        FakeActivity(),  # type: ignore[arg-type]
        b"localhost",
        b"http",
        b"cli_sandbox",
        "http://localhost:8080/",
        clock,
        workers=workers,  # type: ignore[arg-type]
        live=live,
    )
    site = FakeSite() if site is None else site
    router = Router(routes, site, None, clock)
    router.factory = RouterFactory(site, routes, clock)
    router.replay = replay if replay is None or len(replay) == 3 else (*replay, None)
    browser = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555))
    router.makeConnection(browser)
    return Door(router, browser, workers, site, fake_access, endpoints, clock)


def get(
    path: bytes = b"/x",
    *extra: bytes,
    cookie: bytes = b"cli_sandbox=" + TOKEN.encode(),
    host: bytes = HOST,
) -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: " + host]
    if cookie:
        lines.append(b"Cookie: " + cookie)
    return b"\r\n".join([*lines, *extra]) + b"\r\n\r\n"


def post(*extra: bytes, cookie: bytes = b"cli_sandbox=" + TOKEN.encode()) -> bytes:
    lines = [b"POST /session HTTP/1.1", b"Host: " + HOST, b"Cookie: " + cookie, *extra]
    return b"\r\n".join([*lines, b"Content-Length: 2"]) + b"\r\n\r\n{}"


OWN = b"Origin: http://" + HOST


def test_a_request_for_a_cloud_sandbox_goes_to_a_worker_with_its_grant_and_bytes() -> None:
    d = door(live=LiveStreams(Clock()))
    d.send(get(b"/a") + b"GET /b HTTP/1.1\r\n")
    [(grant, seconds, data, whose, lease)] = d.workers.served
    assert grant == Grant(
        HOST,
        (b"cli_sandbox=" + TOKEN.encode(),),
        b"Basic b3BlbmNvZGU6cHc=",
        b"10.1.2.3",
        b"http",
        SID.encode(),
        b"localhost",
        int(Role.DEVELOPER),
        b"127.0.0.1",
        41000,
        MAX_SANDBOX_BODY,
    )
    assert seconds == 1.0 and whose == Whose("u", "w", SID)
    assert data == get(b"/a") + b"GET /b HTTP/1.1\r\n"  # the request, and what came after
    # The connection is the worker's now: nothing is written or timed here.
    assert d.workers.let_go_of == [d.browser] and d.got() == b"" and d.site.channels == []
    assert d.clock.getDelayedCalls() == []


def test_uploads_and_same_origin_state_changes_go_to_a_worker() -> None:
    """A sandbox's own page: its Origin, or ``null`` with Sec-Fetch-Site: same-origin (a page
    with Referrer-Policy: no-referrer), or no browser at all (neither header)."""
    for raw in [
        post(OWN, b"Sec-Fetch-Site: same-origin"),
        post(OWN.upper().replace(b"ORIGIN", b"Origin")),  # hosts compare in any case
        post(b"Origin: null", b"Sec-Fetch-Site: same-origin"),
        post(b"Sec-Fetch-Site: same-origin"),
        post(),
        get(b"/x", OWN),
        get().replace(b"GET ", b"DELETE ", 1),
        get(b"/pty/1/connect", b"Upgrade: websocket", b"Connection: Upgrade", OWN),
    ]:
        d = door()
        d.send(raw)
        assert [s[2] for s in d.workers.served] == [raw], raw


def test_what_no_worker_may_carry_goes_to_twisted_web_byte_for_byte() -> None:
    other = b"Origin: http://oc-0b6f1a3e-2222-4222-8333-444455556666.localhost:8080"
    cases = [
        get(cookie=b""),  # no session: SandboxSite's page
        get(cookie=b"cli_sandbox=someone-else"),
        get(b"/_cli/auth?ticket=t"),
        get(b"/_cli/open"),
        b"HEAD / HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: " + HOST + b"\r\n\r\n",
        get(b"/pty/1/connect", b"Upgrade: h2c", b"Connection: Upgrade"),
        get(b"/pty/1", b"Upgrade: websocket", b"Connection: Upgrade", b"Origin: http://x"),
        b"POST / HTTP/1.1\r\nHost: " + HOST + b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: "
        + HOST
        + b"\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: "
        + HOST
        + b"\r\nContent-Length: %d\r\n\r\n" % (MAX_SANDBOX_BODY + 1),
        b"GET / HTTP/1.1\r\nHost: " + HOST + b"\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: " + HOST + b"\nX-Bare: lf\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"GET http://evil/ HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n",
        b"GET /api/auth/me HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",  # the main site
        get(b"/x", b"X-Big: " + b"a" * 17000),  # over twisted.web's limit: left to it
        # other origins, and sessions that cannot be told apart
        post(other),
        post(other, b"Sec-Fetch-Site: same-origin"),  # Origin decides when it is there
        post(b"Origin: null", b"Sec-Fetch-Site: same-site"),
        post(b"Origin: null"),  # a browser, with no fetch metadata to place it
        post(b"Sec-Fetch-Site: cross-site"),
        post(OWN, OWN),  # twice: not one we can trust
        post(b"Origin: http://" + HOST.replace(b"8080", b"8081")),
        post(b"Origin: https://" + HOST),
        get(b"/x", other),  # a CORS read of another sandbox
        get(b"/x", b"Origin: null", b"Sec-Fetch-Site: cross-site"),
        get(cookie=b"cli_sandbox=" + TOKEN.encode() + b"; cli_sandbox=" + TOKEN.encode()),
        get(b"/x", b"Cookie: cli_sandbox=tossed"),  # a second Cookie header
    ]
    for raw in cases:
        d = door()
        d.send(raw + b"MORE")
        assert d.handed == [raw + b"MORE"], raw
        assert d.workers.served == [], raw
    cases_facts: list[dict[str, Any]] = [
        {"role": Role.GUEST},
        {"status": "paused"},
        {"local": True},
    ]
    for facts in cases_facts:
        d = door(**facts)
        d.send(post())
        assert d.handed == [post()] and d.workers.served == [], facts  # its page, or the tunnel
    guest = door(role=Role.GUEST)
    guest.send(get())
    assert len(guest.workers.served) == 1  # (a guest reads)
    guest = door(role=Role.GUEST)
    terminal = get(b"/pty/1/connect", b"Upgrade: websocket", b"Connection: Upgrade", OWN)
    guest.send(terminal)
    assert guest.handed == [terminal]  # (but types nothing: the read-only page)


def test_a_preview_of_a_port_that_cannot_be_previewed_goes_to_twisted_web() -> None:
    """A preview address with a bad port (opencode's own 4096, 80, not a number) is handed to
    twisted.web byte for byte (its page says why): its session is never looked up here, and
    no worker is given it; a good port's request with opencode's session goes there too."""
    for port in (b"4096", b"80", b"abc", b"05173"):
        preview = get().replace(HOST, f"oc-{SID}-p".encode() + port + b".localhost:8080")
        d = door(port=5173)
        d.send(preview)
        assert d.handed == [preview] and d.workers.served == [], port
        assert d.access.waiting == []
    preview = get().replace(HOST, PREVIEW_HOST)
    d = door()  # (the session is opencode's)
    d.endpoints.previews[5173] = DEV_SERVER
    d.send(preview)
    assert d.handed == [preview] and d.workers.served == []


def test_without_a_worker_or_a_plain_socket_twisted_web_carries_it() -> None:
    for workers in [FakeWorkers(ready=False), FakeWorkers(keep=False)]:
        d = door(workers)
        d.send(get())
        assert d.handed == [get()]
    d = door()
    d.endpoints.endpoint = Endpoint("sandbox.internal", 4096)  # (a worker looks no name up)
    d.send(get())
    assert d.handed == [get()] and d.workers.served == []


def test_a_proxy_in_front_keeps_its_connections_with_twisted_web() -> None:
    """A trusted proxy's connection carries many clients; a grant names one."""
    site = FakeSite()
    site.trusted_proxies = TrustedProxies((ip_network("10.0.0.0/8"),))
    d = door(site=site)
    d.send(get())
    assert d.handed == [get()] and d.workers.served == []


def test_a_slow_session_lookup_waits_then_routes() -> None:
    d = door(slow=True)
    d.send(get() + b"GET /next")
    assert d.workers.served == [] and d.handed == []
    d.send(b"x" * 17000)  # (reading pauses while it waits)
    assert d.browser.producerState == "paused"
    d.access.waiting[0].callback(None)
    assert d.workers.served[0][2] == get() + b"GET /next" + b"x" * 17000


def test_routes_follow_the_session_and_address_caches() -> None:
    """Nothing is remembered beyond the caches (``access.py``, ``endpoints.py``): a role,
    an address or a status they now hold decides the next route."""
    d = door()
    routes = d.router.factory.routes
    d.send(get(b"/1"))
    head = d.workers.served[0][-1].head
    d.access.role = Role.GUEST  # (a role change revokes: the caches hold the new one)
    assert routes.route(head) is not None  # a guest may read
    assert routes.route(routes_head(post())) is None  # ... but not write (the page)
    d.access.role = Role.DEVELOPER
    d.endpoints.endpoint = Endpoint("127.0.0.1", 41001)  # restarted on another port
    route = routes.route(head)
    assert route is not None and not isinstance(route, Deferred)
    assert route.endpoint.port == 41001
    d.access.status = "paused"
    assert routes.route(head) is None  # SandboxSite's status page


def routes_head(raw: bytes) -> Any:
    from cli_server.proxy.request_head import parse_head

    return parse_head(raw[: raw.index(b"\r\n\r\n") + 4], MAX_SANDBOX_BODY)


def test_an_idle_connection_with_no_whole_head_is_closed() -> None:
    d = door()
    d.send(b"GET / HTTP/1.1\r\n")
    d.clock.advance(119)
    assert not d.browser.disconnecting
    d.clock.advance(2)
    assert d.browser.disconnecting


def test_a_connection_back_from_a_worker_takes_up_where_it_left_off() -> None:
    d = door(replay=(get(b"/again"), Back.DROPPED))
    # Dropped by the sandbox there: this request is tried by twisted.web.
    assert d.workers.served == [] and d.handed == [get(b"/again")]
    d = door(replay=(get(b"/other"), Back.ASK))
    assert len(d.workers.served) == 1  # routed again (its grant had run out, say), sent back
    d = door(replay=(b"", Back.TIMED_OUT))
    assert d.got().startswith(b"HTTP/1.1 504 ") and d.browser.disconnecting
    d = door(replay=(b"", Back.FAILED))  # an upload the sandbox dropped: not sent twice
    assert d.got().startswith(b"HTTP/1.1 503 ") and d.browser.disconnecting
    assert b"Starting your sandbox" in d.got()
    d = door(replay=(b"", Back.FAILED, 5173))  # ... by a preview's dev server: SandboxSite's page
    assert d.got().startswith(b"HTTP/1.1 503 ") and d.browser.disconnecting
    assert b"Nothing is listening on 5173 yet" in d.got() and b'http-equiv="refresh"' in d.got()


def test_a_refused_request_a_worker_gave_back_goes_to_twisted_web() -> None:
    """A worker gives back a request of another origin with what followed it: the router
    that takes the connection up passes it to no worker, twisted.web gets those bytes
    (SandboxSite answers 403), and the sandbox nothing."""
    other = b"Origin: http://oc-0b6f1a3e-2222-4222-8333-444455556666.localhost:8080"
    for raw in [get(b"/x", other), post(other)]:
        d = door(replay=(raw + get(b"/next"), Back.ASK))
        assert d.handed == [raw + get(b"/next")], raw
        assert d.workers.served == [] and d.got() == b"", raw


def test_a_grant_is_renewed_while_its_request_would_be_routed_the_same_way() -> None:
    live = LiveStreams(Clock())
    d = door(live=live)
    d.send(get())
    lease = d.workers.served[0][-1]
    assert lease.renew() == 1.0
    d.clock.advance(1.5)  # (a cached session is good for 2 s: it is read again, a second given)
    renewed = lease.renew()
    assert isinstance(renewed, Deferred) and renewed.result == 1.0 and d.access.refreshed == 1
    assert lease.renew() == 1.0 and d.access.refreshed == 1  # (read: not again for a while)
    d.endpoints.endpoint = Endpoint("127.0.0.1", 41001)  # the sandbox moved
    assert lease.renew() is None
    d.endpoints.endpoint = HERE
    assert lease.renew() == 1.0
    live.cut(1, user_id="u")  # revoked (logout, removal, a role change)
    assert lease.renew() is None


def test_a_connection_back_from_a_worker_unanswered_makes_the_sandbox_asked_again() -> None:
    d = door()
    adopted: list[tuple[Any, ...]] = []

    class Reactor:
        def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> None:
            # (as a reactor does: the factory builds the connection's protocol)
            adopted.append((family, factory.buildProtocol(None).replay))

    factory = RouterFactory(FakeSite(), d.router.factory.routes, Reactor())
    for why in (Back.TIMED_OUT, Back.DROPPED, Back.FAILED, Back.ASK):
        a, b = socket.socketpair()
        factory.take_back(a, b"", why, SID)
        assert adopted[-1] == (socket.AF_UNIX, (b"", why, None))
        assert factory.buildProtocol(None).replay is None  # (only the one taken back replays)
        assert a.fileno() == -1  # (the reactor has its own)
        b.close()
    assert d.endpoints.forgotten == [SID] * 3  # (not for a request the grant did not cover)


def test_a_connection_goes_to_a_real_twisted_web_channel() -> None:
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            return b"main site"

    d = door(site=Site(Hello()))
    d.send(b"GET /api HTTP/1.1\r\nHost: localhost:8080\r\n\r\n")
    assert d.got().endswith(b"main site")


def test_a_connection_in_use_keeps_its_grant_across_the_session_cache_by_the_clock() -> None:
    """A worker's loop (real sockets) and the router's lease share one Clock: requests every
    0.3 s for 2.4 s, past the first 1 s grant and the session cache's 2 s, all stay on the
    worker's connection; it asks for renewals, the lease gives them (reading the session
    again before its cached answer runs out), and it never comes back."""
    from tests.unit.proxy.relay.test_connection import OK, Kept
    from tests.unit.proxy.relay.test_connection import get as worker_get

    d = door()
    d.clock.advance(100)
    d.access.fetched = 100.0
    d.send(get())
    [(_, seconds, _, _, lease)] = d.workers.served
    k = Kept(seconds=seconds)  # (its clock reads 100 too)
    k.upstream()
    k.answer(OK)
    renewals = 0
    for n in range(8):
        d.clock.advance(0.3)
        k.now = d.clock.seconds()
        k.browser.sendall(worker_get(b"/n%d" % n))
        assert k.upstream().startswith(b"GET /n%d " % n)
        assert k.answer(OK).endswith(b"hi")
        k.control.setblocking(False)
        try:
            while True:
                msg, _, _, _ = socket.recv_fds(k.control, 1 << 16, 1)
                if msg[:1] == b"R":
                    renewed = lease.renew()
                    more = renewed.result if isinstance(renewed, Deferred) else renewed
                    assert isinstance(more, float)
                    k.control.send(RENEWED.pack(b"G", 7, k.now + more))
                    renewals += 1
        except BlockingIOError:
            pass
        finally:
            k.control.settimeout(5)
        assert k.relay.kept_count == 1, n  # never back
    assert renewals == 4 and d.access.refreshed == 2  # (read again as each 2 s ran out)


PREVIEW_HOST = f"oc-{SID}-p5173.localhost:8080".encode()
DEV_SERVER = Endpoint("127.0.0.1", 45173)


def test_a_preview_goes_to_a_worker_with_no_credential_for_its_own_port() -> None:
    """A preview's session routes its requests (a page, an upload, hot reload's WebSocket)
    to a worker like opencode's, granted with no credential, to the previewed port's address,
    for that port only."""
    for raw in [
        get(b"/", host=PREVIEW_HOST),
        get(b"/", b"Content-Length: 2", host=PREVIEW_HOST).replace(b"GET", b"POST") + b"{}",
        get(
            b"/",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Origin: http://" + PREVIEW_HOST,
            host=PREVIEW_HOST,
        ),
    ]:
        d = door(port=5173)
        d.endpoints.previews[5173] = DEV_SERVER
        d.send(raw)
        [(grant, seconds, data, whose, lease)] = d.workers.served
        assert grant == Grant(
            PREVIEW_HOST,
            (b"cli_sandbox=" + TOKEN.encode(),),
            b"",  # never opencode's Basic credential
            b"10.1.2.3",
            b"http",
            SID.encode(),
            b"localhost",
            int(Role.DEVELOPER),
            b"127.0.0.1",
            45173,
            MAX_SANDBOX_BODY,
            5173,
        )
        assert whose == Whose("u", "w", SID) and data == raw and lease.route.port == 5173
        assert lease.renew() == 1.0


def test_a_preview_session_routes_nothing_for_another_origin() -> None:
    """A session made on the preview of 5173 opens neither opencode's address nor another
    port's; nor does opencode's session open a preview: twisted.web answers them all (its
    page), and no worker is granted anything."""
    cases = [
        (5173, get(b"/")),  # opencode's address
        (5173, get(b"/", host=f"oc-{SID}-p8000.localhost:8080".encode())),
        (None, get(b"/", host=PREVIEW_HOST)),
    ]
    for port, raw in cases:
        d = door(port=port)
        d.endpoints.previews.update({5173: DEV_SERVER, 8000: DEV_SERVER})
        d.send(raw)
        assert d.workers.served == [] and d.handed == [raw], raw


def test_a_preview_whose_address_is_not_known_goes_to_twisted_web() -> None:
    """No address for the port (the sandbox stopped meanwhile): SandboxSite says so."""
    d = door(port=5173)
    d.send(get(b"/", host=PREVIEW_HOST))
    assert d.workers.served == [] and d.handed == [get(b"/", host=PREVIEW_HOST)]


def test_a_preview_grant_ends_when_its_port_moves_or_is_revoked() -> None:
    live = LiveStreams(Clock())
    d = door(live=live, port=5173)
    d.endpoints.previews[5173] = DEV_SERVER
    d.send(get(b"/", host=PREVIEW_HOST))
    lease = d.workers.served[0][-1]
    assert lease.renew() == 1.0
    d.endpoints.previews[5173] = Endpoint("127.0.0.1", 45174)  # forwarded elsewhere now
    assert lease.renew() is None
    d.endpoints.previews[5173] = DEV_SERVER
    d.endpoints.endpoint = None  # (opencode's address plays no part in a preview's grant)
    assert lease.renew() == 1.0
    live.cut(1, sandbox_id=SID)  # the sandbox paused, say: its previews are cut too
    assert lease.renew() is None


def test_a_preview_connection_a_worker_could_not_serve_comes_back_with_its_port() -> None:
    """A preview's dev server that dropped a request unanswered: the connection comes back
    with the preview's port, for the page to say nothing is listening on it."""
    from attrs import evolve

    d = door(port=5173)
    d.endpoints.previews[5173] = DEV_SERVER
    d.send(get(b"/", host=PREVIEW_HOST))
    adopted: list[Any] = []

    class Reactor:
        def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> None:
            adopted.append(factory.buildProtocol(None).replay)

    lease = d.workers.served[0][-1]
    factory = RouterFactory(FakeSite(), d.router.factory.routes, Reactor())
    a, b = socket.socketpair()
    evolve(lease, factory=factory).take_back(a, b"", Back.FAILED, SID)
    b.close()
    assert adopted == [(b"", Back.FAILED, 5173)] and d.endpoints.forgotten == [SID]
