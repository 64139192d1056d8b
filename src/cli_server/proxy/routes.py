"""Which requests the router gives a relay worker, and for how long their grant holds.

A request qualifies when its head is plain (``request_head.py``), ``rules.decide`` forwards
it for the session its cookie names, and the sandbox runs on a backend here (not a laptop's
tunnel). Every other request, including every one that ends in a page of ours, goes to
``SandboxSite``. A preview (``oc-{id}-p{port}``) qualifies the same way, with its own session
and address, and with no credential: opencode's is for opencode's address only.
"""

from __future__ import annotations

from attrs import define, field, frozen
from prometheus_client import Counter
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from cli_server.domain.roles import Role
from cli_server.plumbing.metrics import Metrics
from cli_server.proxy import rules
from cli_server.proxy.access import Access, SandboxAccess
from cli_server.proxy.endpoints import RunningEndpoints
from cli_server.proxy.hosts import Place
from cli_server.proxy.live import LiveStreams, Whose
from cli_server.proxy.request_head import RequestHead
from cli_server.proxy.workers import RelayWorkers
from cli_server.sandboxes.activity import ActivityRecorder
from cli_server.sandboxes.backend import Endpoint
from cli_server.sandboxes.opencode import basic_auth


@frozen
class Route:
    sandbox_id: str
    endpoint: Endpoint
    authorization: bytes  # opencode's Basic credential, as a header value; b"" for a preview
    role: Role
    user_id: str
    workspace_id: str
    revocations: int  # revocations counted when its session was read (see live.py)
    fresh_until: float = 0.0  # when the session cache stops trusting what it was found with
    port: int | None = None  # the previewed port; None: opencode's address

    @property
    def whose(self) -> Whose:
        return Whose(self.user_id, self.workspace_id, self.sandbox_id)


GRANT_SECONDS = 1.0  # at most: a grant is renewed while its connection is in use


@define(eq=False)
class Routes:
    access: SandboxAccess
    endpoints: RunningEndpoints
    activity: ActivityRecorder
    base_host: bytes
    scheme: bytes
    cookie_name: bytes
    dashboard: str
    clock: IReactorTime  # the session cache's
    metrics: Metrics | None = None
    # For a head to arrive whole (and its session to be found).
    timeout: float = 120.0
    workers: RelayWorkers | None = None  # carry the connections routed here, if there
    live: LiveStreams | None = None  # what revocations cut (``revoked``)
    _counted: Counter | None = field(default=None, init=False)  # (its "http" label)
    _relayed: int = field(default=0, init=False)  # not yet added to the metric

    def __attrs_post_init__(self) -> None:
        if self.metrics is not None:
            self._counted = self.metrics.proxied.labels("http")
            self.metrics.flush_before_render(self._count)

    @property
    def listener(self) -> rules.Listener:
        return rules.Listener(self.scheme, self.base_host, self.cookie_name)

    def route(self, head: RequestHead) -> Route | None | Deferred[Route | None]:
        """Where to send ``head``, or None for SandboxSite (whatever ``rules.decide`` does not
        forward to a cloud sandbox). Answers at once, without a Deferred, when the session
        and the sandbox's address are in their caches (``access.py``, ``endpoints.py``), so a
        route is never staler than those."""
        place = rules.screen(head.asked, self.listener)
        if not isinstance(place, Place):
            return None
        token = rules.session_token(head.asked, self.listener)
        if token is None:
            return None
        access = self.access.cached(token, place.sandbox_id, place.port)
        if access is None:
            return self.access.lookup(token, *place).addCallback(self._allowed, head)
        return self._allowed(access, head)

    def _allowed(
        self, access: Access | None, head: RequestHead
    ) -> Route | None | Deferred[Route | None]:
        if access is None:
            return None
        session = rules.Session(access.role, access.status, access.is_local)
        verdict = rules.decide(head.asked, self.listener, session)
        if not isinstance(verdict, rules.Forward) or verdict.local:
            return None
        port = verdict.port
        endpoint = self.endpoints.cached(access.sandbox_id, port)
        if endpoint is None:
            return self.endpoints.get(access.sandbox_id, port).addCallback(
                self._found, access, port
            )
        return self._found(endpoint, access, port)

    def _found(self, endpoint: Endpoint | None, access: Access, port: int | None) -> Route | None:
        if endpoint is None:
            return None
        return Route(
            access.sandbox_id,
            endpoint,
            basic_auth(access.password) if port is None else b"",
            access.role,
            access.user_id,
            access.workspace_id,
            access.revocations,
            self.access.fresh_until(access),
            port,
        )

    def relayed(self, sandbox_id: str, count: int) -> None:
        """Requests the relay workers relayed for this sandbox (it says so once a second)."""
        self.activity.touch(sandbox_id)
        self._relayed += count

    def renewal(
        self, head: RequestHead, granted: Route, refresh: bool = True
    ) -> float | None | Deferred[float | None]:
        """Seconds more a grant given with ``granted`` for ``head``'s connection may hold:
        while ``head`` would be routed the same way now (same session, sandbox, address and
        credential, nothing revoked since), else None."""
        routing = self.route(head)
        if isinstance(routing, Deferred):
            return routing.addCallback(self._renewed, head, granted, refresh)
        return self._renewed(routing, head, granted, refresh)

    def _renewed(
        self, route: Route | None, head: RequestHead, granted: Route, refresh: bool
    ) -> float | None | Deferred[float | None]:
        if (
            route is None
            or route.whose != granted.whose
            or route.port != granted.port
            or route.endpoint != granted.endpoint
            or route.authorization != granted.authorization
            or (self.live is not None and self.live.revoked(granted.whose, granted.revocations))
        ):
            return None
        seconds = self.grant_seconds(route)
        token = rules.session_token(head.asked, self.listener)
        if seconds >= GRANT_SECONDS or not refresh or token is None:
            return seconds if seconds > 0 else None
        # The session's cached answer runs out within the second: read it again now, rather
        # than let the grant lapse and every connection it covers come back at once.
        again = self.access.refresh(token, granted.sandbox_id, granted.port)
        return again.addCallback(lambda _: self.renewal(head, granted, False))

    def grant_seconds(self, route: Route) -> float:
        """How long a relay worker may serve further requests with ``route``: a second at
        most, and no longer than the session cache trusts what it was found with."""
        return min(GRANT_SECONDS, route.fresh_until - self.clock.seconds())

    def _count(self) -> None:
        if self._counted is not None and self._relayed:
            self._counted.inc(self._relayed)
        self._relayed = 0

    def failed_sandbox(self, sandbox_id: str) -> None:
        """The sandbox did not answer: it may have moved; ask the backend next time."""
        self.endpoints.forget(sandbox_id)
