"""Keep-alive browser connections served by the relay process, request after request.

The front door routes a request (session, role, sandbox status, address) and, when it is a
GET with no body on a plain TCP connection, sends the browser's socket here with the sandbox
connection it had picked and a ``Grant``. From then on this process relays the requests on
that connection itself, as long as each is covered by the grant: a plain head (read by
``request_head.py``, as the front door reads it), a GET with no body, the same Host and
Cookie headers, not one of our ``/_cli/`` paths, not sent by a page of another origin
(``hygiene.cross_origin``: a CORS read from another sandbox), and the grant not run out (it
holds as long as the front door would trust its own cached routing: at most a second). Anything else
goes back to the server with every byte not yet used (``Back.ASK``), where the front door takes
it up as a new connection. While a connection is in use, the server renews its grant; a
revocation cuts it at once; a status change of its sandbox ends the grant.

Per request that is a few microseconds of Python around four system calls, where Twisted's
reactor spends about seventy; event streams (``/event``) run here too, for as long as they
last.

Only the standard library, attrs and httptools: the relay process imports this.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from enum import Enum
from typing import Protocol

from cli_server.proxy import rules
from cli_server.proxy.answer import LAST_CHUNK, AnswerReader, Framing, Read, reframe
from cli_server.proxy.hygiene import plain_upstream_headers
from cli_server.proxy.relay_wire import Back, Grant
from cli_server.proxy.request_head import MAX_HEAD, RequestHead, head_end, parse_head
from cli_server.roles import Role

# As the front door's: for the sandbox to begin its answer, and for the browser's next request.
TIMEOUT = 120.0
# A connection in use asks the server to renew its grant this long before it runs out.
RENEW_BEFORE = 0.5


class _State(Enum):
    IDLE = "idle"  # between requests
    ASKED = "asked"  # a request went to the sandbox; no answer yet
    ANSWERING = "answering"  # its answer is being relayed


class _Then(Enum):
    CLOSE = "close"  # close the browser's connection once what waits is written
    BACK = "back"  # give it back to the server once what waits is written


class Loop(Protocol):
    """What a connection needs of the relay's loop."""

    poll: select.epoll
    clock: Callable[[], float]

    def attach(self, fd: int, conn: KeptConnection, handler: Callable[[int], None]) -> None:
        """Events on ``fd`` go to ``handler`` (one of ``conn``'s)."""

    def detach(self, fd: int) -> None: ...

    def ended(self, conn: KeptConnection) -> None:
        """``conn`` closed both its sockets: tell the server."""

    def hand_back(self, conn: KeptConnection, why: Back, data: bytes) -> None:
        """Send the browser's socket to the server (the loop closes it then)."""

    def relayed(self, sandbox_id: bytes) -> None:
        """One request relayed for this sandbox."""

    def renew(self, conn: KeptConnection) -> None:
        """Ask the server to renew ``conn``'s grant (it answers with ``renewed``)."""


class KeptConnection:
    __slots__ = (
        "id",
        "browser",
        "sandbox",
        "grant",
        "until",
        "buffer",
        "reader",
        "state",
        "framing",
        "raw",
        "close",
        "then",
        "out",
        "to_sandbox",
        "due",
        "first",
        "renewing",
        "blocked",
        "loop",
        "done",
        "_masks",
        "_block",
        "_headers",
    )

    def __init__(
        self,
        loop: Loop,
        conn_id: int,
        browser: socket.socket,
        sandbox: socket.socket,
        grant: Grant,
        until: float,
        data: bytes,
    ) -> None:
        self.loop, self.id, self.grant = loop, conn_id, grant
        self.browser = browser
        self.sandbox: socket.socket | None = sandbox  # None once it is closed
        self.until = until  # the grant holds until then (CLOCK_MONOTONIC, as the server's)
        self.buffer = data  # what the browser sent that is not used yet
        self.reader = AnswerReader()
        self.state = _State.IDLE
        self.framing = Framing.NONE
        self.raw = b""  # the request in flight as the browser sent it
        self.close = False  # the browser's connection ends with this answer
        self.then: _Then | None = None
        self.out: list[bytes] = []  # for the browser
        self.to_sandbox = b""  # what the sandbox's socket did not take yet
        self.due = 0.0  # when the idle browser or the silent sandbox has waited too long
        self.first = True  # served whatever the time: the server has just let it in
        self.renewing = False  # the server was asked to renew the grant, and has not answered
        self.blocked = False  # the browser is behind: the sandbox is not read meanwhile
        self.done = False  # closed, or given back
        self._masks: dict[int, int | None] = {}  # fd: what epoll watches (None: not there)
        self._block = b""  # the last header block seen, and what the sandbox gets for it
        self._headers = b""
        for sock, handler in ((browser, self.from_browser), (sandbox, self.from_sandbox)):
            sock.setblocking(False)
            loop.attach(sock.fileno(), self, handler)
            self._masks[sock.fileno()] = None
        self._watch()  # (then the loop lists it, and calls next_request)

    # what epoll watches

    def _watch(self) -> None:
        """Reading the browser while its unused bytes are few; writing it while something
        waits; the sandbox always (an idle one that closes is noticed) unless the browser is
        behind; writing the sandbox while a request waits."""
        reading = len(self.buffer) <= MAX_HEAD
        self._set(
            self.browser, (select.EPOLLIN if reading else 0) | (select.EPOLLOUT if self.out else 0)
        )
        if self.sandbox is not None:
            wanted = None if self.blocked else select.EPOLLIN
            if self.to_sandbox:
                wanted = (wanted or 0) | select.EPOLLOUT
            self._set(self.sandbox, wanted)

    def _set(self, sock: socket.socket, mask: int | None) -> None:
        fd = sock.fileno()
        now = self._masks.get(fd)
        if mask == now:
            return
        poll = self.loop.poll
        if mask is None:
            poll.unregister(fd)
        elif now is None:
            poll.register(fd, mask)
        else:
            poll.modify(fd, mask)
        self._masks[fd] = mask

    # requests

    def next_request(self) -> None:
        """Takes up the next request, if its head is whole and the grant covers it; else the
        connection goes back to the server."""
        if self.state is not _State.IDLE or self.then is not None or self.out:
            return
        buffer = self.buffer
        size = head_end(buffer)
        if size < 0:
            if len(buffer) > MAX_HEAD or b"\n\n" in buffer or b"\n\r\n" in buffer:
                self.give_back(Back.ASK)  # twisted.web reads (or refuses) such a head
            return
        head = parse_head(buffer[:size], 0) if size <= MAX_HEAD else None
        grant = self.grant
        now = self.loop.clock()
        verdict = self._decide(head) if head is not None else None
        if (
            head is None
            or not isinstance(verdict, rules.Forward)
            or head.method != b"GET"
            or head.host != grant.host
            or head.cookies != grant.cookies
            or (not self.first and now >= self.until)
        ):
            self.give_back(Back.ASK)  # (the server answers what the rules refuse)
            return
        if self.until - now < RENEW_BEFORE and not self.renewing:
            self.renewing = True
            self.loop.renew(self)
        if head.block != self._block:
            self._block = head.block
            self._headers = plain_upstream_headers(
                head.fields.headers,
                head.cookies,
                head.host,
                grant.authorization,
                grant.peer,
                grant.scheme,
            )
        self.raw, self.buffer = buffer[:size], buffer[size:]
        self.close = head.close
        self.state = _State.ASKED
        self.due = now + TIMEOUT
        self.first = False
        self.reader.begin(self)
        self._send_sandbox(b"GET %s HTTP/1.1\r\n%s" % (verdict.target, self._headers))

    def _decide(self, head: RequestHead) -> rules.Verdict:
        """The rulebook's verdict on ``head`` for the grant's session (it was granted for a
        running cloud sandbox; a status change ends the grant)."""
        grant = self.grant
        listener = rules.Listener(grant.scheme, grant.base_host, b"")
        session = rules.Session(Role(grant.role), "running", False)
        return rules.decide(head.asked, listener, session)

    def renewed(self, until: float) -> None:
        """The grant now holds until then: renewed, or over (the connection goes back with
        its next request)."""
        self.until, self.renewing = until, False

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
        if events & select.EPOLLOUT and self.to_sandbox:
            if not self._send_sandbox(self.to_sandbox):
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
        read = self.reader.feed(data)
        if read is Read.BROKEN:
            if self.reader.answered:
                self._drop_sandbox()
                self._finish(_Then.CLOSE)  # cut short: the browser must not take it as whole
            else:
                self._unanswered()
            return
        if read is Read.ENDED:
            if self.framing is Framing.CHUNKED:
                self.out.append(LAST_CHUNK)
            if not self.reader.reusable:
                self._drop_sandbox()
            self._answered()
            return
        self.write()

    def sandbox_lost(self, clean: bool = True) -> None:
        """The sandbox closed its connection (``clean``), or broke it."""
        state = self.state
        self._drop_sandbox()
        if state is _State.ASKED:
            self._unanswered()
        elif state is _State.ANSWERING and self.framing is Framing.UNTIL_CLOSE and clean:
            self.out.append(LAST_CHUNK)  # that is how such a body ends
            self._answered()
        elif state is _State.ANSWERING:
            self._finish(_Then.CLOSE)  # cut short
        else:
            self._finish(_Then.BACK)  # idle: the server finds a new one for what comes

    def _unanswered(self) -> None:
        """No answer (or not HTTP): the server tries this GET itself, on another connection."""
        self._drop_sandbox()
        self.buffer = self.raw + self.buffer
        self.state = _State.IDLE
        self.give_back(Back.DROPPED)

    def _answered(self) -> None:
        self.state = _State.IDLE
        self.due = self.loop.clock() + TIMEOUT
        if self.close:
            self._finish(_Then.CLOSE)
        elif self.sandbox is None:
            self._finish(_Then.BACK)
        else:
            self.write()

    def _finish(self, then: _Then) -> None:
        self.then = then
        self.write()

    def _drop_sandbox(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            self._set(sandbox, None)
            self.loop.detach(sandbox.fileno())
            self._masks.pop(sandbox.fileno(), None)
            sandbox.close()
        self.to_sandbox = b""

    # the answer, as an AnswerReader's client

    def response_head(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Framing:
        answer = reframe(code, reason, headers)
        self.state = _State.ANSWERING
        self.loop.relayed(self.grant.sandbox_id)  # (one the sandbox answers is activity)
        self.framing = answer.framing
        self.out.append(answer.lines + (b"connection: close\r\n\r\n" if self.close else b"\r\n"))
        return answer.framing

    def response_body(self, data: bytes) -> None:
        if self.framing is Framing.LENGTH:
            self.out.append(data)
        else:
            self.out.append(b"%x\r\n%s\r\n" % (len(data), data))  # (chunk(), inlined: per event)

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
            if self.then is None:
                self._watch()
        if self.then is _Then.CLOSE:
            self.close_both()
        elif self.then is _Then.BACK:
            self.give_back(Back.ASK)
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
        self.buffer += data
        if self.state is _State.IDLE:
            self.next_request()
        if not self.done:
            self._watch()

    # the connection

    def expired(self, now: float) -> None:
        if self.then is not None or now < self.due:
            return
        if self.state is _State.ASKED:
            self._drop_sandbox()
            self.give_back(Back.TIMED_OUT)
        elif self.state is _State.IDLE and not self.out:
            self.close_both()  # idle too long
        # (an answer being relayed has no time limit)

    def give_back(self, why: Back) -> None:
        """The browser's socket and what it sent go back to the server."""
        self.done = True
        self._drop_sandbox()
        self._set(self.browser, None)
        self.loop.detach(self.browser.fileno())
        data, self.buffer = (b"" if why is Back.TIMED_OUT else self.buffer), b""
        self.loop.hand_back(self, why, data)

    def close_both(self) -> None:
        if self.done:
            return
        self.done = True
        self._drop_sandbox()
        self._set(self.browser, None)
        self.loop.detach(self.browser.fileno())
        self.browser.close()
        self.loop.ended(self)
