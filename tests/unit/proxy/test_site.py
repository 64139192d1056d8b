"""``SandboxSite`` as a browser meets it, one raw HTTP request at a time through a real
twisted.web Site: signing in with a ticket, the status pages, the landing and Resume paths,
and what goes on to opencode (with its password) or to a preview (without). The sessions,
the sandbox manager, the endpoint cache and the forwarder are stand-ins; the rules, pages
and cookies are the real ones."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from cli_server.db.pool import Database
from cli_server.domain.errors import Conflict
from cli_server.domain.roles import Role
from cli_server.proxy.access import Access, SandboxAccess
from cli_server.proxy.endpoints import RunningEndpoints
from cli_server.proxy.forward import Forwarder
from cli_server.proxy.site import SandboxCookie, SandboxSite
from cli_server.sandboxes.activity import ActivityRecorder
from cli_server.sandboxes.backend import Endpoint
from cli_server.sandboxes.manager import SandboxManager

SID = "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
HOST = f"oc-{SID}.sandbox.test".encode()
PREVIEW_HOST = f"oc-{SID}-p3000.sandbox.test".encode()
DASHBOARD = "http://cli.test/"
SESSION = "session-token"
PASSWORD = "opencode-password"


class Sessions:
    """Stand-in for SandboxAccess: one session token, one ticket."""

    def __init__(self) -> None:
        self.access: Access | None = self.make()
        self.tickets = {"good-ticket": "new-session"}
        self.changed: list[str] = []
        self.broken = False

    @staticmethod
    def make(**kw: Any) -> Access:
        base: dict[str, Any] = {
            "user_id": "u1",
            "sandbox_id": SID,
            "workspace_id": "w1",
            "role": Role.DEVELOPER,
            "status": "running",
            "is_local": False,
            "password": PASSWORD,
            "fetched_at": 0.0,
        }
        return Access(**{**base, **kw})

    async def lookup(self, token: str, sandbox_id: str, port: int | None) -> Access | None:
        if self.broken:
            raise RuntimeError("the session table broke")
        if token != SESSION or self.access is None or sandbox_id != SID:
            return None
        return self.access

    async def redeem(self, ticket: str, sandbox_id: str, port: int | None = None) -> str | None:
        return self.tickets.pop(ticket, None) if sandbox_id == SID else None

    def status_changed(self, sandbox_id: str) -> None:
        self.changed.append(sandbox_id)


class Manager:
    def __init__(self) -> None:
        self.resumed: list[tuple[str, str]] = []
        self.refuse = False

    async def resume(self, sandbox_id: str, user_id: str) -> None:
        if self.refuse:
            raise Conflict("the workspace is at its limit of running sandboxes")
        self.resumed.append((sandbox_id, user_id))


class Endpoints:
    """Stand-in for the endpoint cache: opencode's address, or None while it starts."""

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = Endpoint("10.0.0.7", 4096)
        self.forgotten: list[str] = []

    async def get(self, sandbox_id: str, port: int | None) -> Endpoint | None:
        if self.endpoint is None:
            return None
        return Endpoint(self.endpoint.host, port or self.endpoint.port)

    def forget(self, sandbox_id: str) -> None:
        self.forgotten.append(sandbox_id)


class Opencode:
    """Stand-in for the Forwarder: answers as opencode (or the preview's app) would, and
    keeps what each forwarded request carried; ``answers`` False: nothing listening."""

    def __init__(self) -> None:
        self.answers = True
        self.got: list[tuple[bytes, Endpoint, str | None]] = []

    async def forward(
        self, request: Any, endpoint: Endpoint, password: str | None, scheme: bytes, **kw: Any
    ) -> bool:
        self.got.append((request.uri, endpoint, password))
        if not self.answers:
            return False
        request.setHeader(b"content-type", b"text/plain")
        request.write(b"from opencode")
        request.finish()
        return True


class Touched:
    """The database behind ActivityRecorder: which sandboxes were marked active."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    async def execute(self, sql: str, args: Any = ()) -> None:
        self.touched.append(args[0])


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.code = int(lines[0].split(b" ")[1]) if lines[0] else 0
        self.headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers.setdefault(name.lower(), []).append(value.strip())

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name)
        return values[-1] if values else None


class World:
    def __init__(self) -> None:
        self.sessions = Sessions()
        self.manager = Manager()
        self.endpoints = Endpoints()
        self.opencode = Opencode()
        self.db = Touched()
        reactor = MemoryReactorClock()
        self.site = SandboxSite(
            cast(SandboxAccess, self.sessions),
            cast(SandboxManager, self.manager),
            cast(RunningEndpoints, self.endpoints),
            ActivityRecorder(cast(Database, self.db), reactor),
            cast(Forwarder, self.opencode),
            SandboxCookie(secure=False, lifetime=3600),
            reactor,
            b"sandbox.test",
            b"http",
            DASHBOARD,
        )

    def get(
        self,
        target: bytes = b"/",
        *,
        method: bytes = b"GET",
        host: bytes = HOST,
        cookie: bool = True,
        page: bool = False,
        headers: dict[bytes, bytes] | None = None,
    ) -> Answer:
        lines = [method + b" " + target + b" HTTP/1.0", b"Host: " + host]
        if cookie:
            lines.append(b"Cookie: cli_sandbox=" + SESSION.encode())
        if page:
            lines += [b"Sec-Fetch-Mode: navigate", b"Sec-Fetch-Site: none"]
        lines += [k + b": " + v for k, v in (headers or {}).items()]
        transport = StringTransport()
        channel = Site(self.site).buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000))
        assert channel is not None
        channel.makeConnection(transport)
        channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
        return Answer(transport.value())


class ForwardTests(SynchronousTestCase):
    def test_a_session_reaches_opencode_with_its_password(self) -> None:
        """A developer's request goes to opencode's endpoint with opencode's password, and
        the sandbox counts as active."""
        world = World()
        answer = world.get(b"/session?x=1")
        self.assertEqual((answer.code, answer.body), (200, b"from opencode"))
        self.assertEqual(
            world.opencode.got, [(b"/session?x=1", Endpoint("10.0.0.7", 4096), PASSWORD)]
        )
        self.assertEqual(world.db.touched, [SID])

    def test_a_preview_never_gets_opencode_s_password(self) -> None:
        """A preview port's request goes to that port, without the credential."""
        world = World()
        world.sessions.access = Sessions.make(port=3000)
        answer = world.get(b"/", host=PREVIEW_HOST)
        self.assertEqual(answer.code, 200)
        self.assertEqual(world.opencode.got, [(b"/", Endpoint("10.0.0.7", 3000), None)])

    def test_opencode_not_answering_yet_shows_the_starting_page(self) -> None:
        """No endpoint yet: a 503 page that reloads itself; nothing is forwarded."""
        world = World()
        world.endpoints.endpoint = None
        answer = world.get(b"/", page=True)
        self.assertEqual(answer.code, 503)
        self.assertIn(b"Starting your sandbox", answer.body)
        self.assertIn(b'http-equiv="refresh" content="3', answer.body)
        self.assertEqual(answer.header(b"cache-control"), b"no-store")
        self.assertEqual(world.opencode.got, [])

    def test_opencode_silent_forgets_the_endpoint(self) -> None:
        """A cloud sandbox that did not answer: its cached endpoint is dropped (it may have
        moved), and the browser gets the starting page."""
        world = World()
        world.opencode.answers = False
        answer = world.get(b"/", page=True)
        self.assertEqual(answer.code, 503)
        self.assertIn(b"Starting your sandbox", answer.body)
        self.assertEqual(world.endpoints.forgotten, [SID])

    def test_a_silent_preview_says_nothing_listens(self) -> None:
        """A preview whose app does not answer gets the port's own page."""
        world = World()
        world.sessions.access = Sessions.make(port=3000)
        world.opencode.answers = False
        answer = world.get(b"/", host=PREVIEW_HOST, page=True)
        self.assertEqual(answer.code, 503)
        self.assertIn(b"Nothing is listening on 3000 yet", answer.body)

    def test_a_local_sandbox_without_its_agent_is_offline(self) -> None:
        """A laptop's sandbox with no tunnel here (and no other replica): the offline page."""
        world = World()
        world.sessions.access = Sessions.make(is_local=True)
        answer = world.get(b"/", page=True)
        self.assertEqual(answer.code, 503)
        self.assertIn(b"The agent is offline", answer.body)
        self.assertEqual(world.opencode.got, [])

    def test_a_failure_is_the_502_page(self) -> None:
        """Anything going wrong before the answer began: the 502 page, not a hung browser."""
        world = World()
        world.sessions.broken = True
        answer = world.get(b"/", page=True)
        self.assertEqual(answer.code, 502)
        self.assertIn(b"Something went wrong", answer.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RefusalTests(SynchronousTestCase):
    def test_a_navigation_without_a_session_goes_to_the_dashboard(self) -> None:
        """A shared link or a bookmark: 303 to the dashboard's page that opens this sandbox
        (a fixed address), with no referrer."""
        world = World()
        answer = world.get(b"/anything", cookie=False, page=True)
        self.assertEqual(answer.code, 303)
        self.assertEqual(answer.header(b"location"), f"{DASHBOARD}open/{SID}".encode())
        self.assertEqual(answer.header(b"referrer-policy"), b"no-referrer")
        preview = world.get(b"/", host=PREVIEW_HOST, cookie=False, page=True)
        self.assertEqual(preview.header(b"location"), f"{DASHBOARD}open/{SID}?port=3000".encode())

    def test_a_script_without_a_session_is_401(self) -> None:
        """A fetch with no (or an ended) session: 401, and nothing forwarded."""
        world = World()
        answer = world.get(b"/session", cookie=False)
        self.assertEqual(answer.code, 401)
        self.assertIn(b"Open this sandbox from the dashboard", answer.body)
        world.sessions.access = None
        self.assertEqual(world.get(b"/session").code, 401)
        self.assertEqual(world.opencode.got, [])

    def test_another_site_s_page_cannot_act(self) -> None:
        """A cross-origin POST is refused before any session is read."""
        world = World()
        answer = world.get(b"/session", method=b"POST", headers={b"Origin": b"http://evil.test"})
        self.assertEqual(answer.code, 403)
        self.assertIn(b"Another site", answer.body)
        self.assertEqual(world.opencode.got, [])

    def test_a_guest_s_write_is_refused_in_opencode_s_shape(self) -> None:
        """A guest's script POST gets opencode's JSON error (its UI shows it); a guest's
        read passes."""
        world = World()
        world.sessions.access = Sessions.make(role=Role.GUEST)
        answer = world.get(b"/session", method=b"POST", headers={b"Origin": b"http://" + HOST})
        self.assertEqual(answer.code, 403)
        self.assertEqual(answer.header(b"content-type"), b"application/json")
        self.assertIn(b"read-only for you", answer.body)
        self.assertEqual(world.get(b"/session").code, 200)

    def test_a_host_that_is_no_sandbox(self) -> None:
        """A malformed sandbox name gets a 404 page that says what is wrong with it."""
        world = World()
        answer = world.get(b"/", host=b"oc-nope.sandbox.test", page=True)
        self.assertEqual(answer.code, 404)


class StatusPageTests(SynchronousTestCase):
    def test_a_paused_sandbox_offers_resume_to_developers_only(self) -> None:
        """Paused: a 503 page; a developer gets the Resume form, a guest does not."""
        world = World()
        world.sessions.access = Sessions.make(status="paused")
        answer = world.get(b"/", page=True)
        self.assertEqual(answer.code, 503)
        self.assertIn(b"This sandbox is paused", answer.body)
        self.assertIn(b'action="/_cli/resume?next=/_cli/open"', answer.body)
        self.assertEqual(answer.header(b"referrer-policy"), b"same-origin")
        world.sessions.access = Sessions.make(status="paused", role=Role.GUEST)
        self.assertNotIn(b"<form", world.get(b"/", page=True).body)

    def test_a_failed_sandbox_says_why(self) -> None:
        """The failure's reason leads the page's text."""
        world = World()
        world.sessions.access = Sessions.make(status="failed", error="out of memory.")
        answer = world.get(b"/", page=True)
        self.assertIn(b"This sandbox crashed", answer.body)
        self.assertIn(b"out of memory. Its files are kept.", answer.body)


class OwnPathTests(SynchronousTestCase):
    def test_a_ticket_becomes_the_session_cookie(self) -> None:
        """``/_cli/auth?ticket=`` sets the host-only, HttpOnly session cookie and lands."""
        world = World()
        answer = world.get(b"/_cli/auth?ticket=good-ticket", cookie=False, page=True)
        self.assertEqual(answer.code, 303)
        self.assertEqual(answer.header(b"location"), b"/_cli/open")
        [cookie] = answer.headers[b"set-cookie"]
        self.assertTrue(cookie.startswith(b"cli_sandbox=new-session;"))
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=lax", cookie)
        self.assertNotIn(b"Domain", cookie)

    def test_a_used_ticket_has_expired(self) -> None:
        """A ticket works once; the second time (without a session) it is a 401 page."""
        world = World()
        world.get(b"/_cli/auth?ticket=good-ticket", cookie=False, page=True)
        again = world.get(b"/_cli/auth?ticket=good-ticket", cookie=False, page=True)
        self.assertEqual(again.code, 401)
        self.assertIn(b"This link has expired", again.body)
        self.assertNotIn(b"set-cookie", again.headers)

    def test_a_used_ticket_with_a_session_just_lands(self) -> None:
        """Reloading the link while signed in here is no error: it lands."""
        world = World()
        answer = world.get(b"/_cli/auth?ticket=spent", page=True)
        self.assertEqual((answer.code, answer.header(b"location")), (303, b"/_cli/open"))

    def test_landing_opens_the_workspace_disk(self) -> None:
        """``/_cli/open`` is the landing page; for a guest, in read-only mode."""
        world = World()
        answer = world.get(b"/_cli/open", page=True)
        self.assertEqual(answer.code, 200)
        self.assertIn(b'var dir = "/data/disk0"', answer.body)
        self.assertIn(b"if (!false)", answer.body)
        world.sessions.access = Sessions.make(role=Role.GUEST)
        self.assertIn(b"if (!true)", world.get(b"/_cli/open", page=True).body)

    def test_resume_is_a_post_that_resumes_and_leads_on(self) -> None:
        """POST ``/_cli/resume`` resumes the sandbox, drops the cached status and leads to
        where the page asked (only a path of this origin)."""
        world = World()
        world.sessions.access = Sessions.make(status="paused")
        same = {b"Origin": b"http://" + HOST}
        answer = world.get(b"/_cli/resume?next=/files", method=b"POST", headers=same)
        self.assertEqual((answer.code, answer.header(b"location")), (303, b"/files"))
        self.assertEqual(world.manager.resumed, [(SID, "u1")])
        self.assertEqual(world.sessions.changed, [SID])
        evil = world.get(b"/_cli/resume?next=//evil.test", method=b"POST", headers=same)
        self.assertEqual(evil.header(b"location"), b"/_cli/open")

    def test_resume_by_get_or_refused(self) -> None:
        """A GET never resumes (a prefetch could); a refusal is shown with its status."""
        world = World()
        world.sessions.access = Sessions.make(status="paused")
        self.assertEqual(world.get(b"/_cli/resume", page=True).code, 403)
        self.assertEqual(world.manager.resumed, [])
        world.manager.refuse = True
        answer = world.get(b"/_cli/resume", method=b"POST", headers={b"Origin": b"http://" + HOST})
        self.assertEqual(answer.code, 409)
        self.assertIn(b"Cannot resume", answer.body)
