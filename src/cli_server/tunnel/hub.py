"""The server's side of the tunnel: live tunnels by sandbox, their WebSocket protocol, and
the endpoint through which the subdomain proxy reaches a local sandbox.

One live tunnel per sandbox: a new connection with the same credentials replaces the old one
(its agent is told so and stops). The table says ``running`` while a tunnel is live and
``offline`` otherwise; each status write is serialised per sandbox and writes what is true
when it runs, so a quick disconnect/reconnect can never leave the wrong word behind.

Tunnels live in this process's memory. With several replicas, ``holders`` records in the
database which replica holds each one (the others relay to it, ``proxy/replica_relay.py``), and
the status writes go through it, so an old tunnel's end on one replica never makes offline a
sandbox whose agent moved to another. The newest tunnel wins there too: the replica whose row
another took (its agent's credentials connected there since) closes its own as replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, DeferredLock, fail, maybeDeferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from cli_server.db.pool import Database, DatabaseUnavailable
from cli_server.replicas.holders import Details, TunnelHolders
from cli_server.tunnel.carrier import SessionCarrier
from cli_server.tunnel.frames import MAX_MESSAGE, VERSION
from cli_server.tunnel.mux import Session, Stream, TunnelAddress
from cli_server.tunnel.shared_ports import PortNotShared
from cli_server.tunnel.versions import agent_json, outdated

HELLO_TIMEOUT = 10.0
_REMEMBER_REVOKED = 60.0  # longer than a token check can take before its connection opens


@define(eq=False)
class TunnelHub:
    _db: Database
    clock: IReactorTime
    _on_change: Any = None  # (sandbox_id) -> None: drop what the proxy cached about it
    _on_data: Any = None  # (sandbox_id) -> None: activity
    _metrics: Any = None
    ping_interval: float = 15.0
    dead_after: float = 45.0
    current_protocol: int = VERSION  # agents speaking an older one are warned about
    holders: TunnelHolders | None = None  # with several replicas: who holds which tunnel
    _live: dict[str, Session] = field(factory=dict, init=False)
    _pending: dict[str, set[Session]] = field(factory=dict, init=False)  # open, no hello yet
    _revoked: dict[str, tuple[float, str]] = field(factory=dict, init=False)  # when, why
    _locks: dict[str, DeferredLock] = field(factory=dict, init=False)
    _addresses: dict[Session, str] = field(factory=dict, init=False)  # live tunnels' peers
    # the live tunnels whose row this replica took (a row lost later was taken by a newer one)
    _held: dict[str, Session] = field(factory=dict, init=False)
    _log = Logger()

    def session(self, sandbox_id: str) -> Session | None:
        return self._live.get(sandbox_id)

    def address(self, sandbox_id: str) -> str | None:
        """The address the sandbox's live tunnel comes from (its agent's Anthropic calls must
        come from there too); None while it has none."""
        session = self._live.get(sandbox_id)
        return None if session is None else self._addresses.get(session)

    def agent(self, sandbox_id: str) -> dict[str, Any] | None:
        """The connected agent's release and protocol, with a warning if it is outdated;
        None while none is connected."""
        session = self._live.get(sandbox_id)
        if session is None or session.hello is None or session.version is None:
            return None
        return agent_json(session.hello["agent"], session.version, self.current_protocol)

    async def agents(self, sandbox_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        """``agent`` of each sandbox, whichever replica holds its tunnel."""
        found: dict[str, dict[str, Any] | None] = {i: self.agent(i) for i in sandbox_ids}
        elsewhere = [i for i in sandbox_ids if i not in self._live]
        if self.holders is not None and elsewhere:
            for sandbox_id, details in (await self.holders.details(elsewhere)).items():
                if details.agent is not None and details.protocol is not None:
                    found[sandbox_id] = agent_json(
                        details.agent, details.protocol, self.current_protocol
                    )
        return found

    async def shared_ports(self, sandbox_id: str) -> tuple[int, ...]:
        """``allowed_ports``, whichever replica holds the sandbox's tunnel."""
        if sandbox_id in self._live or self.holders is None:
            return self.allowed_ports(sandbox_id)
        details = (await self.holders.details([sandbox_id])).get(sandbox_id)
        return () if details is None else details.ports

    @property
    def count(self) -> int:
        return len(self._live)

    def endpoint(self, sandbox_id: str, port: int | None = None) -> IStreamClientEndpoint:
        """Streams to the laptop's opencode (``port`` None) or to a port it shares."""
        return TunnelEndpoint(self, sandbox_id, port)

    def allowed_ports(self, sandbox_id: str) -> tuple[int, ...]:
        """The ports the sandbox's connected agent shares (its ``--allow-port``), in order;
        none while it is offline."""
        session = self._live.get(sandbox_id)
        return () if session is None else tuple(sorted(session.shared_ports))

    def resource(self, sandbox_id: str) -> WebSocketResource:
        """The WebSocket resource for one authenticated agent connection."""
        factory = TunnelServerFactory(self, sandbox_id)
        factory.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE,
            maxMessagePayloadSize=MAX_MESSAGE,
            autoFragmentSize=0,
            openHandshakeTimeout=HELLO_TIMEOUT,
            closeHandshakeTimeout=5,
        )
        return WebSocketResource(factory)

    def new_session(
        self, sandbox_id: str, send: Callable[[bytes], None], close: Callable[[int, str], None]
    ) -> Session:
        session = Session(
            self.clock,
            send,
            close,
            is_server=True,
            label=sandbox_id,
            ping_interval=self.ping_interval,
            dead_after=self.dead_after,
        )
        self._pending.setdefault(sandbox_id, set()).add(session)
        return session

    def _unpend(self, sandbox_id: str, session: Session) -> None:
        pending = self._pending.get(sandbox_id)
        if pending is not None:
            pending.discard(session)
            if not pending:
                del self._pending[sandbox_id]

    def remembers_revocation(self, sandbox_id: str) -> bool:
        """Whether the hub still remembers that ``sandbox_id`` was revoked (for a minute,
        forgotten at a later revocation)."""
        return sandbox_id in self._revoked

    def attach(self, sandbox_id: str, session: Session, address: str | None = None) -> None:
        self._unpend(sandbox_id, session)
        if address is not None:
            self._addresses[session] = address
        revoked = self._revoked.get(sandbox_id)
        if revoked is not None and self.clock.seconds() - revoked[0] < _REMEMBER_REVOKED:
            # (its token was checked just before the sandbox went: it must not come back)
            session.say_goodbye("revoked", revoked[1], 4003)
            session.connection_lost()
            self._addresses.pop(session, None)
            return
        old = self._live.get(sandbox_id)
        self._live[sandbox_id] = session
        if old is not None:
            self._addresses.pop(old, None)
            old.say_goodbye(
                "replaced", "another agent connected with this sandbox's credentials", 4009
            )
            old.connection_lost()
        agent = session.hello["agent"] if session.hello is not None else "?"
        ports = ", ".join(str(p) for p in sorted(session.shared_ports)) or "none"
        self._log.info(
            "tunnel for {sandbox_id} connected ({agent}; shared ports: {ports})",
            sandbox_id=sandbox_id,
            agent=agent,
            ports=ports,
        )
        if session.version is not None:
            warning = outdated(agent, session.version, self.current_protocol)
            if warning is not None:
                self._log.warn(
                    "tunnel for {sandbox_id}: {warning}", sandbox_id=sandbox_id, warning=warning
                )
        self._record(sandbox_id)

    def detach(self, sandbox_id: str, session: Session) -> None:
        self._unpend(sandbox_id, session)
        if self._live.get(sandbox_id) is not session:
            return  # replaced or revoked already
        del self._live[sandbox_id]
        self._addresses.pop(session, None)
        self._log.info(
            "tunnel for {sandbox_id} disconnected ({why})",
            sandbox_id=sandbox_id,
            why=f"goaway {session.goaway[0]}: {session.goaway[1]}" if session.goaway else "closed",
        )
        self._record(sandbox_id)

    def touch(self, sandbox_id: str) -> None:
        """Tunnel traffic is activity (local sandboxes are never paused, but it shows)."""
        if self._on_data is not None:
            self._on_data(sandbox_id)

    def revoke(
        self, sandbox_id: str, why: str = "this local sandbox was deleted from its workspace"
    ) -> None:
        """Close the sandbox's tunnel and tell its agent to stop for good."""
        now = self.clock.seconds()
        self._revoked = {k: v for k, v in self._revoked.items() if now - v[0] < _REMEMBER_REVOKED}
        self._revoked[sandbox_id] = (now, why)
        # (connections still before their hello too: they were let in with the old token)
        sessions = self._pending.pop(sandbox_id, set())
        live = self._live.pop(sandbox_id, None)
        if live is not None:
            self._addresses.pop(live, None)
        self._held.pop(sandbox_id, None)
        self._gauge()
        for session in [*sessions, *([live] if live is not None else [])]:
            session.say_goodbye("revoked", why, 4003)
            session.connection_lost()

    def close_all(self) -> None:
        """Server shutdown: agents will reconnect when we are back."""
        for session in list(self._live.values()):
            session.say_goodbye("restarting", "the server is stopping", 4001)
        self._live.clear()
        self._addresses.clear()
        self._held.clear()
        self._gauge()

    @property
    def live_ids(self) -> list[str]:
        return list(self._live)

    async def sweep_holders(self) -> None:
        """Every few seconds: our tunnels' rows, and the dead replicas' released."""
        if self.holders is None:
            return
        held = {}
        for sandbox_id, session in list(self._live.items()):
            if self._held.get(sandbox_id) is session:
                held[sandbox_id] = session
            elif sandbox_id not in self._locks:
                self._record(sandbox_id)  # (its row never got written: take it now)
        swept = await self.holders.sweep({i: _details(s) for i, s in held.items()})
        for sandbox_id in swept.released:
            self._log.info(
                "tunnel of {sandbox_id} released: its replica stopped", sandbox_id=sandbox_id
            )
            if self._on_change is not None:
                self._on_change(sandbox_id)
        for sandbox_id in swept.lost:
            self._replaced_elsewhere(sandbox_id, held[sandbox_id])

    async def check_holder(self, sandbox_id: str) -> None:
        """Another replica changed the sandbox's status: if it took the row of our tunnel,
        a newer one landed there, and ours is closed as replaced."""
        session = self._live.get(sandbox_id)
        if self.holders is None or session is None or self._held.get(sandbox_id) is not session:
            return
        try:
            elsewhere = await self.holders.held_elsewhere(sandbox_id)
        except DatabaseUnavailable:
            return  # (the next sweep finds it)
        if elsewhere:
            self._replaced_elsewhere(sandbox_id, session)

    def _replaced_elsewhere(self, sandbox_id: str, session: Session) -> None:
        if self._live.get(sandbox_id) is not session:
            return  # (ended or replaced here meanwhile)
        del self._live[sandbox_id]
        self._addresses.pop(session, None)
        self._held.pop(sandbox_id, None)
        self._log.info(
            "tunnel for {sandbox_id} replaced by a newer one on another replica",
            sandbox_id=sandbox_id,
        )
        # (the agent stops on "replaced": it must not come back and take the row again)
        session.say_goodbye(
            "replaced", "another agent connected with this sandbox's credentials", 4009
        )
        session.connection_lost()
        self._record(sandbox_id)  # (releases nothing: the row is the other replica's)

    async def mark_all_offline(self) -> None:
        """At start nothing is connected yet, whatever the table says after a crash (but
        tunnels other live replicas hold)."""
        if self.holders is not None:
            await self.holders.settle_at_start()
            return
        await self._db.execute(
            "UPDATE sandboxes SET status = 'offline', updated_at = now()"
            " WHERE is_local AND status <> 'offline'"
        )

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.tunnels.set(len(self._live))

    def _record(self, sandbox_id: str) -> None:
        self._gauge()
        lock = self._locks.setdefault(sandbox_id, DeferredLock())

        async def write() -> None:
            async with lock:
                session = self._live.get(sandbox_id)
                live = session is not None
                try:
                    if self.holders is not None:
                        if session is not None:
                            await self.holders.hold(sandbox_id, _details(session))
                            self._held[sandbox_id] = session
                        else:
                            self._held.pop(sandbox_id, None)
                            await self.holders.release(sandbox_id)
                    else:
                        await self._db.execute(
                            "UPDATE sandboxes SET status = %s, error = NULL, updated_at = now()"
                            + (", last_activity_at = now()" if live else "")
                            + " WHERE id = %s AND is_local AND status <> %s",
                            (
                                "running" if live else "offline",
                                sandbox_id,
                                "running" if live else "offline",
                            ),
                        )
                except DatabaseUnavailable:
                    self._log.warn("tunnel status of {sandbox_id} not saved", sandbox_id=sandbox_id)
            if not lock.locked and not lock.waiting:
                self._locks.pop(sandbox_id, None)
            if self._on_change is not None:
                self._on_change(sandbox_id)

        Deferred.fromCoroutine(write()).addErrback(
            lambda f: self._log.failure("saving tunnel status", f)
        )


def _details(session: Session) -> Details:
    agent = session.hello.fields.get("agent") if session.hello is not None else None
    return Details(
        tuple(sorted(session.shared_ports)),
        agent if isinstance(agent, str) else None,
        session.version,
    )


class TunnelServerFactory(WebSocketServerFactory):
    def __init__(self, hub: TunnelHub, sandbox_id: str) -> None:
        super().__init__()
        self.protocol = TunnelServerProtocol
        self.hub = hub
        self.sandbox_id = sandbox_id


# (type: ignore: Autobahn's own two bases disagree on ``peer`` once a mixin comes first)
class TunnelServerProtocol(SessionCarrier, WebSocketServerProtocol):  # type: ignore[misc]
    factory: TunnelServerFactory
    _hello_timer: IDelayedCall | None = None

    def onOpen(self) -> None:
        hub: TunnelHub = self.factory.hub
        sandbox_id: str = self.factory.sandbox_id
        session = hub.new_session(sandbox_id, self.send_frame, self.close_tunnel)
        self.carry(session)
        peer = getattr(self.transport.getPeer(), "host", None)
        session.ready.addCallback(lambda _: hub.attach(sandbox_id, session, peer))
        session.start()
        self._hello_timer = hub.clock.callLater(HELLO_TIMEOUT, self._no_hello)

    def _no_hello(self) -> None:
        if self.session is not None and self.session.version is None:
            self.session.fail("protocol", f"no hello within {HELLO_TIMEOUT:g} s")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.deliver(payload, isBinary)
        self.factory.hub.touch(self.factory.sandbox_id)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        if self.session is not None:
            # detach first, so requests failing with the streams see the sandbox offline
            self.factory.hub.detach(self.factory.sandbox_id, self.session)
            self.session.connection_lost()


@implementer(IStreamClientEndpoint)
@define(eq=False)
class TunnelEndpoint:
    """Connects a protocol to a new stream of the sandbox's live tunnel (the agent connects
    the stream's other end to its opencode)."""

    _hub: TunnelHub
    _sandbox_id: str
    _port: int | None = None  # a shared port of the laptop's, else its opencode

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        session = self._hub.session(self._sandbox_id)
        if session is None:
            return fail(ConnectError("the agent of this local sandbox is not connected"))
        if self._port is not None and self._port not in session.shared_ports:
            # (refused here, before the laptop is asked; the agent would refuse it too)
            return fail(PortNotShared(f"port {self._port} is not shared by this laptop"))

        def attach(stream: Stream) -> IProtocol:
            protocol = factory.buildProtocol(TunnelAddress(self._sandbox_id, stream.id))
            if protocol is None:
                stream.reset("refused")
                raise ConnectError("the factory refused the stream")
            stream.attach(protocol)
            return protocol

        # (a session still in the hub may be past its hello or already lost: open_stream
        # refuses those with ConnectError too)
        return maybeDeferred(session.open_stream, port=self._port).addCallback(attach)
