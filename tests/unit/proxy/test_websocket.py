"""The WebSocket splice's sandbox end, on string transports: the head of the sandbox's answer
reaches the browser cleaned, whole, however it is cut; what follows it is passed as it is."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from cli_server.proxy.websocket import _head, _Side

HOSTILE = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: x\r\nSet-Cookie: cli_session=evil; Domain=example.com\r\n"
    b"Set-Cookie: __Host-cli_sandbox=evil; Secure; Path=/\r\nSet-Cookie: ok=1\r\n\r\n"
)


def splice() -> tuple[_Side, StringTransport, StringTransport]:
    sandbox, browser = _Side(lambda: None, answer=True), _Side(lambda: None)
    sandbox_transport, browser_transport = StringTransport(), StringTransport()
    sandbox.makeConnection(sandbox_transport)
    browser.makeConnection(browser_transport)
    sandbox.flush_to(browser)
    return sandbox, sandbox_transport, browser_transport


def test_the_101_head_loses_unsafe_cookies_however_it_arrives() -> None:
    for cut in (1, 20, len(HOSTILE) - 1, len(HOSTILE)):
        sandbox, _, browser = splice()
        sandbox.dataReceived(HOSTILE[:cut])
        sandbox.dataReceived(HOSTILE[cut:] + b"\x81\x02hi")
        got = browser.value()
        assert got.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), cut
        assert b"evil" not in got and b"Set-Cookie: ok=1\r\n" in got, cut
        assert b"Sec-WebSocket-Accept: x\r\n" in got and got.endswith(b"\r\n\r\n\x81\x02hi"), cut
        sandbox.dataReceived(b"Set-Cookie: cli_session=evil\r\n\r\n")  # (frames, now)
        assert browser.value().endswith(b"Set-Cookie: cli_session=evil\r\n\r\n")


def test_a_head_we_cannot_read_ends_the_splice() -> None:
    for bad in (
        b"HTTP/1.1 101 OK\r\nSet-Cookie: a=1\r\n Domain=example.com\r\n\r\n",
        b"HTTP/1.1 101 OK\nSet-Cookie: cli_session=x\n\n",
        b"HTTP/1.1 101 OK\r\n" + b"X-Long: " + b"a" * 20000,
    ):
        sandbox, sandbox_transport, browser = splice()
        sandbox.dataReceived(bad)
        assert browser.value() == b"" and sandbox_transport.disconnecting


def test_the_upgrade_request_loses_credential_parameters() -> None:
    from twisted.web.http_headers import Headers
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b""])
    request.method = b"GET"
    request.uri = b"/pty/1/connect?auth_token=steal&directory=%2Ftmp&ticket=t"
    request.requestHeaders.setRawHeaders(b"upgrade", [b"websocket"])
    head = _head(request, Headers())
    assert head.startswith(b"GET /pty/1/connect?directory=%2Ftmp HTTP/1.1\r\n")
    assert b"steal" not in head and b"upgrade: websocket" in head


def test_interim_answers_are_dropped_and_the_101_after_them_is_cleaned() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    whole = interim + HOSTILE + b"\x81\x02hi"
    for cut in (5, len(interim) - 2, len(interim) + 3, len(whole)):
        sandbox, _, browser = splice()
        sandbox.dataReceived(whole[:cut])
        sandbox.dataReceived(whole[cut:])
        got = browser.value()
        assert got.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), cut
        assert b"evil" not in got and b"Set-Cookie: ok=1\r\n" in got, cut
        assert got.endswith(b"\r\n\r\n\x81\x02hi"), cut


def test_an_answer_that_is_no_upgrade_passes_cleaned_and_ends_both_sides() -> None:
    refusal = (
        b"HTTP/1.1 401 Unauthorized\r\nSet-Cookie: cli_session=evil; Domain=example.com\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    after = b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: cli_sandbox=evil\r\n\r\n"
    sandbox, sandbox_transport, browser_transport = splice()
    sandbox.dataReceived(refusal + after)
    sandbox.dataReceived(b"more")
    got = browser_transport.value()
    assert got.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and got.endswith(b"\r\n\r\n")
    assert b"evil" not in got and b"more" not in got
    assert sandbox_transport.disconnecting and browser_transport.disconnecting
