"""The proxy's front door, in memory: string transports for the browser and the sandbox, a
Clock for time, and FAKE session/endpoint lookups (the real ones are in the integration
tests, which all go through the front door too)."""

from __future__ import annotations

import socket
from typing import Any

from attrs import define, field
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from cli_server.proxy.access import Access
from cli_server.proxy.fast_path import FastPath
from cli_server.proxy.front_door import FrontDoor, FrontDoorFactory
from cli_server.proxy.live import LiveStreams, Whose
from cli_server.proxy.relay_wire import Back, Grant
from cli_server.proxy.upstream import UpstreamConnection, UpstreamPool
from cli_server.roles import Role
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

    def fresh_until(self, access: Access) -> float:
        return access.fetched_at + 2.0

    def _access(self, token: str, sandbox_id: str) -> Access | None:
        if token != TOKEN or sandbox_id != SID:
            return None
        return Access("u", SID, "w", self.role, self.status, False, "pw", self.fetched)

    def refresh(self, token: str, sandbox_id: str) -> Deferred[None]:
        self.refreshed += 1
        self.fetched = self.clock.seconds()
        return succeed(None)

    def cached(self, token: str, sandbox_id: str) -> Access | None:
        return None if self.slow else self._access(token, sandbox_id)

    def lookup(self, token: str, sandbox_id: str) -> Deferred[Access | None]:
        d: Deferred[Access | None] = Deferred()
        self.waiting.append(d)
        d.callback(None) if not self.slow else None
        d.addCallback(lambda _: self._access(token, sandbox_id))
        return d


@define
class FakeEndpoints:
    endpoint: Endpoint | None = HERE
    forgotten: list[str] = field(factory=list)
    generation: int = 0

    def cached(self, sandbox_id: str) -> Endpoint | None:
        return self.endpoint

    def get(self, sandbox_id: str) -> Deferred[Endpoint | None]:
        return succeed(self.endpoint)

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

    def buildProtocol(self, addr: Any) -> Channel:
        self.channels.append(Channel())
        return self.channels[-1]


@define
class Sandbox:
    """Upstream connections the pool opens, each on a string transport."""

    connections: list[UpstreamConnection] = field(factory=list)
    hold: bool = False  # leave connection attempts pending
    pending: list[tuple[Deferred[Any], UpstreamConnection]] = field(factory=list)

    def connect(self, endpoint: Endpoint, conn: UpstreamConnection) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self.hold:
            self.pending.append((d, conn))
        else:
            self.attach(d, conn)
        return d

    def attach(self, d: Deferred[Any], conn: UpstreamConnection) -> None:
        conn.makeConnection(StringTransport())
        self.connections.append(conn)
        d.callback(conn)

    def sent(self, n: int = -1) -> bytes:
        transport: Any = self.connections[n].transport
        return bytes(transport.value())

    def answer(self, data: bytes, n: int = -1) -> None:
        self.connections[n].dataReceived(data)


@define
class Door:
    door: FrontDoor
    browser: StringTransport
    sandbox: Sandbox
    site: FakeSite
    access: FakeAccess
    endpoints: FakeEndpoints
    activity: FakeActivity
    clock: Clock

    def send(self, data: bytes) -> None:
        self.door.dataReceived(data)

    def got(self) -> bytes:
        return bytes(self.browser.value())


@define
class FakeRelay:
    """Stands in for the relay process's service: takes connections when ``keep``, records
    them."""

    keep: bool = True
    ready: bool = True
    served: list[tuple[Any, ...]] = field(factory=list)  # (grant, seconds, data, whose, lease)
    let_go_of: list[Any] = field(factory=list)

    def serve(self, browser: Any, sandbox: Any, *rest: Any) -> bool:
        if self.keep:
            self.served.append(rest)
        return self.keep

    def let_go(self, *transports: Any) -> None:
        self.let_go_of += transports


@define
class FakeFactory:
    """Stands in for the listening port's factory: where a relay's connection comes back."""

    taken_back: list[Any] = field(factory=list)

    def take_back(self, *args: Any) -> None:
        self.taken_back.append(args)


def door(
    relay: FakeRelay | None = None,
    live: LiveStreams | None = None,
    replay: tuple[bytes, Back] | None = None,
    **access: Any,
) -> Door:
    clock, sandbox, site = Clock(), Sandbox(), FakeSite()
    fakes: dict[str, Any] = {
        "access": FakeAccess(**access, clock=clock),
        "endpoints": FakeEndpoints(),
        "activity": FakeActivity(),
    }
    pool = UpstreamPool(clock, sandbox.connect)
    fast = FastPath(
        fakes["access"],
        fakes["endpoints"],
        fakes["activity"],
        pool,
        b"localhost",
        b"http",
        b"cli_sandbox",
        "http://localhost:8080/",
        relay=relay,  # type: ignore[arg-type]
        live=live,
    )
    front = FrontDoor(fast, site, None, clock)
    front.factory = FakeFactory()
    front.replay = replay
    browser = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555))
    front.makeConnection(browser)
    return Door(
        front, browser, sandbox, site, fakes["access"], fakes["endpoints"], fakes["activity"], clock
    )


def get(
    path: bytes = b"/x", *extra: bytes, cookie: bytes = b"cli_sandbox=" + TOKEN.encode()
) -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: " + HOST]
    if cookie:
        lines.append(b"Cookie: " + cookie)
    return b"\r\n".join([*lines, *extra]) + b"\r\n\r\n"


def upload(path: bytes, body: bytes) -> bytes:
    head = [
        b"POST " + path + b" HTTP/1.1",
        b"Host: " + HOST,
        b"Cookie: cli_sandbox=" + TOKEN.encode(),
    ]
    return b"\r\n".join([*head, b"Content-Length: %d" % len(body)]) + b"\r\n\r\n" + body


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"


def test_a_request_reaches_the_sandbox_cleaned_and_the_answer_comes_back() -> None:
    d = door()
    d.send(
        get(
            b"/file?token=secret&directory=%2Ftmp",
            b"Authorization: Bearer ours",
            b"X-Forwarded-For: 6.6.6.6",
            b"Forwarded: for=6.6.6.6",
            cookie=b"cli_sandbox=" + TOKEN.encode() + b"; theme=dark; cli_session=main",
        )
    )
    head = d.sandbox.sent().lower()
    assert head.startswith(b"get /file?directory=%2ftmp http/1.1\r\n")
    assert b"secret" not in head and b"bearer" not in head and b"6.6.6.6" not in head
    assert TOKEN.encode() not in head and b"cli_session" not in head
    assert b"cookie: theme=dark\r\n" in head
    assert b"authorization: basic b3blbmnvzgu6chc=\r\n" in head  # opencode:pw
    assert b"x-forwarded-for: 10.1.2.3\r\n" in head and b"x-forwarded-proto: http\r\n" in head
    assert b"x-forwarded-host: " + HOST.lower() + b"\r\n" in head
    d.sandbox.answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1; Path=/\r\n"
        b"Set-Cookie: b=2; Domain=localhost\r\nSet-Cookie: cli_sandbox=x\r\n"
        b"Connection: keep-alive\r\n\r\nhi"
    )
    answer = d.got()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nhi")
    assert b"Set-Cookie: a=1; Path=/\r\n" in answer
    assert b"Domain" not in answer and b"cli_sandbox" not in answer
    assert b"Connection" not in answer
    assert d.activity.touched == [SID]


def test_keep_alive_both_ways_and_pipelined_requests_in_order() -> None:
    d = door()
    d.send(get(b"/1") + get(b"/2"))
    assert d.sandbox.sent().startswith(b"GET /1 ")
    d.sandbox.answer(OK)
    assert len(d.sandbox.connections) == 1  # the same connection carries the second
    assert d.sandbox.sent().count(b"GET /2 ") == 1
    d.sandbox.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye")
    assert d.got().count(b"HTTP/1.1 200") == 2 and d.got().endswith(b"bye")
    assert not d.browser.disconnecting


def test_chunked_and_until_close_answers_are_sent_chunked() -> None:
    d = door()
    d.send(get(b"/events"))
    d.sandbox.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert d.got().endswith(b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    d.sandbox.answer(b"0\r\n\r\n")
    assert d.got().endswith(b"0\r\n\r\n")
    d.send(get(b"/old"))
    d.sandbox.answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil")
    upstream: Any = d.sandbox.connections[-1].transport
    d.sandbox.connections[-1].connectionLost()
    assert d.got().endswith(b"5\r\nuntil\r\n0\r\n\r\n")
    assert upstream is not None and not d.browser.disconnecting
    # A reset is not how such an answer ends: the browser is cut off, with no ending.
    d = door()
    d.send(get(b"/old"))
    d.sandbox.answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil")
    d.sandbox.connections[-1].connectionLost(Failure(ConnectionLost("reset")))
    assert d.got().endswith(b"5\r\nuntil\r\n") and d.browser.disconnecting


def test_a_body_streams_on_and_reading_waits_for_the_sandbox_connection() -> None:
    d = door()
    d.sandbox.hold = True
    d.send(
        b"POST /upload HTTP/1.1\r\nHost: "
        + HOST
        + b"\r\nCookie: cli_sandbox="
        + TOKEN.encode()
        + b"\r\nContent-Length: 10\r\n\r\n0123"
    )
    assert d.browser.producerState == "paused"  # held until the sandbox can take it
    pending, conn = d.sandbox.pending.pop()
    d.sandbox.attach(pending, conn)
    assert d.browser.producerState == "producing"
    sent = d.sandbox.sent()
    assert b"Content-Length: 10\r\n" in sent and sent.endswith(b"\r\n\r\n0123")
    d.send(b"456789" + get(b"/next"))
    assert d.sandbox.sent().endswith(b"\r\n\r\n0123456789")  # /next waits its turn
    d.sandbox.answer(OK)
    assert d.sandbox.sent().split(b"0123456789", 1)[1].startswith(b"GET /next HTTP/1.1\r\n")
    assert len(d.sandbox.connections) == 1


def test_what_the_fast_path_does_not_take_goes_to_twisted_web_byte_for_byte() -> None:
    cases = [
        get(cookie=b""),  # no session: SandboxSite's page
        get(cookie=b"cli_sandbox=someone-else"),
        get(b"/_cli/auth?ticket=t"),
        b"HEAD / HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: " + HOST + b"\r\n\r\n",
        get(b"/pty/1/connect", b"Upgrade: websocket", b"Connection: Upgrade"),
        b"POST / HTTP/1.1\r\nHost: " + HOST + b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: "
        + HOST
        + b"\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"GET / HTTP/1.1\r\nHost: " + HOST + b"\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: " + HOST + b"\nX-Bare: lf\r\n\r\n",
        b"GET http://evil/ HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n",
        b"GET /api/auth/me HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",  # the main site
    ]
    for raw in cases:
        d = door()
        d.send(raw + b"MORE")
        assert [c.received for c in d.site.channels] == [raw + b"MORE"], raw
        assert d.sandbox.connections == [], raw
    guest = door(role=Role.GUEST)
    post = upload(b"/", b"")
    guest.send(post)
    assert guest.site.channels[0].received == post  # the read-only page
    paused = door(status="paused")
    paused.send(get())
    assert paused.site.channels[0].received == get()  # the status page


def test_a_slow_session_lookup_pauses_reading_until_it_answers() -> None:
    d = door(slow=True)
    d.send(get())
    assert d.browser.producerState == "paused" and d.sandbox.connections == []
    d.access.waiting[0].callback(None)
    assert d.browser.producerState == "producing"
    assert d.sandbox.sent().startswith(b"GET /x ")


def test_a_sandbox_that_breaks_off_mid_body_cuts_the_browser_off() -> None:
    d = door()
    d.send(get())
    d.sandbox.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    d.sandbox.connections[-1].connectionLost()
    assert d.got().endswith(b"half") and d.browser.disconnecting


def test_no_answer_hands_a_bodiless_request_to_twisted_web_and_forgets_the_address() -> None:
    d = door()
    d.send(get())
    d.sandbox.connections[-1].connectionLost()
    assert d.site.channels[0].received == get()
    assert d.endpoints.forgotten == [SID]


def test_no_answer_to_an_upload_is_the_starting_page_not_a_second_send() -> None:
    d = door()
    d.send(
        b"PUT /f HTTP/1.1\r\nHost: "
        + HOST
        + b"\r\nCookie: cli_sandbox="
        + TOKEN.encode()
        + b"\r\nContent-Length: 2\r\n\r\nab"
    )
    d.sandbox.connections[-1].connectionLost()
    assert d.got().startswith(b"HTTP/1.1 503 ") and b"text/html" in d.got()
    assert b"Starting your sandbox" in d.got() and b'http-equiv="refresh"' in d.got()
    assert d.browser.disconnecting and d.site.channels == []


def test_a_pooled_connection_the_sandbox_closed_is_retried_once_on_a_new_one() -> None:
    d = door()
    d.send(get(b"/1"))
    d.sandbox.answer(OK)
    d.send(get(b"/2"))
    d.sandbox.connections[0].connectionLost()  # it had closed while idle: nothing came back
    assert len(d.sandbox.connections) == 2 and d.sandbox.sent().startswith(b"GET /2 ")
    d.sandbox.answer(OK)
    assert d.got().count(b"200 OK") == 2


def test_timeouts_an_answer_that_never_starts_and_an_idle_browser() -> None:
    d = door()
    d.send(get())
    d.clock.advance(119)
    assert d.got() == b""
    d.clock.advance(2)
    upstream: Any = d.sandbox.connections[-1].transport
    assert upstream.disconnecting  # aborted; the reactor then reports the loss:
    d.sandbox.connections[-1].connectionLost()
    assert d.got().startswith(b"HTTP/1.1 504 ") and d.browser.disconnecting
    assert d.site.channels == []  # not tried again by SandboxSite
    idle = door()
    idle.clock.advance(121)
    assert idle.browser.disconnecting


def test_a_browser_that_leaves_aborts_its_sandbox_request() -> None:
    d = door()
    d.send(get(b"/events"))
    d.sandbox.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    upstream: Any = d.sandbox.connections[-1].transport
    assert d.browser.producer is upstream  # a slow reader pauses its own upstream only
    d.door.connectionLost()
    assert upstream.disconnecting


def test_the_sandbox_may_not_send_an_upgrade_it_was_not_asked_for() -> None:
    d = door()
    d.send(get())
    d.sandbox.answer(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    )
    upstream: Any = d.sandbox.connections[-1].transport
    assert upstream.disconnecting and d.got() == b""
    d.sandbox.connections[-1].connectionLost()
    assert d.site.channels[0].received == get()  # SandboxSite tries, and answers


def test_a_remembered_route_dies_with_a_revocation_and_keeps_the_guest_rule() -> None:
    d = door()
    d.send(get(b"/1"))
    d.sandbox.answer(OK)
    d.access.role = Role.GUEST  # a role change revokes: the caches forget
    d.access.generation += 1
    post = upload(b"/", b"")
    d.send(post)
    assert d.site.channels[0].received == post  # asked again: now a guest, so the page


def test_a_remembered_route_lasts_a_second_at_most() -> None:
    d = door()
    d.send(get(b"/1"))
    d.sandbox.answer(OK)
    d.access.status = "paused"  # changed elsewhere (another replica): no forget() here
    d.clock.advance(0.5)
    d.send(get(b"/2"))
    d.sandbox.answer(OK)
    assert d.got().count(b"200 OK") == 2  # still the remembered route
    d.clock.advance(0.6)
    d.send(get(b"/3"))
    assert d.site.channels[0].received == get(b"/3")  # looked up again: the status page


def test_a_connection_a_slow_reader_paused_goes_back_to_the_pool_reading() -> None:
    d = door()
    d.send(get(b"/big"))
    d.sandbox.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    upstream: Any = d.sandbox.connections[-1].transport
    d.browser.producer.pauseProducing()  # what Twisted does when the browser's buffer fills
    assert upstream.producerState == "paused"
    d.sandbox.answer(b"cd")
    assert d.browser.producer is None and upstream.producerState == "producing"
    d.send(get(b"/next"))
    assert len(d.sandbox.connections) == 1 and b"GET /next HTTP/1.1" in d.sandbox.sent()


def test_the_browser_reads_again_once_an_upload_is_in_even_if_its_last_bytes_paused_it() -> None:
    d = door()
    d.send(upload(b"/f", b"0123456789")[:-4])
    upstream: Any = d.sandbox.connections[-1].transport
    upstream.producer.pauseProducing()  # the sandbox's buffer filled
    assert d.browser.producerState == "paused"
    d.send(b"6789")
    assert upstream.producer is None and d.browser.producerState == "producing"


def test_a_sandbox_that_drops_an_upload_gets_the_browser_a_page_not_a_reset() -> None:
    d = door()
    d.send(upload(b"/f", b"0123456789")[:-4])
    upstream: Any = d.sandbox.connections[-1].transport
    upstream.producer.stopProducing()  # what Twisted does as the connection goes
    d.sandbox.connections[-1].connectionLost()
    assert d.browser.producerState != "stopped"
    assert d.got().startswith(b"HTTP/1.1 503 ") and d.site.channels == []


def test_a_request_that_is_not_safe_to_repeat_is_never_sent_twice() -> None:
    d = door()
    d.send(get(b"/1"))
    d.sandbox.answer(OK)
    d.send(upload(b"/prompt", b""))  # a POST without a body
    d.sandbox.connections[0].connectionLost()  # the pooled connection was dead
    assert len(d.sandbox.connections) == 1 and d.site.channels == []
    assert d.got().count(b"HTTP/1.1 503 ") == 1


def test_bytes_after_an_answer_are_not_the_next_answer() -> None:
    d = door()
    d.send(get(b"/1"))
    d.sandbox.answer(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
    first: Any = d.sandbox.connections[0].transport
    assert b"evil" not in d.got() and d.got().count(b"HTTP/1.1") == 1
    assert first.disconnecting  # not reused
    d.send(get(b"/2"))
    assert len(d.sandbox.connections) == 2
    chunked = door()
    chunked.send(get(b"/t"))
    chunked.sandbox.answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\nSet-Cookie: late=1\r\n\r\n"
    )
    chunked.send(get(b"/u"))
    chunked.sandbox.answer(OK)
    assert b"late=1" not in chunked.got()  # a trailer is not a header of the next answer


def test_stalled_uploads_and_lookups_time_out() -> None:
    d = door()
    d.send(upload(b"/f", b"0123456789")[:-4])
    upstream: Any = d.sandbox.connections[-1].transport
    d.clock.advance(60)
    d.send(b"67")  # slow is fine
    d.clock.advance(119)
    assert not d.browser.disconnecting
    d.clock.advance(2)
    assert d.browser.disconnecting and upstream.disconnecting
    slow = door(slow=True)
    slow.send(get())
    slow.clock.advance(121)
    assert slow.browser.disconnecting


def test_a_bug_after_routing_closes_the_connection_instead_of_handing_off_a_cut_stream() -> None:
    d = door(slow=True)

    def broken(*args: Any) -> bytes:
        raise RuntimeError("a bug")

    d.door._fast.pool._connector = broken
    d.send(get())
    d.access.waiting[0].callback(None)
    assert d.browser.disconnecting and d.site.channels == []


def test_small_cases_bare_lf_heads_guests_no_content_and_connection_close() -> None:
    bare = door()
    bare.send(b"GET / HTTP/1.1\nHost: x\n\n")
    assert bare.site.channels[0].received == b"GET / HTTP/1.1\nHost: x\n\n"
    guest = door(role=Role.GUEST)
    options = get().replace(b"GET ", b"OPTIONS ", 1)
    guest.send(options)
    assert guest.site.channels[0].received == options
    d = door()
    d.send(get(b"/1"))
    d.sandbox.answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
    assert d.got().startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"chunked" not in d.got() and b"ontent-length" not in d.got()
    d.send(get(b"/2", b"Connection: close") + get(b"/3"))
    d.sandbox.answer(OK)
    assert d.browser.disconnecting and b"connection: close" in d.got()
    assert b"GET /3" not in d.sandbox.sent()


def test_a_connection_goes_to_a_real_twisted_web_channel_after_fast_requests() -> None:
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            return b"main site"

    d = door()
    d.send(get(b"/1"))
    d.sandbox.answer(OK)
    d.door._site = Site(Hello())
    d.send(b"GET /api HTTP/1.1\r\nHost: localhost:8080\r\n\r\n")
    assert d.got().endswith(b"main site")


def test_a_sandbox_that_dies_mid_answer_leaves_no_producer_holding_the_browser_open() -> None:
    d = door()
    d.send(get(b"/events"))
    d.sandbox.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    d.sandbox.connections[-1].connectionLost()
    assert d.browser.disconnecting and d.browser.producer is None


def test_a_remembered_route_is_not_used_once_the_sandbox_answers_elsewhere_or_time_steps_back() -> (
    None
):
    d = door()
    d.send(get(b"/1"))
    d.sandbox.answer(OK)
    d.endpoints.endpoint = Endpoint("127.0.0.1", 41001)  # restarted on another port
    d.send(get(b"/2"))
    assert d.sandbox.connections[-1].key == (SID, "127.0.0.1", 41001)
    d.sandbox.answer(OK)
    d.access.status = "paused"  # (seen only by a fresh lookup)
    d.clock.rightNow -= 3600  # the wall clock stepped back an hour
    d.send(get(b"/3"))
    assert d.site.channels[0].received == get(b"/3")


def test_heads_over_twisted_webs_limit_are_left_to_it() -> None:
    d = door()
    big = get(b"/x", b"X-Big: " + b"a" * 17000)
    d.send(big)
    assert d.site.channels[0].received == big and d.sandbox.connections == []


EVENTS = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_an_event_stream_relayed_here_ends_when_its_session_is_revoked() -> None:
    live = LiveStreams(Clock())
    d = door(live=live)
    d.send(get(b"/event"))
    d.sandbox.answer(EVENTS + b"2\r\nhi\r\n")
    assert len(live) == 1
    live.cut(1, user_id="someone else")
    live.cut(2, user_id="u", workspace_id="another")
    assert not d.browser.disconnecting
    live.cut(3, user_id="u", workspace_id="w")
    assert d.browser.disconnecting and len(live) == 0
    assert d.sandbox.connections[0].transport.disconnecting  # type: ignore[union-attr]
    # One that ends, or whose browser leaves, is off the list; other answers never on it.
    for ending in (b"0\r\n\r\n", None):
        d = door(live=live)
        d.send(get(b"/event"))
        d.sandbox.answer(EVENTS + b"2\r\nhi\r\n")
        if ending is None:
            d.door.connectionLost()
        else:
            d.sandbox.answer(ending)
        assert len(live) == 0
    d = door(live=live)
    d.send(get())
    d.sandbox.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
    assert len(live) == 0


def test_a_revocation_while_the_answer_was_awaited_ends_the_stream_at_its_head() -> None:
    clock = Clock()
    live = LiveStreams(clock)
    d = door(live=live)
    d.send(get(b"/event"))  # (the session was read at 0.0)
    live.cut(1, user_id="u")  # nothing open yet to cut (the session was read at count 0)
    d.sandbox.answer(EVENTS + b"2\r\nhi\r\n")
    assert d.browser.disconnecting and d.got() == b"" and len(live) == 0
    # Remembered for a while, and only against sessions read before it.
    assert live.add(Whose("u", "w", SID), seen=1, end=lambda: None) is not None
    assert live.add(Whose("u", "w", SID), seen=0, end=lambda: None) is None
    clock.advance(-3600)  # a clock stepped back forgets nothing
    live.cut(2, sandbox_id="other")
    assert live.add(Whose("u", "w", SID), seen=0, end=lambda: None) is None
    clock.advance(3600 + 301)
    live.cut(3, sandbox_id="other")  # (revocations are pruned as new ones come)
    assert live._revoked == [(301.0, 3, {"sandbox_id": "other"})]
    assert live.add(Whose("u", "w", SID), seen=0, end=lambda: None) is not None


def test_a_get_goes_to_the_relay_process_with_its_connection_and_what_follows() -> None:
    relay = FakeRelay()
    d = door(relay, LiveStreams(Clock()))
    d.send(get(b"/a") + b"GET /b HTTP/1.1\r\n")
    upstream = d.sandbox.connections[0]
    [(grant, seconds, data, whose, lease)] = relay.served
    assert grant == Grant(
        HOST,
        (b"cli_sandbox=" + TOKEN.encode(),),
        b"Basic b3BlbmNvZGU6cHc=",
        b"10.1.2.3",
        b"http",
        SID.encode(),
        b"localhost",
        2,
    )
    assert seconds == 1.0 and whose == Whose("u", "w", SID)
    assert data == get(b"/a") + b"GET /b HTTP/1.1\r\n"  # the request, and what came after
    lease.take_back("sock", b"GET /c", Back.ASK, SID)  # it comes back through the factory
    assert d.door.factory.taken_back == [("sock", b"GET /c", Back.ASK, SID)]  # type: ignore[union-attr]
    # Both connections are the relay's now: nothing is written, pooled or timed here.
    assert relay.let_go_of == [d.browser, upstream.transport]
    assert d.sandbox.sent() == b"" and d.got() == b"" and d.clock.getDelayedCalls() == []
    assert d.activity.touched == []  # (the relay process counts it, with what follows)


def test_what_the_relay_process_does_not_take_is_relayed_here() -> None:
    relay = FakeRelay()
    d = door(relay)
    d.send(upload(b"/u", b"body"))  # a body
    assert relay.served == [] and d.sandbox.sent().endswith(b"\r\n\r\nbody")
    d.sandbox.answer(OK)
    d.send(get())  # the next request on the connection goes
    assert len(relay.served) == 1
    live = LiveStreams(Clock())
    d = door(FakeRelay(), live)
    live.cut(1, user_id="u")  # revoked after its session was read (0 revocations then)
    d.send(get())
    assert d.door._fast.relay.served == [] and d.sandbox.sent().startswith(b"GET /x ")  # type: ignore[union-attr]
    d = door(FakeRelay(keep=False))  # the relay could not take it
    d.send(get())
    d.sandbox.answer(OK)
    assert d.got().endswith(b"hi")


def test_a_connection_back_from_the_relay_process_takes_up_where_it_left_off() -> None:
    relay = FakeRelay()
    d = door(relay, replay=(get(b"/again"), Back.DROPPED))
    # Dropped by the sandbox there: this request is tried here, on a new sandbox connection.
    assert relay.served == [] and d.sandbox.sent().startswith(b"GET /again ")
    d.sandbox.answer(OK)
    assert d.got().endswith(b"hi")
    d.send(get(b"/next"))
    assert len(relay.served) == 1  # and the next may go again
    d = door(relay, replay=(get(b"/other"), Back.ASK))
    assert len(relay.served) == 2  # routed again (its grant had run out, say) and sent back
    d = door(relay, replay=(b"", Back.TIMED_OUT))
    assert d.got().startswith(b"HTTP/1.1 504 ") and d.browser.disconnecting


def test_a_grant_is_renewed_while_its_request_would_be_routed_the_same_way() -> None:
    relay, live = FakeRelay(), LiveStreams(Clock())
    d = door(relay, live)
    d.send(get())
    lease = relay.served[0][-1]
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


def test_a_connection_that_timed_out_there_makes_the_sandbox_asked_again() -> None:
    d = door()
    adopted: list[tuple[Any, ...]] = []

    class Reactor:
        def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> None:
            adopted.append((family, factory._replay))

    factory = FrontDoorFactory(FakeSite(), d.door._fast, Reactor())
    a, b = socket.socketpair()
    factory.take_back(a, b"", Back.TIMED_OUT, SID)
    assert d.endpoints.forgotten == [SID] and adopted == [(socket.AF_UNIX, (b"", Back.TIMED_OUT))]
    assert factory._replay is None and a.fileno() == -1  # (the reactor has its own)
    b.close()


def post(*extra: bytes, cookie: bytes = b"cli_sandbox=" + TOKEN.encode()) -> bytes:
    lines = [b"POST /session HTTP/1.1", b"Host: " + HOST, b"Cookie: " + cookie, *extra]
    return b"\r\n".join([*lines, b"Content-Length: 2"]) + b"\r\n\r\n{}"


OWN = b"Origin: http://" + HOST


def test_requests_from_other_origins_and_doubled_sessions_go_to_twisted_web() -> None:
    """SandboxSite refuses them (403, 401): the fast path never relays them, not even on a
    connection whose route it remembers."""
    other = b"Origin: http://oc-0b6f1a3e-2222-4222-8333-444455556666.localhost:8080"
    cases = [
        post(other),
        post(other, b"Sec-Fetch-Site: same-origin"),  # Origin decides when it is there
        post(b"Origin: null", b"Sec-Fetch-Site: same-site"),
        post(b"Origin: null"),  # a browser, with no fetch metadata to place it
        post(b"Sec-Fetch-Site: cross-site"),
        post(OWN, OWN),  # twice: not one we can trust
        post(b"Origin: null", b"Sec-Fetch-Site: same-origin", b"Sec-Fetch-Site: same-origin"),
        post(b"Origin: http://" + HOST.replace(b"8080", b"8081")),
        post(b"Origin: https://" + HOST),
        get(b"/x", other),  # a CORS read of another sandbox
        get(b"/x", b"Origin: null", b"Sec-Fetch-Site: cross-site"),
        get(cookie=b"cli_sandbox=" + TOKEN.encode() + b"; cli_sandbox=" + TOKEN.encode()),
        get(b"/x", b"Cookie: cli_sandbox=tossed"),  # a second Cookie header
    ]
    for raw in cases:
        d = door()
        d.send(get(b"/first"))  # (a route to remember)
        d.sandbox.answer(OK)
        d.send(raw + b"MORE")
        assert [c.received for c in d.site.channels] == [raw + b"MORE"], raw
        assert len(d.sandbox.connections) == 1 and d.sandbox.sent().count(b"HTTP/1.1") == 1, raw


def test_a_refused_request_the_relay_process_gave_back_goes_to_twisted_web() -> None:
    """The relay process gives back a request of another origin with what followed it: the
    door that takes the connection up neither relays it nor passes it on, twisted.web gets
    those bytes (SandboxSite answers 403), and the sandbox nothing."""
    other = b"Origin: http://oc-0b6f1a3e-2222-4222-8333-444455556666.localhost:8080"
    for raw in [get(b"/x", other), post(other)]:
        relay = FakeRelay()
        d = door(relay, replay=(raw + get(b"/next"), Back.ASK))
        assert [c.received for c in d.site.channels] == [raw + get(b"/next")], raw
        assert relay.served == [] and d.sandbox.connections == [] and d.got() == b"", raw


def test_same_origin_state_changes_are_relayed() -> None:
    """A sandbox's own page: its Origin, or ``null`` with Sec-Fetch-Site: same-origin (a page
    with Referrer-Policy: no-referrer), or no browser at all (neither header)."""
    for raw in [
        post(OWN, b"Sec-Fetch-Site: same-origin"),
        post(OWN.upper().replace(b"ORIGIN", b"Origin")),  # hosts compare in any case
        post(b"Origin: null", b"Sec-Fetch-Site: same-origin"),
        post(b"Sec-Fetch-Site: same-origin"),
        post(),
        get(b"/x", OWN),
    ]:
        d = door()
        d.send(raw)
        assert d.site.channels == [], raw
        assert d.sandbox.sent().split(b" ", 1)[0] == raw.split(b" ", 1)[0], raw
