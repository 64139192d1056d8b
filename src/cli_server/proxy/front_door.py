"""The listening port's protocol: relays the common sandbox request itself, gives every other
connection to twisted.web.

twisted.web parses each request into a ``Request`` with header objects, and its client
(``Agent``) does the same for each answer; for a proxy that was most of the time spent per
request, one Python reactor serving a tenth of what nginx does. The front door reads each
request head itself (``request_head.py``, strict), asks ``FastPath`` whether it may relay
it, and if so sends it over a pooled keep-alive connection (``upstream.py``) and copies the
answer back, re-framed, with flow control both ways; or, for a GET with no body, gives the
connection to the relay process, which serves it from then on while its requests are like
that one (``relay_keepalive.py``, ``stream_relay.py``). Requests the fast path does not take
(the main site, tickets, pages of ours, WebSocket upgrades, anything unusual) are not
answered here: the connection is handed, with every byte of that request, to twisted.web's
channel for good, and ``HostDispatcher`` serves it as before.
"""

from __future__ import annotations

import socket
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cli_server.client_address import TrustedProxies
from cli_server.nodelay import no_delay
from cli_server.proxy.answer import LAST_CHUNK, Framing, chunk, reframe
from cli_server.proxy.fast_path import FastPath, Route
from cli_server.proxy.pages import PAGE_HEADERS, STATUS_TEXT, page_html
from cli_server.proxy.relay_wire import Back, Grant
from cli_server.proxy.request_head import MAX_HEAD, RequestHead, head_end, parse_head
from cli_server.proxy.send_now import send_now
from cli_server.proxy.takeover import hand_over
from cli_server.proxy.upstream import UpstreamConnection
from cli_server.web.request import MAX_SANDBOX_BODY

# Methods that may be sent again when a sandbox dropped the request unanswered, as
# twisted.web's client does (with no body; HEAD never comes here).
_IDEMPOTENT = frozenset({b"GET", b"OPTIONS", b"DELETE"})


@define(eq=False)
class _Exchange:
    """One request in flight on a browser connection."""

    head: RequestHead
    route: Route | None = None
    upstream: UpstreamConnection | None = None
    raw_head: bytes = b""
    request: bytes = b""  # the head as the sandbox gets it
    body_left: int = 0  # body bytes still to come from the browser
    body_sent: int = 0  # body bytes passed on to the sandbox
    pending: list[bytes] = field(factory=list)  # body bytes before the upstream is there
    reused: bool = False
    retried: bool = False
    timed_out: bool = False
    framing: Framing | None = None  # set once the answer's head is in
    close: bool = False  # the browser connection ends with this answer
    waiting: bool = False  # for the sandbox to begin its answer, on the connection's timer

    @property
    def repeatable(self) -> bool:
        return self.head.method in _IDEMPOTENT and not self.head.content_length


@frozen
class _Lease:
    """A connection given to the relay process (``stream_relay.Lease``): its grant is renewed
    while the request it was given with would be routed the same way, and it comes back
    through the port's factory."""

    fast: FastPath
    factory: FrontDoorFactory
    head: RequestHead
    route: Route

    def renew(self) -> float | None | Deferred[float | None]:
        return self.fast.renewal(self.head, self.route)

    def take_back(self, sock: socket.socket, data: bytes, why: Back, sandbox_id: str) -> None:
        self.factory.take_back(sock, data, why, sandbox_id)


@implementer(IPushProducer)
class _Upload:
    """What the sandbox's connection pauses while an upload outruns it: the browser's reading,
    through the door, which also pauses reading for reasons of its own. It is never told to
    stop the browser: a sandbox that drops the upload gets an answer to the browser instead."""

    def __init__(self, door: FrontDoor) -> None:
        self._door = door

    def pauseProducing(self) -> None:
        self._door.hold(True)

    def resumeProducing(self) -> None:
        self._door.hold(False)

    def stopProducing(self) -> None:
        pass


class FrontDoor(Protocol):
    _log = Logger()

    def __init__(self, fast: FastPath, site: Any, address: Any, reactor: Any) -> None:
        self._fast, self._site, self._address, self._reactor = fast, site, address, reactor
        self._buffer = b""  # bytes read and not yet used: the next request's head, at least
        self._exchange: _Exchange | None = None
        self._out: list[bytes] = []  # answer bytes gathered in one read from the upstream
        # Reading from the browser stops while we wait (a lookup, a pipelined request, the
        # upstream connection) or while the sandbox cannot take an upload's bytes as fast.
        self._waiting = False
        self._held = False
        self._reading = True
        self._gone = False  # the browser left, or the connection went to twisted.web
        self._timer: IDelayedCall | None = None  # one timer: idle, answer, upload, lookup
        self._due = 0.0
        self._peer = b""
        self._live: int | None = None  # our handle in fast.live while an event stream runs
        # Whether the next request may go to the relay process with this connection: not
        # when it just came back from there unanswered (see ``FrontDoorFactory.take_back``).
        self._may_pass = True
        self.replay: tuple[bytes, Back] | None = None  # what it brought back from there

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self._peer = str(getattr(self.transport.getPeer(), "host", "")).encode()  # type: ignore[union-attr]
        self._deadline(self._fast.timeout)
        if self.replay is not None:
            data, why = self.replay
            self.replay = None
            if why is Back.TIMED_OUT:
                self._page(504, "The sandbox is not answering", "It took too long. Try again.")
                return
            self._may_pass = why is not Back.DROPPED  # (this time we try it ourselves)
            self.dataReceived(data)

    def _proxies(self) -> TrustedProxies:
        trusted = getattr(self._site, "trusted_proxies", None)
        return trusted if isinstance(trusted, TrustedProxies) else TrustedProxies()

    def _client(self, head: RequestHead) -> bytes:
        """The client's address for X-Forwarded-For, by the one rule (``client_address``)."""
        trusted = self._proxies()
        if not trusted.trusts_peer(self._peer.decode()):
            return self._peer
        fields = head.fields.headers
        return trusted.client(
            self._peer.decode(),
            [v for n, v in fields if n.lower() == b"x-forwarded-for"],
            [v for n, v in fields if n.lower() == b"forwarded"],
        ).encode()

    # the browser's side

    def dataReceived(self, data: bytes) -> None:
        if self._gone:
            return  # (closing: what still arrives is not a request)
        ex = self._exchange
        if ex is not None and ex.body_left:
            data = self._body(ex, data)
            if not data:
                return
        self._buffer += data
        if ex is None:
            self._next()
        elif len(self._buffer) > MAX_HEAD:
            self._wait(True)  # a pipelined request waits; don't read more meanwhile

    def _body(self, ex: _Exchange, data: bytes) -> bytes:
        """Passes the body part of ``data`` on; returns what follows it."""
        part = data[: ex.body_left]
        ex.body_left -= len(part)
        self._deadline(self._fast.timeout)  # an upload may be slow, not stalled
        if ex.upstream is None:
            ex.pending.append(part)
        else:
            ex.body_sent += len(part)
            ex.upstream.write(part)
            if not ex.body_left:
                ex.upstream.transport.unregisterProducer()  # type: ignore[union-attr]
                self.hold(False)
                self._wait_answer(ex)
        return data[len(part) :]

    def _next(self) -> None:
        """Take up the next request, once its head is whole."""
        size = head_end(self._buffer)
        if size < 0:
            if len(self._buffer) > MAX_HEAD or b"\n\n" in self._buffer or b"\n\r\n" in self._buffer:
                self._hand_off(self._buffer)  # twisted.web reads (or refuses) such a head
            return
        head = parse_head(self._buffer[:size], MAX_SANDBOX_BODY) if size <= MAX_HEAD else None
        if head is None:
            self._hand_off(self._buffer)
            return
        ex = self._exchange = _Exchange(head)
        routing = self._fast.route(head)
        if isinstance(routing, Deferred):
            self._wait(True)  # a database or backend lookup: wait, reading nothing more
            self._deadline(self._fast.timeout)
            routing.addCallbacks(self._routed, self._route_failed, (ex,), {}, (ex,))
            routing.addErrback(self._crashed)
        else:
            self._routed(routing, ex)

    def _route_failed(self, failure: Failure, ex: _Exchange) -> None:
        self._log.failure("routing {target}", failure, target=ex.head.target)
        if ex is self._exchange and not self._gone:
            self._hand_off(self._buffer)  # (the head is still there) SandboxSite answers

    def _crashed(self, failure: Failure) -> None:
        self._log.failure("proxying", failure)
        self._abandon()

    def _routed(self, route: Route | None, ex: _Exchange) -> None:
        if self._gone or ex is not self._exchange:
            return
        if route is None:
            self._hand_off(self._buffer)
            return
        self._wait(False)
        head = ex.head
        ex.route = route
        ex.raw_head, self._buffer = self._buffer[: head.size], self._buffer[head.size :]
        ex.request = self._fast.upstream_head(head, route, self._client(head))
        ex.body_left = head.content_length
        if ex.body_left:
            rest, self._buffer = self._buffer, b""
            self._buffer = self._body(ex, rest)
            if ex.body_left:
                self._wait(True)  # until the upstream connection can take the body
        self._connect(ex)

    def _connect(self, ex: _Exchange) -> None:
        assert ex.route is not None
        reused = self._fast.pool.take(ex.route)
        if reused is not None:
            self._send(reused, ex, True)
            return
        connecting = self._fast.pool.connect(ex.route)
        connecting.addCallbacks(self._send, self._unreachable, (ex, False), {}, (ex,))
        connecting.addErrback(self._crashed)

    def _send(self, upstream: UpstreamConnection, ex: _Exchange, reused: bool) -> None:
        if self._gone or ex is not self._exchange:
            self._fast.pool.give_back(upstream)  # unused: the browser left meanwhile
            return
        ex.upstream, ex.reused = upstream, reused
        if self._pass_on(ex, upstream):
            return  # (the relay process counts it, with what follows)
        if not ex.retried and ex.route is not None:
            self._fast.used(ex.route)
        body, ex.pending = b"".join(ex.pending), []
        ex.body_sent += len(body)
        upstream.start(self, ex.request + body)
        if ex.body_left:
            upstream.transport.registerProducer(_Upload(self), True)  # type: ignore[union-attr]
            self._wait(False)
        else:
            self._wait_answer(ex)

    def _pass_on(self, ex: _Exchange, upstream: UpstreamConnection) -> bool:
        """A GET with no body goes, with its browser connection and the sandbox connection
        picked for it, to the relay process, which serves the connection from then on while
        its requests are like this one (``relay_keepalive.py``). True if it took them."""
        relay, route, head, factory = self._fast.relay, ex.route, ex.head, self.factory
        if relay is None or route is None or factory is None or not self._may_pass:
            return False
        if self._proxies().trusts_peer(self._peer.decode()):
            return False  # a proxy's connection carries many clients; the grant names one
        if head.method != b"GET" or head.content_length or not relay.ready:
            return False
        live = self._fast.live
        if live is not None and live.revoked(route.whose, route.revocations):
            return False  # (this request was let in before; the connection is not)
        grant = Grant(
            head.host,
            head.cookies,
            route.authorization,
            self._peer,
            self._fast.scheme,
            route.sandbox_id.encode(),
            self._fast.base_host,
            int(route.role),
        )
        seconds = self._fast.grant_seconds(route)
        lease = _Lease(self._fast, factory, head, route)
        data = ex.raw_head + self._buffer
        if not relay.serve(
            self.transport, upstream.transport, grant, seconds, data, route.whose, lease
        ):
            return False
        self._gone = True
        self._stop_timer()
        self._exchange = None
        upstream.client, upstream.pool = None, None
        relay.let_go(self.transport, upstream.transport)
        return True

    def _wait_answer(self, ex: _Exchange) -> None:
        """Time the sandbox's answer from the end of the upload, however long that took."""
        if ex.framing is None:
            ex.waiting = True
            self._deadline(self._fast.timeout)

    def _unreachable(self, failure: Failure, ex: _Exchange) -> None:
        if not self._gone and ex is self._exchange:
            self._failed(ex, sent=False)

    def _expired(self) -> None:
        ex = self._exchange
        if ex is None:
            self._close()  # idle too long
        elif ex.waiting and ex.upstream is not None:
            ex.timed_out = True  # upstream_lost answers the browser
            ex.upstream.transport.abortConnection()  # type: ignore[union-attr]
        elif ex.framing is None:
            self._abandon()  # a lookup or an upload that stalled
        # (else an answer is streaming: it has no time limit)

    def _failed(self, ex: _Exchange, sent: bool) -> None:
        """No answer came. A request that did not reach the sandbox, or that may be sent
        again, goes to SandboxSite, which knows what to show (it asks the backend again).
        Others get a page: a POST must not reach opencode twice."""
        assert ex.route is not None
        self._fast.failed(ex.route)
        ex.waiting = False
        if not sent:
            self._hand_off(ex.raw_head + b"".join(ex.pending) + self._buffer)
        elif ex.repeatable and not ex.timed_out:
            self._hand_off(ex.raw_head + self._buffer)
        elif ex.timed_out:
            self._page(504, "The sandbox is not answering", "It took too long. Try again.")
        else:
            self._page(503, *STATUS_TEXT["starting"], refresh=3)  # as SandboxSite says it

    def _page(self, status: int, title: str, text: str, refresh: int | None = None) -> None:
        body = page_html(title, text, dashboard=self._fast.dashboard, refresh=refresh)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, title.encode())]
        head += [name + b": " + value + b"\r\n" for name, value in PAGE_HEADERS]
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self._exchange = None
        self._out.clear()
        send_now(self.transport, b"".join(head) + body)
        self._close()

    # the sandbox's side (see upstream.Client)

    def response_head(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Framing:
        ex = self._exchange
        assert ex is not None and ex.upstream is not None
        ex.waiting = False
        answer = reframe(code, reason, headers)
        out = [answer.lines]
        # An answer before the whole body came ends the connection: the rest is not read.
        ex.close = ex.head.close or ex.body_left > 0
        if ex.close:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        self._out.append(b"".join(out))
        ex.framing = answer.framing
        self.transport.registerProducer(ex.upstream.transport, True)  # type: ignore[union-attr]
        if answer.event_stream:
            self._list(ex)
        return answer.framing

    def _list(self, ex: _Exchange) -> None:
        """An event stream runs for hours: a revocation cuts it here (and one that came while
        we waited for this answer, at once)."""
        live, route = self._fast.live, ex.route
        if live is None or route is None:
            return
        self._live = live.add(route.whose, route.revocations, self._abandon)
        if self._live is None:
            self._abandon()

    def response_body(self, data: bytes) -> None:
        ex = self._exchange
        if ex is None:
            return
        if ex.framing is Framing.LENGTH:
            self._out.append(data)
        else:
            self._out.append(chunk(data))

    def flush(self) -> None:
        out = self._out
        if out and not self._gone:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            send_now(self.transport, data)

    def response_end(self, keep_alive: bool) -> None:
        ex = self._exchange
        if ex is None or ex.upstream is None:
            return
        if self._live is not None:
            self._unlist()
        self._may_pass = True
        if ex.framing in (Framing.CHUNKED, Framing.UNTIL_CLOSE):
            self._out.append(LAST_CHUNK)
        self.flush()
        upstream: Any = ex.upstream.transport
        if not self._gone:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
        if keep_alive and not ex.body_left:
            upstream.resumeProducing()  # (a slow reader may have paused it last)
            self._fast.pool.give_back(ex.upstream)
        elif ex.body_left:
            upstream.abortConnection()  # answered early: it need not read the rest
        else:
            upstream.loseConnection()
        self._exchange = None
        if self._gone:
            return
        if ex.close:
            self._close()
            return
        self.hold(False)
        self._wait(False)
        self._deadline(self._fast.timeout)
        if self._buffer:
            try:  # (we are in the sandbox connection's call: its caller must not see our bugs)
                self._next()
            except Exception:
                self._crashed(Failure())

    def upstream_lost(self, answered: bool, clean: bool = True) -> None:
        ex = self._exchange
        if ex is None or self._gone:
            return
        assert ex.upstream is not None
        if ex.body_left:
            self.hold(False)  # (the upload's producer went with the connection)
        if answered and ex.framing is Framing.UNTIL_CLOSE and clean:
            self.response_end(False)  # that is how such a body ends (a reset is not)
        elif answered:
            self.flush()
            self._exchange = None
            self._close()  # cut short: the browser must not take a part for the whole
        elif (
            ex.reused and ex.repeatable and not (ex.retried or ex.timed_out or ex.upstream.received)
        ):
            # A pooled connection the sandbox had closed meanwhile: once more, on a new one.
            ex.retried = True
            ex.upstream = None
            ex.waiting = False
            self._connect(ex)
        else:
            self._failed(ex, sent=True)

    # the connection

    def _hand_off(self, data: bytes) -> None:
        """twisted.web serves this connection from now on, starting with ``data``."""
        self._gone = True
        self._stop_timer()
        self._exchange = None
        self._waiting = self._held = False
        self._apply_reading()
        transport: Any = self.transport
        channel = self._site.buildProtocol(self._address)
        hand_over(transport, channel)
        channel.makeConnection(transport)
        if data:
            channel.dataReceived(data)

    def _abandon(self) -> None:
        """Give up on this connection and its request, if any."""
        self._drop_exchange()
        if not self._gone:
            self._close()

    def _close(self) -> None:
        self._gone = True
        self._stop_timer()
        transport: Any = self.transport
        if transport.producer is not None:
            # (a registered producer would keep the connection open: Twisted resumes it
            # instead of closing once the buffer is written)
            transport.unregisterProducer()
        transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self._gone = True
        self._stop_timer()
        self._drop_exchange()
        self._unlist()

    def _unlist(self) -> None:
        if self._live is not None and self._fast.live is not None:
            self._fast.live.remove(self._live)
        self._live = None

    def _drop_exchange(self) -> None:
        """The request in flight is given up: its answer is not wanted, nor its connection."""
        ex, self._exchange = self._exchange, None
        if ex is not None and ex.upstream is not None:
            ex.upstream.client = None
            ex.upstream.transport.abortConnection()  # type: ignore[union-attr]

    def hold(self, held: bool) -> None:
        """The sandbox cannot take an upload's bytes as fast (``_Upload``), or now can."""
        self._held = held
        self._apply_reading()

    def _wait(self, waiting: bool) -> None:
        self._waiting = waiting
        self._apply_reading()

    def _apply_reading(self) -> None:
        reading = not (self._waiting or self._held)
        if reading != self._reading:
            self._reading = reading
            if reading:
                self.transport.resumeProducing()  # type: ignore[union-attr]
            else:
                self.transport.pauseProducing()  # type: ignore[union-attr]

    def _deadline(self, seconds: float) -> None:
        """Sets when the connection's one timer should act. Only a time is stored: the timer
        re-arms itself when it finds its time moved on, so a request costs no timer calls.
        (Both waits are ``fast.timeout``, so a deadline is never moved sooner.)"""
        self._due = self._reactor.seconds() + seconds
        if self._timer is None:
            self._timer = self._reactor.callLater(seconds, self._check_deadline)

    def _check_deadline(self) -> None:
        left = self._due - self._reactor.seconds()
        if left > 0:
            self._timer = self._reactor.callLater(left, self._check_deadline)
            return
        self._timer = None
        self._expired()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class FrontDoorFactory(Factory):
    """What each listening port serves: a FrontDoor per connection, over ``site``."""

    noisy = False

    def __init__(self, site: Any, fast: FastPath, reactor: Any) -> None:
        self.site, self.fast, self._reactor = site, fast, reactor
        self._replay: tuple[bytes, Back] | None = None  # for the connection being taken back

    def startFactory(self) -> None:
        self.site.doStart()

    def stopFactory(self) -> None:
        self.site.doStop()
        self.fast.pool.close_idle()

    def buildProtocol(self, addr: Any) -> FrontDoor:
        door = FrontDoor(self.fast, self.site, addr, self._reactor)
        door.factory = self
        door.replay, self._replay = self._replay, None
        return door

    def take_back(self, sock: socket.socket, data: bytes, why: Back, sandbox_id: str) -> None:
        """A connection the relay process served comes back: a FrontDoor takes it up as a
        new one, starting with ``data``, the bytes the browser sent that were not used."""
        if why is Back.TIMED_OUT:
            self.fast.failed_sandbox(sandbox_id)  # it may have moved: ask the backend next time
        self._replay = (data, why)
        try:
            sock.setblocking(False)
            self._reactor.adoptStreamConnection(sock.fileno(), sock.family, self)
        except OSError:
            pass  # (the browser left meanwhile: nothing to take up)
        finally:
            self._replay = None
            sock.close()  # (the reactor has its own descriptor)
