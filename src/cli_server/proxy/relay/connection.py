"""A browser's keep-alive connection served by a relay worker, request after request
(``worker.py`` says how it comes and goes), over a sandbox connection it opens or reuses
(``Worker.take_idle``), while each request is covered by the grant: a plain head
(``request_head.py``, as the router reads it) with no body or a ``Content-Length`` one up to
the grant's cap, the same Host and Cookie headers (so a preview's connection, granted for
``oc-{id}-p{port}``, carries requests for that port only), what ``rules.decide`` forwards for
the grant's role, and the grant not run out. Anything else goes back to the server with every
byte not yet used (``Back.ASK``).

Only the standard library and httptools: the workers import this.
"""

from __future__ import annotations

import errno
import select
import socket
from enum import Enum
from typing import TYPE_CHECKING

from cli_server.domain.roles import Role
from cli_server.proxy import rules
from cli_server.proxy.answer import (
    LAST_CHUNK,
    AnswerReader,
    Framing,
    Read,
    reframe,
    upgrade_answer,
)
from cli_server.proxy.hygiene import plain_upstream_headers
from cli_server.proxy.relay.wire import Back, Grant
from cli_server.proxy.request_head import MAX_HEAD, RequestHead, head_end, parse_head

if TYPE_CHECKING:
    from cli_server.proxy.relay.worker import Worker

# As the server's: for the sandbox to begin its answer, and for the browser's next request.
TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
# A connection in use asks the server to renew its grant this long before it runs out.
RENEW_BEFORE = 0.5
# Methods that may be sent again when a sandbox dropped the request unanswered (with no
# body), as twisted.web's client does.
_IDEMPOTENT = frozenset({b"GET", b"OPTIONS", b"DELETE"})


class _State(Enum):
    IDLE = "idle"  # between requests
    CONNECTING = "connecting"  # a request waits for its sandbox connection
    ASKED = "asked"  # it went to the sandbox (its body may still be coming); no answer yet
    ANSWERING = "answering"  # its answer is being relayed
    SPLICED = "spliced"  # a WebSocket: bytes both ways, as they come, until either side ends


Address = tuple[str, int]


def _set(poll: select.epoll, sock: socket.socket, now: int | None, mask: int | None) -> int | None:
    """Has epoll watch ``mask`` of ``sock`` (None: not at all) instead of ``now``."""
    if mask is None:
        poll.unregister(sock)
    elif now is None:
        poll.register(sock, mask)
    else:
        poll.modify(sock, mask)
    return mask


class KeptConnection:
    __slots__ = tuple(
        """id browser sandbox grant address until buffer reader state framing body_left sent
        repeatable close closing out to_sandbox due first renewing blocked loop done upgrade
        answer active streaming _browser_mask _sandbox_mask _block _headers _listener _session
        _last""".split()
    )

    def __init__(
        self,
        loop: Worker,
        conn_id: int,
        browser: socket.socket,
        grant: Grant,
        until: float,
        data: bytes,
    ) -> None:
        self.loop, self.id, self.grant = loop, conn_id, grant
        self.address: Address = (grant.address.decode("ascii"), grant.port)
        self.browser = browser
        self.sandbox: socket.socket | None = None  # opened for the first request
        self.until = until  # the grant holds until then (CLOCK_MONOTONIC, as the server's)
        self.buffer = data  # what the browser sent that is not used yet
        self.reader = AnswerReader()
        self.state = _State.IDLE
        self.framing = Framing.NONE
        self.body_left = 0  # its body bytes still to pass on
        self.sent = False  # any of it went to the sandbox
        self.repeatable = False  # it may be sent again
        self.close = False  # the browser's connection ends with this answer
        self.closing = False  # the browser's connection closes once what waits is written
        self.out: list[bytes] = []  # for the browser
        self.to_sandbox = b""  # what the sandbox's socket did not take yet
        self.due = 0.0  # when the idle browser or the silent sandbox has waited too long
        self.first = True  # served whatever the time: the server has just let it in
        self.renewing = False  # the server was asked to renew the grant, and has not answered
        self.blocked = False  # the browser is behind: the sandbox is not read meanwhile
        self.done = False  # closed, or given back
        self.upgrade = False  # the request in flight asks for a WebSocket
        self.answer = b""  # ... and the head of its answer, until it is whole
        self.active = False  # a WebSocket's bytes moved since the last tick
        self.streaming = False  # its answer is an event stream (it lasts: not in flight)
        # what epoll watches of each socket (None: not there)
        self._browser_mask: int | None = None
        self._sandbox_mask: int | None = None
        self._block = b""  # the last header block seen, and what the sandbox gets for it
        self._headers = b""
        # The request in flight (or the last one): its head as the browser sent it, read, and
        # as the sandbox gets it. A browser (or a poll) often sends the same request again,
        # which then needs no reading (all of it is a pure function of the head and grant).
        self._last: tuple[bytes, RequestHead, bytes] | None = None
        self._listener = rules.Listener(grant.scheme, grant.base_host, b"")
        # (granted for a running cloud sandbox; a status change cuts the connection)
        self._session = rules.Session(Role(grant.role), "running", False)
        browser.setblocking(False)
        loop.attach(browser.fileno(), self, self.from_browser)
        self._watch()  # (then the loop lists it, and calls next_request)

    # what epoll watches

    def _watch(self) -> None:
        """Reading the browser while its unused bytes are few and the sandbox takes its
        upload; writing it while something waits; the sandbox always (an idle one that
        closes is noticed) unless the browser is behind; writing it while a request waits
        (or its connection is being made)."""
        streaming = self.body_left or self.state is _State.SPLICED
        reading = len(self.buffer) <= MAX_HEAD and not (streaming and self.to_sandbox)
        mask = (select.EPOLLIN if reading else 0) | (select.EPOLLOUT if self.out else 0)
        if mask != self._browser_mask:
            self._browser_mask = _set(self.loop.poll, self.browser, self._browser_mask, mask)
        if self.sandbox is not None:
            if self.state is _State.CONNECTING:
                wanted: int | None = select.EPOLLOUT
            else:
                wanted = None if self.blocked else select.EPOLLIN
                if self.to_sandbox:
                    wanted = (wanted or 0) | select.EPOLLOUT
            if wanted != self._sandbox_mask:
                self._sandbox_mask = _set(self.loop.poll, self.sandbox, self._sandbox_mask, wanted)

    # requests

    def next_request(self) -> None:
        """Takes up the next request, if its head is whole and the grant covers it; else the
        connection goes back to the server."""
        if self.state is not _State.IDLE or self.closing or self.out:
            return
        buffer = self.buffer
        size = head_end(buffer)
        if size < 0:
            if len(buffer) > MAX_HEAD or b"\n\n" in buffer or b"\n\r\n" in buffer:
                self.give_back(Back.ASK)  # twisted.web reads (or refuses) such a head
            return
        now = self.loop.clock()
        if not self.first and now >= self.until:
            self.give_back(Back.ASK)  # (the server routes it afresh)
            return
        raw = buffer[:size]
        last = self._last
        if last is None or last[0] != raw:
            last = self._take(raw)
            if last is None:
                self.give_back(Back.ASK)  # (the server answers what the rules refuse)
                return
            self._last = last
        if self.until - now < RENEW_BEFORE and not self.renewing:
            self.renewing = True
            self.loop.renew(self)
        head = last[1]
        self.buffer = buffer[size:]
        self.upgrade, self.answer = head.fields.upgrade, b""
        self.body_left = head.fields.content_length
        self.repeatable = head.method in _IDEMPOTENT and not self.body_left
        self.close = head.fields.close or self.loop.draining  # (a stopping server: the last)
        self.first = self.sent = self.streaming = False
        if self.sandbox is None and not self._open():
            return
        self._start()

    def _take(self, raw: bytes) -> tuple[bytes, RequestHead, bytes] | None:
        """A request head the grant covers (``raw``), read, and as the sandbox gets it; None
        if the grant does not cover it."""
        grant = self.grant
        head = parse_head(raw, grant.max_body) if len(raw) <= MAX_HEAD else None
        if head is None or head.fields.host != grant.host or head.fields.cookies != grant.cookies:
            return None
        verdict = rules.decide(head.asked, self._listener, self._session)
        if not isinstance(verdict, rules.Forward):
            return None
        # A preview's grant covers its own port only, and never carries opencode's credential
        # to it (the server grants none; this worker refuses one it would send there).
        if verdict.port != (grant.preview or None) or (verdict.port and grant.authorization):
            return None
        if head.block != self._block:
            self._block = head.block
            self._headers = plain_upstream_headers(
                head.fields.headers,
                head.fields.cookies,
                head.fields.host,
                grant.authorization,
                grant.peer,
                grant.scheme,
            )
        upstream = b"%s %s HTTP/1.1\r\n%s" % (head.method, verdict.target, self._headers)
        if head.fields.upgrade:  # (hop by hop: the hygiene drops them, an upgrade needs them)
            upstream = upstream[:-2] + b"connection: Upgrade\r\nupgrade: websocket\r\n\r\n"
        return raw, head, upstream

    def _open(self) -> bool:
        """A sandbox connection for the request: a kept-alive one, or a new one (connected
        without waiting: ``from_sandbox`` sends once it is up). False if none can be had
        (the connection has gone back to the server)."""
        self.reader = AnswerReader()  # (one per sandbox connection: llhttp ends with it)
        sock = self.loop.take_idle(self.address)
        if sock is not None:
            self._attach(sock)
            return True
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET)
        except OSError:
            self._unanswered()
            return False
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._attach(sock)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self._unanswered()
            return False
        if code:
            self.state = _State.CONNECTING
            self.due = self.loop.clock() + CONNECT_TIMEOUT
            self._watch()
            return False
        return True

    def _attach(self, sock: socket.socket) -> None:
        self.sandbox, self._sandbox_mask = sock, None
        self.loop.attach(sock.fileno(), self, self.from_sandbox)

    def _start(self) -> None:
        """Sends the request, with what of its body is here."""
        part = self.buffer[: self.body_left]
        self.buffer = self.buffer[len(part) :]
        self.body_left -= len(part)
        self.state = _State.ASKED
        self.due = self.loop.clock() + TIMEOUT
        self.reader.begin(self)
        self.sent = True
        assert self._last is not None
        self._send_sandbox(self._last[2] + part)

    def _send_sandbox(self, data: bytes) -> bool:
        """False if the sandbox's connection broke (``sandbox_lost`` has dealt with it)."""
        assert self.sandbox is not None
        try:
            sent = self.sandbox.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.sandbox_lost()
            return False
        self.to_sandbox = data[sent:]
        self._watch()
        return True

    # the sandbox's side

    def from_sandbox(self, events: int) -> None:
        if self.sandbox is None:
            return
        if self.state is _State.CONNECTING:
            if self.sandbox.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._unanswered()  # refused, unreachable: the server asks the backend again
            else:
                self._start()
            return
        if events & select.EPOLLOUT and self.to_sandbox:
            if not self._send_sandbox(self.to_sandbox):  # (and the upload may go on)
                return
        if not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            data = self.sandbox.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self.sandbox_lost(clean=False)  # a reset: not how any answer ends
            return
        if not data or self.state is _State.IDLE:
            self.sandbox_lost()  # (an idle connection that talks is not one to reuse either)
            return
        if self.state is _State.SPLICED:
            self.active = True
            self.out.append(data)
            self.write()
            return
        if self.upgrade:
            self._upgrade_answer(self.answer + data)
            return
        read = self.reader.feed(data)
        if read is Read.BROKEN:
            if self.reader.answered:
                self._drop_sandbox()
                self._finish()  # cut short: the browser must not take it as whole
            else:
                self._unanswered()
            return
        if read is Read.ENDED:
            if self.framing is Framing.CHUNKED:
                self.out.append(LAST_CHUNK)
            if not self.reader.reusable or self.close:
                self._drop_sandbox()  # (or out of step: see ``response_head``)
            self._answered()
            return
        self.write()

    def _upgrade_answer(self, buffered: bytes) -> None:
        """The answer to an upgrade (``answer.upgrade_answer``): a 101 passes cleaned and the
        splice begins; any other answer's head passes cleaned and the connection ends."""
        code, cleaned, rest = upgrade_answer(buffered)
        if code is None:
            self.answer = rest
            return
        self.answer = b""
        if code == 101:
            self.state = _State.SPLICED
            if self.buffer:  # (what the browser sent after its upgrade request)
                early, self.buffer = self.buffer, b""
                self._send_sandbox(early)
        else:
            self._drop_sandbox()
            self.closing = True
        if code > 0:
            self.loop.relayed(self.grant.sandbox_id)
            self.out += (cleaned, rest) if code == 101 else (cleaned,)
        self.write()

    def sandbox_lost(self, clean: bool = True) -> None:
        """The sandbox closed its connection (``clean``), or broke it."""
        state = self.state
        self._drop_sandbox()
        if state in (_State.ASKED, _State.CONNECTING):
            self._unanswered()
        elif state is _State.ANSWERING and self.framing is Framing.UNTIL_CLOSE and clean:
            self.out.append(LAST_CHUNK)  # that is how such a body ends
            self._answered()
        elif state in (_State.ANSWERING, _State.SPLICED):
            self._finish()  # cut short, or a WebSocket that ended
        # (idle: the next request opens another)

    def _unanswered(self) -> None:
        """No answer (or not HTTP). A request the sandbox may get again goes back whole, for
        the server to try (it asks the backend where the sandbox is now); one that may not is
        answered by the server with its page."""
        self._drop_sandbox()
        self.state = _State.IDLE
        if self.repeatable or not self.sent:
            assert self._last is not None
            self.buffer = self._last[0] + self.buffer
            self.give_back(Back.DROPPED)
        else:
            self.give_back(Back.FAILED)

    def _answered(self) -> None:
        self.state = _State.IDLE
        self.due = self.loop.clock() + TIMEOUT
        if self.close:
            self._finish()
        else:
            self.write()

    def _finish(self) -> None:
        self.closing = True
        self.write()

    def _drop_sandbox(self, keep: bool = False) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            if self._sandbox_mask is not None:
                self.loop.poll.unregister(sandbox)
                self._sandbox_mask = None
            self.loop.detach(sandbox.fileno())
            if keep:
                self.loop.give_idle(self.address, sandbox)
            else:
                sandbox.close()
        self.to_sandbox = b""

    # the answer, as an AnswerReader's client

    def response_head(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Framing:
        lines, self.framing = reframe(code, reason, headers)
        self.state = _State.ANSWERING
        self.streaming = any(
            name.lower() == b"content-type" and value.lower().startswith(b"text/event-stream")
            for name, value in headers
        )
        self.loop.relayed(self.grant.sandbox_id)  # (one the sandbox answers is activity)
        # An answer that begins before its request was all sent (the upload's rest unread,
        # or not yet written) leaves the sandbox expecting bytes this request will never
        # send: neither connection may carry another request, or the next one's bytes would
        # be read as this one's body, and a request hidden in them would pass unchecked.
        self.close = self.close or self.body_left > 0 or bool(self.to_sandbox)
        self.out.append(lines + (b"connection: close\r\n\r\n" if self.close else b"\r\n"))
        return self.framing

    def response_body(self, data: bytes) -> None:
        if self.framing is Framing.LENGTH:
            self.out.append(data)
        else:
            self.out.append(b"%x\r\n%s\r\n" % (len(data), data))  # (chunked, per event)

    # the browser's side

    def write(self) -> None:
        """Sends what waits; while the browser is behind, the sandbox is not read, so what
        waits here is at most one read."""
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            try:
                sent = self.browser.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close_both()
                return
            out.clear()
            if sent < len(data):
                out.append(data[sent:])
                if not self.blocked:
                    self.blocked = True
                    self._watch()
                return
        if self.blocked:  # (what epoll watches changes only then: not once per event)
            self.blocked = False
            if not self.closing:
                self._watch()
        if self.closing:
            self.close_both()
        elif self.state is _State.IDLE and self.buffer:
            self.next_request()

    def from_browser(self, events: int) -> None:
        if events & select.EPOLLOUT:
            self.write()
        if self.done or not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            data = self.browser.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close_both()  # the browser left
            return
        if self.state is _State.SPLICED:
            self.active = True
            if self.sandbox is not None:
                self._send_sandbox(self.to_sandbox + data)
            return
        if self.body_left and self.state is not _State.CONNECTING:
            part = data[: self.body_left]
            self.body_left -= len(part)
            data = data[len(part) :]
            if self.sandbox is not None and self.state is _State.ASKED:
                self.due = self.loop.clock() + TIMEOUT  # an upload may be slow, not stalled
                if not self._send_sandbox(self.to_sandbox + part):
                    return
            # (else the answer came, or the sandbox went: the rest of the upload is dropped)
        self.buffer += data
        if self.state is _State.IDLE:
            self.next_request()
        if not self.done:
            self._watch()

    # the connection

    @property
    def in_flight(self) -> bool:
        """Whether a request is under way (a stopping server waits for it); event streams
        and WebSockets last for hours and are not waited for."""
        if self.done or self.state is _State.SPLICED or self.streaming:
            return False
        return self.state is not _State.IDLE or bool(self.out) or bool(self.buffer)

    def drain(self) -> None:
        """The server stops: closes now if idle, else after the answer under way."""
        if self.done:
            return
        self.close = True
        if self.state is _State.IDLE and not self.out and not self.buffer:
            self.close_both()

    def expired(self, now: float) -> None:
        if self.closing or now < self.due:
            return
        if self.state is _State.CONNECTING:
            self._unanswered()
        elif self.state is _State.ASKED:
            self._drop_sandbox()
            self.give_back(Back.TIMED_OUT)
        elif self.state is _State.IDLE and not self.out:
            self.close_both()  # idle too long
        # (an answer being relayed has no time limit)

    def give_back(self, why: Back) -> None:
        """The browser's socket and what it sent go back to the server."""
        self._end()
        keep = why in (Back.ASK, Back.DROPPED)
        data, self.buffer = (self.buffer if keep else b""), b""
        self.loop.hand_back(self, why, data)

    def close_both(self) -> None:
        if self.done:
            return
        self._end()
        self.browser.close()
        self.loop.ended(self)

    def _end(self) -> None:
        """The sandbox's connection, idle and fit for another request, goes to the loop's
        pool, else it closes; the loop forgets both."""
        self.done = True
        idle = self.state is _State.IDLE and not self.to_sandbox
        self._drop_sandbox(keep=idle and self.sandbox is not None)
        if self._browser_mask is not None:
            self.loop.poll.unregister(self.browser)
            self._browser_mask = None
        self.loop.detach(self.browser.fileno())
