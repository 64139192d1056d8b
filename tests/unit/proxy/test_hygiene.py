"""What a sandbox sees of a request and a browser of its answer; who may send it one."""

from __future__ import annotations

import pytest

from cli_server.proxy.answer import clean_upgrade_answer
from cli_server.proxy.hygiene import (
    ANSWER_HEADERS,
    clean_query,
    clearing_cookies,
    cookie_values,
    cross_origin,
    kept_answer_header,
    only,
    plain_upstream_headers,
    safe_set_cookie,
    session_token,
)


@pytest.mark.parametrize(
    ("target", "cleaned"),
    [
        (b"/x", b"/x"),
        (b"/file?token=s&directory=%2Ftmp", b"/file?directory=%2Ftmp"),
        (b"/x?a=1&auth_token=s&ticket=t&b=2", b"/x?a=1&b=2"),
        (b"/x?%74oken=s&TICKET=t&Auth%5Ftoken=a&b", b"/x?b"),  # as a URL parser reads names
        (b"/x?a=\xc3\xa9&token=s", b"/x?a=\xc3\xa9"),  # any bytes: kept as they came
        (b"/x?a=%ff+b&tok+en=1", b"/x?a=%ff+b&tok+en=1"),
        (b"/x?token", b"/x"),
    ],
)
def test_credential_parameters_are_removed_and_nothing_else_changes(
    target: bytes, cleaned: bytes
) -> None:
    assert clean_query(target) == cleaned


OWN = b"http://oc-a.localhost:8080"


@pytest.mark.parametrize(
    ("method", "upgrade", "origin", "fetch_site", "refused"),
    [
        # a page of sandbox B acting on sandbox A: every method, every upgrade
        (b"POST", False, b"http://oc-b.localhost:8080", b"same-site", True),
        (b"POST", False, b"http://oc-b.localhost:8080", None, True),
        (b"POST", False, b"http://oc-b.localhost:8080", b"same-origin", True),  # Origin decides
        (b"GET", True, b"http://oc-b.localhost:8080", b"same-site", True),
        (b"DELETE", False, b"http://localhost:8080", b"same-site", True),  # the main site too
        (b"PUT", False, b"http://evil.example", b"cross-site", True),
        (b"POST", False, b"https://oc-a.localhost:8080", None, True),  # another scheme
        (b"POST", False, b"http://oc-a.localhost:8081", None, True),  # another port
        (b"POST", False, b"http://oc-a.localhost:8080/", None, True),  # not as browsers send it
        (b"POST", False, b"", None, True),  # sent twice (hygiene.only)
        # a CORS read or preflight from another origin
        (b"GET", False, b"http://oc-b.localhost:8080", b"same-site", True),
        (b"OPTIONS", False, b"http://oc-b.localhost:8080", b"same-site", True),
        (b"GET", False, b"null", b"cross-site", True),
        # no Origin, or null: Sec-Fetch-Site decides, and only same-origin passes
        (b"POST", False, b"null", b"same-origin", False),  # the paused page's Resume button
        (b"POST", False, b"null", b"same-site", True),
        (b"POST", False, b"null", b"cross-site", True),
        (b"POST", False, b"null", b"none", True),
        (b"POST", False, b"null", None, True),  # a browser we cannot place
        (b"POST", False, b"null", b"", True),
        (b"POST", False, None, b"same-site", True),
        (b"POST", False, None, b"SAME-ORIGIN", False),
        (b"GET", True, None, b"same-site", True),
        (b"GET", True, b"null", b"same-origin", False),
        (b"GET", False, b"null", None, True),
        # its own page
        (b"POST", False, OWN, b"same-origin", False),
        (b"POST", False, b"HTTP://OC-A.LOCALHOST:8080", None, False),
        (b"GET", True, OWN, b"same-origin", False),
        (b"PATCH", False, OWN, None, False),
        # not a browser (neither header), or no page reads it (a navigation, an image)
        (b"POST", False, None, None, False),
        (b"GET", True, None, None, False),
        (b"GET", False, None, b"cross-site", False),
        (b"HEAD", False, None, b"same-site", False),
        (b"GET", False, None, b"none", False),
    ],
)
def test_only_a_sandboxs_own_pages_change_it(
    method: bytes, upgrade: bool, origin: bytes | None, fetch_site: bytes | None, refused: bool
) -> None:
    assert cross_origin(method, upgrade, origin, fetch_site, OWN) is refused


def test_a_header_sent_twice_is_no_value() -> None:
    assert only([]) is None and only([b"a"]) == b"a" and only((b"a", b"a")) == b""


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (b"a=1; Path=/", True),
        (b"a=1; HttpOnly; Secure; SameSite=Strict", True),
        (b"theme=cli_session", True),
        (b"cli_sessions=1", True),  # not one of ours
        (b"a=1; Domain=localhost", False),
        (b"a=1; domain=.localhost; Path=/", False),
        (b"a=1; Path=/;  DOMAIN = localhost", False),
        (b"a=1; Domain=", False),
        (b"cli_session=x", False),
        (b"cli_sandbox=x; Path=/", False),
        (b"CLI_Session=x", False),
        (b" cli_sandbox =x", False),
        (b"__Host-cli_session=x; Secure; Path=/", False),
        (b"__host-CLI_SANDBOX=x; Secure; Path=/", False),
        (b"__Secure-cli_session=x; Secure", False),
        (b"nameless", False),  # stored under the empty name
        (b"=value", False),
        (b"", False),
        (b" ; Path=/", False),
    ],
)
def test_sandbox_cookies_that_could_reach_other_hosts_or_pass_for_ours_are_dropped(
    value: bytes, kept: bool
) -> None:
    assert safe_set_cookie(value) is kept
    assert kept_answer_header(b"set-cookie", value) is kept


def test_cors_grants_are_dropped_from_sandbox_answers() -> None:
    assert not kept_answer_header(b"access-control-allow-origin", b"*")
    assert not kept_answer_header(b"access-control-allow-credentials", b"true")
    assert not kept_answer_header(b"cross-origin-resource-policy", b"cross-origin")
    assert not kept_answer_header(b"clear-site-data", b'"cookies"')
    assert not kept_answer_header(b"alt-svc", b'h2="elsewhere.example:443"')
    assert kept_answer_header(b"content-type", b"text/html")
    assert ANSWER_HEADERS == (
        (b"cross-origin-resource-policy", b"same-origin"),
        (b"content-security-policy", b"frame-ancestors 'self'"),
    )


@pytest.mark.parametrize(
    ("headers", "token", "count"),
    [
        ([b"cli_session=abc"], "abc", 1),
        ([b"theme=dark; cli_session=abc; x=1"], "abc", 1),
        ([b"cli_session=abc; cli_session=evil"], None, 2),  # tossed: neither counts
        ([b"cli_session=abc", b"cli_session=abc"], None, 2),  # in two headers, even the same
        ([b"cli_session=abc", b"other=1"], "abc", 1),
        ([b"CLI_SESSION=evil; cli_session=abc"], "abc", 1),  # names compare exactly
        ([b"__Host-cli_session=abc"], None, 0),  # another name
        ([b"cli_session="], None, 1),
        ([b"cli_session=\xc3\xa9"], None, 1),
        ([], None, 0),
    ],
)
def test_a_session_cookie_counts_only_when_it_is_alone(
    headers: list[bytes], token: str | None, count: int
) -> None:
    assert session_token(headers, b"cli_session") == token
    assert len(cookie_values(headers, b"cli_session")) == count


def test_clearing_reaches_every_copy_a_browser_could_have_sent() -> None:
    cleared = clearing_cookies(b"cli_session", b"localhost", b"/api/auth/me", False)
    assert b"cli_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax" in cleared
    assert b"cli_session=; Path=/; Domain=localhost; Max-Age=0; HttpOnly; SameSite=Lax" in cleared
    paths = {c.split(b"; ")[1].removeprefix(b"Path=") for c in cleared}
    assert paths == {b"/", b"/api", b"/api/", b"/api/auth", b"/api/auth/", b"/api/auth/me"} | {
        b"/api/auth/me/"
    }
    assert len(cleared) == 14
    host_only = clearing_cookies(b"__Host-cli_sandbox", b"localhost", b"/", True)
    assert host_only == [b"__Host-cli_sandbox=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure"]
    odd = clearing_cookies(b"cli_sandbox", b"localhost", b"/a;b/" + b"x/" * 20, False)
    assert all(b";b" not in c.split(b"; ")[1] for c in odd) and len(odd) <= 2 * 17


def test_the_head_of_a_websocket_answer_keeps_its_upgrade_and_loses_unsafe_cookies() -> None:
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Set-Cookie: cli_session=evil; Domain=localhost; Path=/\r\n"
        b"Set-Cookie: __Host-cli_sandbox=evil; Secure; Path=/\r\nSet-Cookie: mine=1\r\n"
        b"Access-Control-Allow-Origin: *\r\n\r\n"
    )
    assert clean_upgrade_answer(head) == (
        b"HTTP/1.1 101 Switching Protocols\r\ncross-origin-resource-policy: same-origin\r\n"
        b"content-security-policy: frame-ancestors 'self'\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSet-Cookie: mine=1\r\n\r\n"
    )
    for bad in [
        b"HTTP/1.1 101 OK\r\nSet-Cookie: a=1\r\n Domain=localhost\r\n\r\n",  # obs-fold
        b"HTTP/1.1 101 OK\r\nSet-Cookie : a=1\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nSet-Cookie: a=1\nSet-Cookie: cli_session=x\r\n\r\n",  # bare LF
        b"HTTP/1.1 101 OK\r\nSet-Cookie: a=1\rSet-Cookie: cli_session=x\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.0 101 OK\r\n\r\n",
    ]:
        assert clean_upgrade_answer(bad) is None, bad


@pytest.mark.parametrize("authorization", [None, b""])
def test_a_preview_port_gets_no_authorization_at_all(authorization: bytes | None) -> None:
    """opencode's credential is never sent to a preview's port: no Authorization, not the
    browser's, not ours; our cookies are gone as on opencode's address."""
    block = plain_upstream_headers(
        [(b"Authorization", b"Basic b3BlbmNvZGU6cHc="), (b"Accept", b"*/*")],
        (b"__Host-cli_sandbox=tok; __Host-cli_session=main; theme=dark",),
        b"oc-x-p5173.example.org",
        authorization,
        b"127.0.0.1",
        b"https",
    )
    assert b"authorization" not in block.lower() and b"cli_" not in block
    assert block.startswith(b"Accept: */*\r\ncookie: theme=dark\r\n")
    assert block.endswith(b"x-forwarded-host: oc-x-p5173.example.org\r\n\r\n")
    opencode = plain_upstream_headers([], (), b"h", b"Basic Y3JlZA==", b"::1", b"http")
    assert b"\r\nauthorization: Basic Y3JlZA==\r\n" in b"\r\n" + opencode
