"""Body parsing, field checks, the Origin rule and session cookie flags, on fake requests."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from cli_server.domain.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from cli_server.web.access_log import api_read, redacting_log_formatter
from cli_server.web.body import read_json_object, text_field
from cli_server.web.session import SessionCookies


def request(
    body: bytes = b"",
    ctype: str | None = "application/json",
    method: bytes = b"POST",
    headers: dict[bytes, bytes] | None = None,
) -> Any:
    req = DummyRequest([b""])
    req.method = method
    req.content = io.BytesIO(body)
    if ctype is not None:
        req.requestHeaders.setRawHeaders(b"content-type", [ctype.encode()])
    for name, value in (headers or {}).items():
        req.requestHeaders.setRawHeaders(name, [value])
    return req


class ReadJsonTests(SynchronousTestCase):
    def test_object(self) -> None:
        """A JSON object with a charset parameter is accepted."""
        req = request(b'{"a": 1}', "application/json; charset=utf-8")
        self.assertEqual(read_json_object(req), {"a": 1})

    def test_failures(self) -> None:
        """Each kind of broken body maps to its error."""
        self.assertRaises(UnsupportedMediaType, read_json_object, request(b"{}", "text/plain"))
        self.assertRaises(UnsupportedMediaType, read_json_object, request(b"{}", None))
        for body in [b"", b"  ", b"{", b"[]", b"null", b"\xff"]:
            error = self.assertRaises(BadRequest, read_json_object, request(body))
            self.assertEqual(error.field, "body")
        big = request(b"{}")
        big.body_too_large = True
        self.assertRaises(PayloadTooLarge, read_json_object, big)


class TextFieldTests(SynchronousTestCase):
    def test_normalises(self) -> None:
        """NFC, trimmed; joiners inside emoji are kept."""
        self.assertEqual(text_field({"n": " cafe\u0301 "}, "n", max_length=10), "café")
        self.assertEqual(text_field({"n": "👩\u200d💻"}, "n", max_length=10), "👩\u200d💻")
        self.assertIsNone(text_field({}, "n", max_length=10, required=False))

    def test_rejects(self) -> None:
        """Wrong types, length bounds, control, bidi and surrogate characters name the field."""
        bad: list[Any] = [
            5,
            None,
            [],
            "",
            " ",
            "x" * 11,
            "a\x00",
            "a\nb",
            "\u202e",
            "\ud800",
            "\ufeffbom",
        ]
        for value in bad:
            error = self.assertRaises(BadRequest, text_field, {"n": value}, "n", max_length=10)
            self.assertEqual(error.field, "n")


class SessionCookieTests(SynchronousTestCase):
    def cookies(self, secure: bool) -> SessionCookies:
        origin = "https://cli.example.com" if secure else "http://localhost:8080"
        return SessionCookies(None, secure, 3600.0, origin)  # type: ignore[arg-type]

    def test_https_cookie_is_host_prefixed_and_secure(self) -> None:
        """Over https the cookie is __Host-, Secure, HttpOnly, SameSite=Lax, Path=/."""
        req = Request(DummyChannel())
        self.cookies(True).set(req, "tok")
        (cookie,) = req.cookies
        self.assertTrue(cookie.startswith(b"__Host-cli_session=tok"))
        for flag in (b"Secure", b"HttpOnly", b"SameSite=lax", b"Path=/", b"Max-Age=3600"):
            self.assertIn(flag, cookie)
        self.assertNotIn(b"Domain", cookie)

    def test_http_cookie(self) -> None:
        """Over plain http the cookie cannot be Secure, so it has no __Host- prefix."""
        req = Request(DummyChannel())
        self.cookies(False).set(req, "tok")
        (cookie,) = req.cookies
        self.assertTrue(cookie.startswith(b"cli_session=tok"))
        self.assertNotIn(b"Secure", cookie)

    def test_origin_rule(self) -> None:
        """Writes from other origins are refused; reads, our origin and non-browsers pass."""
        cookies = self.cookies(False)
        ok = [
            request(headers={b"origin": b"http://localhost:8080"}),
            request(headers={b"origin": b"http://127.0.0.1:9000", b"host": b"127.0.0.1:9000"}),
            request(),
            request(method=b"GET", headers={b"origin": b"http://evil.example"}),
        ]
        for req in ok:
            cookies.check_origin(req)
        for origin in [
            b"http://evil.example",
            b"http://oc-1.localhost:8080",
            b"null",
            b"https://localhost:8080",
        ]:
            req = request(headers={b"origin": origin, b"host": b"localhost:8080"})
            self.assertRaises(Forbidden, cookies.check_origin, req)
        # An Authorization header changes nothing here: only a route's guard, requiring a
        # valid token instead, lets a token request by (public routes never do).
        for bearer in (b"Bearer x", b"Bearer cli_pat_" + b"a" * 43, b"bearer"):
            req = request(headers={b"origin": b"http://evil.example", b"authorization": bearer})
            self.assertRaises(Forbidden, cookies.check_origin, req)
            # A mount hands a token request on to its app, whose route needs a valid token.
            cookies.check_origin(req, mount=True)
        foreign = request(headers={b"origin": b"http://evil.example"})
        self.assertRaises(Forbidden, cookies.check_origin, foreign, mount=True)

    def test_two_session_cookies_are_nobody_and_are_cleared(self) -> None:
        """One cookie tossed next to ours (for the parent domain, say): neither counts, and
        the answer expires both, host-only and for the parent domain; one alone counts."""
        cookies = self.cookies(False)
        req = Request(DummyChannel())
        req.requestHeaders.setRawHeaders(b"cookie", [b"cli_session=mine", b"cli_session=tossed"])
        req.path = b"/api/auth/me"
        self.assertIsNone(cookies.token(req))
        refused = self.failureResultOf(Deferred.fromCoroutine(cookies.user(req)))
        refused.trap(Unauthorized)
        self.assertEqual(len(req.cookies), 14)
        self.assertIn(b"cli_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax", req.cookies)
        self.assertIn(
            b"cli_session=; Path=/api; Domain=localhost; Max-Age=0; HttpOnly; SameSite=Lax",
            req.cookies,
        )
        cookies.set(req, "new")  # signing in again: the old ones go, then the new one is set
        self.assertEqual(len(req.cookies), 29)
        self.assertTrue(req.cookies[-1].startswith(b"cli_session=new;"))
        alone = Request(DummyChannel())
        alone.requestHeaders.setRawHeaders(b"cookie", [b"x=1; cli_session=mine"])
        self.assertEqual(cookies.token(alone), "mine")
        cookies.set(alone, "new")  # (only the new cookie: there was nothing to clear)
        self.assertEqual(len(alone.cookies), 1)


class AccessLogReadsTests(SynchronousTestCase):
    """Which requests ``--access-log changes`` leaves out: API answers with data only."""

    def _request(self, method: bytes, path: bytes, code: int) -> Request:
        request = Request(DummyChannel())
        request.method, request.path, request.code = method, path, code
        return request

    def test_api_reads_with_data_are_left_out_redirects_and_failures_are_not(self) -> None:
        self.assertTrue(api_read(self._request(b"GET", b"/api/workspaces", 200)))
        self.assertTrue(api_read(self._request(b"HEAD", b"/api/auth/me", 304)))
        # A sign-in's callback is a GET that signs someone in: it answers 303, and is logged.
        self.assertFalse(api_read(self._request(b"GET", b"/api/auth/oidc/oidc/callback", 303)))
        self.assertFalse(api_read(self._request(b"GET", b"/api/sandboxes/x", 404)))
        self.assertFalse(api_read(self._request(b"POST", b"/api/workspaces", 201)))
        self.assertFalse(api_read(self._request(b"GET", b"/apiary", 200)))
        self.assertFalse(api_read(self._request(b"GET", b"/w/1", 200)))

    def test_api_tokens_are_redacted_encoded_or_not(self) -> None:
        """A token pasted in the path or the Referer, as written or percent-encoded (in part
        or whole, either hex case): the line keeps none of it."""
        token = "cli_pat_" + "Ab-_9" * 8 + "xyz"
        forms = [
            token,
            "%63li%5Fpat%5F" + token[8:],
            "".join(f"%{ord(c):02X}" for c in token),
            "".join(f"%{ord(c):02x}" for c in token),
            token[:10] + "".join(f"%{ord(c):02x}" for c in token[10:]),
        ]
        for form in forms:
            request = Request(DummyChannel())
            request.method, request.uri, request.clientproto = b"GET", b"/x/" + form.encode(), b""
            request.requestHeaders.setRawHeaders(b"referer", [b"http://h/?q=" + form.encode()])
            line = redacting_log_formatter("now", request)
            self.assertIn("/x/cli_pat_redacted", line)
            self.assertIn("q=cli_pat_redacted", line)
            self.assertNotIn(form[-12:], line)
            self.assertNotIn(token[-12:], line)
