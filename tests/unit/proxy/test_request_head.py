"""The fast path's request head reader: what it takes, and the many heads it leaves to
twisted.web (None) so that no two parsers ever disagree about a request."""

from __future__ import annotations

import pytest

from cli_server.proxy.hygiene import session_token
from cli_server.proxy.request_head import head_end, parse_head

HOST = b"Host: oc-x.localhost\r\n"
LIMIT = 1 << 20


def head(*lines: bytes, start: bytes = b"GET /a?b=c HTTP/1.1") -> bytes:
    return b"\r\n".join([start, *lines]) + b"\r\n\r\n"


def test_a_plain_head_is_read() -> None:
    raw = head(
        b"Host: oc-x.localhost:8080",
        b"Cookie: a=1; cli_sandbox=tok",
        b"cookie: b=2",
        b"Content-Length: 5",
        b"Connection: keep-alive, close",
        start=b"POST /a?b=c HTTP/1.1",
    )
    parsed = parse_head(raw, LIMIT)
    assert parsed is not None
    assert (parsed.method, parsed.target, parsed.asked.path) == (b"POST", b"/a?b=c", b"/a")
    assert parsed.fields.host == b"oc-x.localhost:8080" and parsed.fields.content_length == 5
    assert parsed.fields.close
    assert parsed.fields.cookies == (b"a=1; cli_sandbox=tok", b"b=2")
    assert session_token(parsed.fields.cookies, b"cli_sandbox") == "tok"
    assert session_token(parsed.fields.cookies, b"other") is None


def test_a_websocket_upgrade_is_read_as_one() -> None:
    raw = head(HOST.strip(), b"Upgrade: WebSocket", b"Connection: keep-alive, Upgrade")
    parsed = parse_head(raw, LIMIT)
    assert parsed is not None and parsed.fields.upgrade and parsed.asked.upgrade
    plain = parse_head(head(HOST.strip()), LIMIT)
    assert plain is not None and not plain.asked.upgrade


@pytest.mark.parametrize(
    "raw",
    [
        head(HOST.strip(), b"Transfer-Encoding: chunked"),
        head(HOST.strip(), b"Content-Length: 1", b"Transfer-Encoding: chunked"),
        head(HOST.strip(), b"Content-Length: 1", b"Content-Length: 1"),
        head(HOST.strip(), b"Content-Length: +1"),
        head(HOST.strip(), b"Content-Length: 1 1"),
        head(HOST.strip(), b"Content-Length: 99999999999999"),
        head(HOST.strip(), b"Content-Length: 2000000"),  # over the fast path's limit
        head(HOST.strip(), b"X-Folded: a", b" b"),  # obs-fold
        head(HOST.strip() + b"\nX-Bare: lf"),
        head(HOST.strip() + b"\rX-Bare: cr"),
        head(HOST.strip(), b"X-Nul: a\x00b"),
        head(HOST.strip(), b"Bad Name: x"),
        head(HOST.strip(), b"Name : x"),
        head(HOST.strip(), b"no colon"),
        head(HOST.strip(), HOST.strip()),  # two Hosts
        head(b"X: no host"),
        head(HOST.strip(), b"Upgrade: h2c", b"Connection: Upgrade"),
        head(HOST.strip(), b"Upgrade: websocket"),  # half an upgrade
        head(HOST.strip(), b"Upgrade: websocket", b"Upgrade: websocket", b"Connection: upgrade"),
        head(HOST.strip(), b"Connection: upgrade"),
        head(
            HOST.strip(),
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Content-Length: 1",
            start=b"POST /a HTTP/1.1",
        ),
        head(HOST.strip(), b"Content-Length: 5"),  # a GET's body: means nothing, may smuggle
        head(HOST.strip(), b"Content-Length: 5", start=b"OPTIONS /a HTTP/1.1"),
        head(HOST.strip(), b"Upgrade: websocket", b"Connection: Upgrade", b"Content-Length: 1"),
        head(HOST.strip(), b"Expect: 100-continue"),
        head(HOST.strip(), b"TE: trailers"),
        head(HOST.strip(), start=b"GET /a HTTP/1.0"),
        head(HOST.strip(), start=b"HEAD /a HTTP/1.1"),
        head(HOST.strip(), start=b"CONNECT oc-x:80 HTTP/1.1"),
        head(HOST.strip(), start=b"GET http://evil/ HTTP/1.1"),
        head(HOST.strip(), start=b"GET * HTTP/1.1"),
        head(HOST.strip(), start=b"GET /a\x7f HTTP/1.1"),
        head(HOST.strip(), start=b"GET  /a HTTP/1.1"),
        head(HOST.strip(), start=b"GET /a HTTP/1.1 "),
        head(HOST.strip(), start=b"get /a HTTP/1.1"),
    ],
)
def test_anything_unusual_is_left_to_twisted_web(raw: bytes) -> None:
    assert parse_head(raw, LIMIT) is None


def test_the_end_of_a_head() -> None:
    assert head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1
    assert head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody") == len(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    )
