"""Keep-alive connections served by a relay worker's loop, driven step by step over real
sockets (the sandbox: a listening socket on 127.0.0.1 the worker connects to itself) with a
hand-moved clock (no child process: ``test_relay_workers.py`` starts real ones)."""

from __future__ import annotations

import socket
import struct

import pytest

from cli_server.proxy.relay.connection import KeptConnection
from cli_server.proxy.relay.wire import (
    BACK,
    ID,
    RENEWED,
    Back,
    Grant,
    keep_message,
    read_activity,
)
from cli_server.proxy.relay.worker import Worker

HOST = b"oc-0b6f1a3e-1111-4222-8333-444455556666.localhost:8080"
COOKIE = b"cli_sandbox=tok; theme=dark"
GRANT = Grant(
    HOST,
    (COOKIE,),
    b"Basic b3BlbmNvZGU6cHc=",
    b"10.1.2.3",
    b"http",
    b"s1",
    b"localhost",
    2,
    b"127.0.0.1",
    0,  # (each test's listening socket's)
    1000,
)


def get(path: bytes = b"/x", *extra: bytes, cookie: bytes = COOKIE, host: bytes = HOST) -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: " + host, b"Cookie: " + cookie, *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
CORP = (  # on every sandbox answer
    b"cross-origin-resource-policy: same-origin\r\n"
    b"content-security-policy: frame-ancestors 'self'\r\n"
)


class Kept:
    """A worker serving one browser connection: ``browser`` is the far end of its socket,
    ``sandbox`` the sandbox's end of the connection the worker opened (the latest),
    ``control`` the server's end of the control socket, ``relay_control`` the worker's."""

    def __init__(self, first: bytes = b"", seconds: float = 1.0, grant: Grant = GRANT) -> None:
        self.now = 100.0
        self.control, self.relay_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.relay = Worker(self.relay_control, clock=lambda: self.now)
        self.listening = socket.create_server(("127.0.0.1", 0))
        self.listening.settimeout(5)
        self.browser, browser_near = socket.socketpair()
        for far in (self.browser, self.control):
            far.settimeout(5)
        self._sandbox: socket.socket | None = None
        grant = grant._replace(port=self.listening.getsockname()[1])
        message = keep_message(7, self.now + seconds, grant, first or get())
        socket.send_fds(self.control, [message], [browser_near.fileno()])
        browser_near.close()  # (the worker has its own copy now, as from the server)
        self.turn()

    @property
    def sandbox(self) -> socket.socket:
        if self._sandbox is None:
            self._sandbox = self.accept()
        return self._sandbox

    @property
    def port(self) -> int:
        port: int = self.listening.getsockname()[1]
        return port

    def accept(self) -> socket.socket:
        """The next connection the worker opened to the sandbox."""
        self.turn()
        self._sandbox, _ = self.listening.accept()
        self._sandbox.settimeout(5)
        self.turn()
        return self._sandbox

    def turn(self) -> None:
        for _ in range(4):
            assert self.relay.step(0)

    def upstream(self) -> bytes:
        """What the sandbox got."""
        self.turn()
        return _drain(self.sandbox)

    def got(self) -> bytes:
        """What the browser got."""
        self.turn()
        return _drain(self.browser)

    def answer(self, data: bytes) -> bytes:
        self.sandbox.sendall(data)
        return self.got()

    def report(self, kinds: bytes = b"BE") -> tuple[bytes, list[int]]:
        """The relay's next message to the server of these kinds (see wire.py): by
        default a connection that ended or comes back, not activity or renewals."""
        self.turn()
        while True:
            msg, fds, _, _ = socket.recv_fds(self.control, 1 << 18, 2)
            if msg[:1] in kinds:
                return msg, fds

    def back(self) -> tuple[Back, bytes, socket.socket]:
        """The connection, given back: why, the bytes, and the browser's socket."""
        msg, fds = self.report()
        assert msg[:1] == b"B" and len(fds) == 1, msg
        _, conn_id, why = BACK.unpack_from(msg)
        assert conn_id == 7 and self.relay.kept_count == 0
        return Back(why), msg[BACK.size :], socket.socket(fileno=fds[0])


def _drain(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    out = b""
    try:
        while data := sock.recv(65536):
            out += data
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return out


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_requests_are_relayed_cleaned_one_after_another_and_counted() -> None:
    k = Kept(get(b"/file?token=secret&directory=%2Ftmp", b"Authorization: Bearer ours"))
    head = k.upstream()
    assert head.startswith(b"GET /file?directory=%2Ftmp HTTP/1.1\r\n")
    assert b"secret" not in head and b"Bearer" not in head and b"tok" not in head
    assert (
        b"cookie: theme=dark\r\n" in head and b"authorization: Basic b3BlbmNvZGU6cHc=\r\n" in head
    )
    assert b"x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n" in head
    assert (
        k.answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\n"
            b"Set-Cookie: b=2; Domain=localhost\r\nConnection: keep-alive\r\n\r\nhi"
        )
        == b"HTTP/1.1 200 OK\r\n" + CORP + b"Set-Cookie: a=1\r\ncontent-length: 2\r\n\r\nhi"
    )
    for n in range(3):  # the same connection, both sides
        k.browser.sendall(get(b"/n%d" % n))
        assert k.upstream().startswith(b"GET /n%d HTTP/1.1\r\n" % n)
        assert k.answer(OK).endswith(b"\r\n\r\nhi")
    assert k.relay.kept_count == 1
    k.now += 1.5
    k.relay.tick()
    msg, _ = k.report(b"A")
    assert read_activity(msg) == {"s1": 4}  # every request answered


def test_pipelined_requests_are_answered_in_order() -> None:
    k = Kept(get(b"/a") + get(b"/b"))
    assert k.upstream().startswith(b"GET /a ")
    assert k.answer(OK).endswith(b"hi")
    assert k.upstream().startswith(b"GET /b ")
    assert k.answer(OK).endswith(b"hi")


def test_a_request_the_grant_does_not_cover_goes_back_with_its_bytes() -> None:
    for request in [
        get(cookie=b"cli_sandbox=other"),  # another session
        get(host=b"oc-s2.localhost:8080"),  # another sandbox
        get(b"/_cli/auth?ticket=t"),  # ours
        b"POST /x HTTP/1.1\r\nHost: " + HOST + b"\r\nContent-Length: 1001\r\n\r\nx",  # too big
        b"HEAD /x HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n",
        get(b"/x", b"Upgrade: h2c", b"Connection: upgrade"),
        # a terminal opened by a page of another site
        get(b"/x", b"Upgrade: websocket", b"Connection: upgrade", b"Sec-Fetch-Site: same-site"),
        b"GET /x HTTP/1.1\nHost: x\n\n",  # not strict
        # a page of another sandbox reading this one (CORS): the server answers it, 403
        get(b"/x", b"Origin: http://oc-s2.localhost:8080"),
        get(b"/x", b"Origin: null", b"Sec-Fetch-Site: same-site"),
        get(b"/x", b"Origin: http://" + HOST, b"Origin: http://" + HOST),
    ]:
        k = Kept()
        k.upstream()
        k.answer(OK)
        k.browser.sendall(request)
        why, data, sock = k.back()
        assert why is Back.ASK and data == request
        assert k.upstream() == b""  # its sandbox connection waits, idle, for another request
        assert [s.getpeername() for s in k.relay.idle_sockets(("127.0.0.1", k.port))] == [
            k.sandbox.getsockname()
        ]
        sock.sendall(b"still the browser's")  # the same connection, now the server's
        assert k.browser.recv(100) == b"still the browser's"


def test_a_refused_request_sent_with_a_relayed_one_goes_back_once_that_one_is_answered() -> None:
    """A GET of another origin pipelined behind a relayed one (or arriving while it is
    answered): the first answer reaches the browser whole, then the connection goes back with
    exactly the refused request's bytes, which the sandbox never gets."""
    refused = get(b"/refused", b"Origin: http://oc-s2.localhost:8080")
    for together in (True, False):
        k = Kept(get(b"/a") + (refused if together else b""))
        assert k.upstream().startswith(b"GET /a ")
        if not together:
            k.browser.sendall(refused)  # (while the sandbox has not answered yet)
            k.turn()
        assert k.answer(OK).endswith(b"hi")
        why, data, _ = k.back()
        assert why is Back.ASK and data == refused
        assert k.upstream() == b"" and not _closed(k.sandbox)  # (kept for another)


def test_same_origin_reads_are_relayed_and_sandbox_cookies_and_cors_grants_are_not() -> None:
    """What a sandbox answers reaches the browser without cookies for other hosts or with our
    names, and without CORS grants; its own page's reads (Origin = itself) are relayed."""
    k = Kept(get(b"/x", b"Origin: http://" + HOST, b"Sec-Fetch-Site: same-origin"))
    assert k.upstream().startswith(b"GET /x HTTP/1.1\r\n")
    got = k.answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: ok=1; Path=/\r\n"
        b"Set-Cookie: cli_session=evil; Domain=localhost; Path=/\r\n"
        b"Set-Cookie: CLI_Sandbox=evil\r\nSet-Cookie: __Secure-cli_sandbox=evil; Secure\r\n"
        b"Set-Cookie: lost\r\nSet-Cookie: t=1; domain = .localhost\r\n"
        b"Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Credentials: true\r\n"
        b"Cross-Origin-Resource-Policy: cross-origin\r\n\r\nhi"
    )
    assert got == (
        b"HTTP/1.1 200 OK\r\n" + CORP + b"Set-Cookie: ok=1; Path=/\r\ncontent-length: 2\r\n\r\nhi"
    )
    k.browser.sendall(get(b"/y"))  # (no Origin: a navigation or a subresource)
    assert k.upstream().startswith(b"GET /y HTTP/1.1\r\n")


def test_the_grant_runs_out_but_the_first_request_is_always_served() -> None:
    k = Kept(seconds=-1.0)
    assert k.upstream().startswith(b"GET /x ")
    k.answer(OK)
    k.browser.sendall(get(b"/y"))
    why, data, _ = k.back()
    assert why is Back.ASK and data == get(b"/y")
    k = Kept(seconds=1.0)
    k.answer(OK)
    k.now += 1.0
    k.browser.sendall(get(b"/y"))
    assert k.back()[0] is Back.ASK


def test_the_same_request_again_is_relayed_as_before_while_the_grant_holds() -> None:
    """A repeated head is not read again (the connection remembers what it made of it), but
    each one is still relayed cleaned, counted, and checked against the grant's time; a new
    target with the same header block is read and cleaned as its own."""
    k = Kept(get(b"/poll?token=secret"))
    first = k.upstream()
    assert first.startswith(b"GET /poll HTTP/1.1\r\n") and b"secret" not in first
    k.answer(OK)
    for _ in range(2):
        k.browser.sendall(get(b"/poll?token=secret"))
        assert k.upstream() == first
        assert k.answer(OK).endswith(b"\r\n\r\nhi")
    k.browser.sendall(get(b"/other?ticket=t&a=1"))
    assert k.upstream() == first.replace(b"GET /poll ", b"GET /other?a=1 ")
    k.answer(OK)
    k.now += 1.0  # the grant ran out: the same head again goes back to the server
    k.browser.sendall(get(b"/poll?token=secret"))
    why, data, _ = k.back()
    assert why is Back.ASK and data == get(b"/poll?token=secret")


def test_a_request_the_sandbox_drops_goes_back_for_the_server_to_try() -> None:
    k = Kept(get(b"/a") + b"GET /b")
    k.upstream()
    k.sandbox.close()
    why, data, _ = k.back()
    assert why is Back.DROPPED and data == get(b"/a") + b"GET /b"


def test_a_sandbox_connection_that_closes_between_requests_is_replaced() -> None:
    k = Kept()
    k.upstream()
    k.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    assert _closed(k.sandbox)
    k.browser.sendall(get(b"/b"))
    k.accept()  # a new one, for the next request
    assert k.upstream().startswith(b"GET /b ")
    k.answer(OK)
    k.sandbox.close()  # an idle keep-alive connection the sandbox ended
    k.turn()
    k.browser.sendall(get(b"/c"))
    k.accept()
    assert k.upstream().startswith(b"GET /c ") and k.relay.kept_count == 1


def test_a_sandbox_that_cannot_be_reached_sends_the_request_back_whole() -> None:
    """Nothing listens at the grant's address: the server tries the request itself (and asks
    the backend where the sandbox is now)."""
    why, data = _granted_where_nothing_listens(GRANT, get(b"/a"))
    assert why is Back.DROPPED and data == get(b"/a")


def _granted_where_nothing_listens(grant: Grant, first: bytes) -> tuple[Back, bytes]:
    """A connection granted to an address nothing listens at, with ``first`` read already:
    what the worker gives back to the server."""
    k = Kept.__new__(Kept)
    k.now = 100.0
    k.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    k.relay = Worker(theirs, clock=lambda: k.now)
    k.browser, near = socket.socketpair()
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    message = keep_message(7, k.now + 1, grant._replace(port=port), first)
    socket.send_fds(k.control, [message], [near.fileno()])
    near.close()
    k.turn()
    why, data, _ = k.back()
    return why, data


def test_a_silent_sandbox_times_out_and_an_idle_browser_is_closed() -> None:
    k = Kept()
    k.upstream()
    k.now += 119
    k.relay.tick()
    assert k.relay.kept_count == 1
    k.now += 2
    k.relay.tick()
    why, data, _ = k.back()
    assert why is Back.TIMED_OUT and data == b"" and _closed(k.sandbox)

    k = Kept()
    k.upstream()
    k.answer(OK)
    k.now += 121
    k.relay.tick()
    assert k.report()[0] == b"E" + ID.pack(7)
    assert _closed(k.browser) and not _closed(k.sandbox)  # (kept a while, for another)
    k.now += 2
    k.relay.tick()
    assert _closed(k.sandbox) and k.relay.idle_addresses == 0


def test_a_streamed_answer_has_no_time_limit_and_is_chunked_again() -> None:
    k = Kept()
    k.upstream()
    got = k.answer(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    assert got.endswith(b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    k.now += 1000
    k.relay.tick()
    assert k.answer(b"3;x=1\r\nabc\r\n0\r\n\r\n") == b"3\r\nabc\r\n0\r\n\r\n"
    k.browser.sendall(get(b"/next"))  # the grant ran out meanwhile: the server decides
    assert k.back()[:2] == (Back.ASK, get(b"/next"))


def test_an_answer_ended_by_its_close_is_chunked_and_ends_cleanly() -> None:
    k = Kept()
    k.upstream()
    assert k.answer(b"HTTP/1.1 200 OK\r\n\r\nabc").endswith(b"\r\n\r\n3\r\nabc\r\n")
    k.sandbox.close()
    assert k.got() == b"0\r\n\r\n"
    assert k.relay.kept_count == 1  # the browser's connection goes on


def test_an_answer_cut_short_closes_the_browser_without_an_ending() -> None:
    k = Kept()
    k.upstream()
    k.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    k.sandbox.close()
    assert k.got() == b"" and _closed(k.browser)
    assert k.report()[0] == b"E" + ID.pack(7)


def test_connection_close_is_honoured() -> None:
    k = Kept(get(b"/x", b"Connection: close"))
    k.upstream()
    assert k.answer(OK) == (
        b"HTTP/1.1 200 OK\r\n" + CORP + b"content-length: 2\r\nconnection: close\r\n\r\nhi"
    )
    assert _closed(k.browser)


def test_a_slow_browser_stops_the_reading_of_its_sandbox() -> None:
    k = Kept()
    k.upstream()
    k.browser.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    k.sandbox.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
    k.sandbox.setblocking(False)
    sent = 0
    try:
        for _ in range(2000):
            sent += k.sandbox.send(b"x" * 65536)
            k.turn()
    except BlockingIOError:
        pass
    conn = k.relay.kept(7)
    assert (
        conn is not None and conn.blocked and sent < 16 * 2**20
    )  # the sandbox was stopped, not read on
    waiting = sum(map(len, conn.out))
    assert waiting <= 65536 + 100
    assert len(_drain(k.browser)) > 0
    k.turn()
    assert not conn.blocked or sum(map(len, conn.out)) < waiting


def test_a_cut_or_a_browser_that_leaves_ends_both_connections() -> None:
    k = Kept()
    k.upstream()
    k.control.send(b"X" + ID.pack(99) + ID.pack(7))
    assert k.report()[0] == b"E" + ID.pack(7)
    assert _closed(k.browser) and _closed(k.sandbox)
    k = Kept()
    k.upstream()
    k.browser.close()
    assert k.report()[0] == b"E" + ID.pack(7)
    assert _closed(k.sandbox)


def test_a_connection_whose_first_request_is_not_covered_goes_straight_back() -> None:
    k = Kept(b"HEAD /x HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
    why, data, _ = k.back()
    assert why is Back.ASK and data.startswith(b"HEAD /x ")


def test_a_bug_on_one_connection_closes_that_connection_not_the_relay(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    k = Kept()
    k.upstream()
    k.answer(OK)

    def broken(self: KeptConnection) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(KeptConnection, "next_request", broken)
    k.browser.sendall(get(b"/y"))
    assert k.report()[0] == b"E" + ID.pack(7)  # closed, reported, and the loop goes on
    assert _closed(k.browser) and k.relay.step(0)
    assert "RuntimeError: a bug" in capsys.readouterr().err  # (the server logs our stderr)


def test_a_connection_in_use_has_its_grant_renewed_before_it_runs_out() -> None:
    k = Kept(seconds=0.8)
    k.upstream()
    k.answer(OK)
    k.browser.sendall(get(b"/a"))  # 0.8 s left: not yet
    k.upstream()
    k.answer(OK)
    k.now += 0.4
    k.browser.sendall(get(b"/b"))  # 0.4 s left: served, and a renewal asked for, once
    assert k.upstream().startswith(b"GET /b ")
    assert k.report(b"R")[0] == b"R" + ID.pack(7)
    k.answer(OK)
    k.browser.sendall(get(b"/c"))
    assert k.upstream().startswith(b"GET /c ") and k.relay.kept_count == 1
    k.control.send(RENEWED.pack(b"G", 7, k.now + 1.0))
    k.answer(OK)
    k.now += 0.7  # past the first grant, within the renewed one
    k.browser.sendall(get(b"/d"))
    assert k.upstream().startswith(b"GET /d ")
    assert k.report(b"R")[0] == b"R" + ID.pack(7)
    k.control.send(RENEWED.pack(b"G", 7, 0.0))  # not renewed: it runs out, then goes back
    k.answer(OK)
    k.now += 0.31
    k.browser.sendall(get(b"/e"))
    assert k.back()[:2] == (Back.ASK, get(b"/e"))


def test_unknown_messages_are_ignored_and_the_relay_ends_with_the_server() -> None:
    k = Kept()
    k.upstream()
    k.control.send(b"?")  # nothing it knows
    k.turn()
    assert k.relay.kept_count == 1
    k.control.close()
    assert not k.relay.step(0)
    k.relay.run()  # (returns at once: the server is gone) and closes what it carried
    assert _closed(k.browser) and _closed(k.sandbox)


def test_a_sandbox_that_resets_while_the_browser_is_slow_is_not_read_until_it_catches_up() -> None:
    k = Kept()
    k.turn()  # (the request is left unread: closing then is a reset, as with TCP)
    k.browser.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    k.sandbox.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
    k.sandbox.setblocking(False)
    conn = k.relay.kept(7)
    assert conn is not None
    for _ in range(100):
        try:
            k.sandbox.send(b"x" * 65536)
        except BlockingIOError:
            break
        k.turn()
    assert conn.blocked
    k.sandbox.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    k.sandbox.close()  # a reset
    waiting = sum(map(len, conn.out))
    assert k.relay.poll.poll(0) == []  # nothing to do (no error reported over and over)
    assert sum(map(len, conn.out)) == waiting
    for _ in range(10_000):  # the browser reads: the answer ends, without its last chunk
        got = k.got()  # (an answer ended by its close: a reset is not such an end)
        if k.relay.kept_count == 0:
            break
    assert not got.endswith(b"0\r\n\r\n") and _closed(k.browser)
    assert k.report()[0] == b"E" + ID.pack(7)


def test_reports_wait_for_a_server_that_reads_slowly() -> None:
    k = Kept()
    k.relay_control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sent = 0
    while True:  # the server does not read: the relay's socket fills up
        try:
            k.relay_control.send(b"E" + ID.pack(0))
            sent += 1
        except BlockingIOError:
            break
    k.control.send(b"X" + ID.pack(7))
    k.turn()  # the cut happens; its report waits instead of blocking the relay
    assert k.relay.kept_count == 0 and k.relay.waiting_reports == 1
    for _ in range(sent):
        assert k.report()[0] == b"E" + ID.pack(0)
    assert k.report()[0] == b"E" + ID.pack(7) and k.relay.waiting_reports == 0


def post(body: bytes, length: int | None = None, path: bytes = b"/x") -> bytes:
    size = len(body) if length is None else length
    return get(b"/x", b"Content-Length: %d" % size).replace(b"GET /x", b"POST " + path) + body


def test_an_upload_streams_to_the_sandbox_as_it_arrives() -> None:
    k = Kept(post(b"abc", 600))
    first = k.upstream()
    assert first.startswith(b"POST /x HTTP/1.1\r\n") and first.endswith(b"\r\n\r\nabc")
    assert b"Content-Length: 600\r\n" in first
    k.browser.sendall(b"d" * 300)
    assert k.upstream() == b"d" * 300
    k.browser.sendall(b"e" * 297 + get(b"/next"))  # the rest, and the next request
    assert k.upstream() == b"e" * 297  # (the next one waits for this one's answer)
    assert k.answer(OK).endswith(b"\r\n\r\nhi")
    assert k.upstream().startswith(b"GET /next ")
    k.answer(OK)
    k.now += 1.5
    k.relay.tick()
    assert read_activity(k.report(b"A")[0]) == {"s1": 2}


def test_an_answer_before_the_upload_ends_closes_the_connection() -> None:
    k = Kept(post(b"abc", 100))
    k.upstream()
    assert k.answer(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n").endswith(
        b"connection: close\r\n\r\n"
    )
    assert _closed(k.browser) and _closed(k.sandbox)


def test_an_upload_that_ends_while_its_answer_streams_leaves_nothing_out_of_step() -> None:
    """The rest of an upload that arrives after its answer began is not sent: the sandbox
    still waits for it, so bytes of a next request would be read as that body, and a
    request hidden in them would reach the sandbox unchecked. Both connections end with
    the answer; nothing more reaches the sandbox, and its connection is not kept."""
    k = Kept(post(b"", 40))
    assert k.upstream().endswith(b"\r\n\r\n")  # the head, none of the body yet
    head = k.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert head.endswith(b"connection: close\r\n\r\nab")
    hidden = b"POST /session/x/message HTTP/1.1\r\nHost: h\r\n\r\n"
    k.browser.sendall(b"x" * 40 + get(b"/next", b"X-Pad: " + hidden))
    assert k.upstream() == b""  # (the body's rest is dropped, the next request waits)
    assert k.answer(b"cd") == b"cd"
    k.turn()
    assert _closed(k.browser) and _closed(k.sandbox)


def test_an_upload_the_sandbox_drops_is_answered_by_the_server_not_sent_again() -> None:
    k = Kept(post(b"abc"))
    assert k.upstream().endswith(b"\r\n\r\nabc")
    k.sandbox.close()
    why, data, _ = k.back()
    assert why is Back.FAILED and data == b""


def test_a_guest_may_read_but_its_writes_go_to_the_server() -> None:
    """The grant's role is the rulebook's: a guest's POST goes back (the server answers it
    with its read-only refusal), its GETs are relayed."""
    k = Kept(grant=GRANT._replace(role=1))
    assert k.upstream().startswith(b"GET /x ")
    k.answer(OK)
    k.browser.sendall(post(b"x"))
    assert k.back()[:2] == (Back.ASK, post(b"x"))


def test_importing_the_worker_loads_no_twisted() -> None:
    """The worker is a plain loop: a fresh interpreter that imports it (as its process
    does) has loaded no Twisted module, nor zope.interface."""
    import os
    import subprocess
    import sys

    import cli_server

    code = (
        "import sys, cli_server.proxy.relay.worker; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')))"
    )
    src = os.path.dirname(os.path.dirname(cli_server.__file__))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


TERMINAL = get(
    b"/pty/1/connect?token=secret",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: a2V5",
    b"Origin: http://" + HOST,
)


def test_a_websocket_is_spliced_with_its_101_cleaned_and_no_time_limit() -> None:
    k = Kept(TERMINAL)
    head = k.upstream()
    assert head.startswith(b"GET /pty/1/connect HTTP/1.1\r\n") and b"secret" not in head
    assert b"Sec-WebSocket-Key: a2V5\r\n" in head and b"tok" not in head
    assert head.endswith(b"connection: Upgrade\r\nupgrade: websocket\r\n\r\n")
    got = k.answer(
        b"HTTP/1.1 100 Continue\r\n\r\n"  # (interim: dropped)
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Set-Cookie: cli_sandbox=evil; Domain=localhost\r\nSet-Cookie: ok=1\r\n"
        b"Access-Control-Allow-Origin: *\r\n\r\nframe-1"
    )
    assert got == (
        b"HTTP/1.1 101 Switching Protocols\r\n" + CORP + b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSet-Cookie: ok=1\r\n\r\nframe-1"
    )
    k.browser.sendall(b"typed")
    assert k.upstream() == b"typed"
    assert k.answer(b"frame-2") == b"frame-2"
    k.now += 1000  # (a terminal has no time limit; its use counts as activity)
    k.relay.tick()
    assert k.relay.kept_count == 1 and read_activity(k.report(b"A")[0]) == {"s1": 2}
    k.sandbox.close()
    assert k.got() == b"" and _closed(k.browser)
    assert k.report()[0] == b"E" + ID.pack(7)


def test_bytes_sent_before_the_101_reach_the_sandbox_after_it() -> None:
    k = Kept(TERMINAL + b"early")
    assert k.upstream().endswith(b"\r\n\r\n")  # (the head alone: no frame before the 101)
    k.answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert k.upstream() == b"early"


def test_an_upgrade_the_sandbox_refuses_passes_cleaned_and_ends() -> None:
    k = Kept(TERMINAL)
    k.upstream()
    got = k.answer(
        b"HTTP/1.1 403 Forbidden\r\nSet-Cookie: CLI_SANDBOX=x\r\nContent-Length: 4\r\n\r\nnope"
    )
    assert got == b"HTTP/1.1 403 Forbidden\r\n" + CORP + b"Content-Length: 4\r\n\r\n"
    assert _closed(k.browser) and _closed(k.sandbox)


SID = b"0b6f1a3e-1111-4222-8333-444455556666"
PREVIEW_HOST = b"oc-" + SID + b"-p5173.localhost:8080"
PREVIEW = GRANT._replace(host=PREVIEW_HOST, authorization=b"", preview=5173)


def test_a_preview_is_relayed_with_no_credential_at_all() -> None:
    """A preview's grant has no credential: its requests (a WebSocket for hot reload too)
    reach the dev server with no Authorization, neither opencode's nor the browser's."""
    k = Kept(
        get(b"/src/main.ts?token=secret", b"Authorization: Basic YnJvd3Nlcg==", host=PREVIEW_HOST),
        grant=PREVIEW,
    )
    head = k.upstream()
    assert head.startswith(b"GET /src/main.ts HTTP/1.1\r\n")
    assert b"authorization" not in head.lower() and b"Basic" not in head, head
    assert b"secret" not in head and b"tok" not in head and b"cookie: theme=dark\r\n" in head
    assert b"x-forwarded-host: " + PREVIEW_HOST + b"\r\n" in head
    assert k.answer(OK).endswith(b"\r\n\r\nhi")
    hmr = get(
        b"/?token=x",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: a2V5",
        b"Sec-WebSocket-Protocol: vite-hmr",
        b"Origin: http://" + PREVIEW_HOST,
        host=PREVIEW_HOST,
    )
    k.browser.sendall(hmr)
    head = k.upstream()
    assert b"authorization" not in head.lower() and b"Sec-WebSocket-Protocol: vite-hmr" in head
    k.answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    k.browser.sendall(b"ping")
    assert k.upstream() == b"ping"


def test_a_preview_connection_carries_requests_for_its_own_port_only() -> None:
    """A keep-alive connection granted for ``oc-X-p5173`` hands back, unsent, a request for
    opencode's ``oc-X``, for another port of X, or for the same port of another sandbox."""
    other = b"oc-0b6f1a3e-1111-4222-8333-999999999999"
    for host in (
        HOST,  # opencode's own origin: it would need the credential
        b"oc-" + SID + b"-p8000.localhost:8080",
        other + b"-p5173.localhost:8080",
        b"oc-" + SID + b"-p5173.localhost:8081",
        b"oc-" + SID + b"-p05173.localhost:8080",
    ):
        k = Kept(get(host=PREVIEW_HOST), grant=PREVIEW)
        k.upstream()
        k.answer(OK)
        k.browser.sendall(get(b"/y", host=host))
        why, data, _ = k.back()
        assert why is Back.ASK and data == get(b"/y", host=host), host
        assert k.upstream() == b""


def test_a_grant_that_would_carry_a_credential_to_a_preview_relays_nothing() -> None:
    """Whatever the server sends, a worker never sends a credential to a preview port, nor
    relays a preview with a grant for another port (or for opencode): the request goes back
    to the server, unsent."""
    for grant in (
        PREVIEW._replace(authorization=GRANT.authorization),
        PREVIEW._replace(preview=8000),
        PREVIEW._replace(preview=0),
        GRANT._replace(preview=5173),  # opencode's Host with a preview's grant
    ):
        first = get(host=grant.host)
        k = Kept(first, grant=grant)
        why, data, _ = k.back()
        assert why is Back.ASK and data == first, grant
        k.turn()
        k.listening.settimeout(0.05)
        with pytest.raises(TimeoutError):
            k.listening.accept()  # the worker never even connected


def test_nothing_listening_on_a_preview_port_sends_the_request_back_whole() -> None:
    """A dev server not started yet: the connection is refused, and the server gets the
    request back unsent, to answer with its "nothing is listening" page."""
    first = get(b"/x", b"Content-Length: 6", host=PREVIEW_HOST).replace(b"GET", b"POST") + b"form=1"
    why, data = _granted_where_nothing_listens(PREVIEW, first)
    assert why is Back.DROPPED and data == first
