"""What a sandbox may and may not see of a browser's request, and a browser of its answer.

Pure functions of bytes, with no Twisted: the twisted.web path (``forward.py``, which
converts to ``Headers`` where it must) and the relay workers (``relay/connection.py``) both
clean requests and answers with these, so they never differ about what a sandbox gets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import unquote_to_bytes

HOP_BY_HOP = set(
    b"connection keep-alive proxy-authenticate proxy-authorization te trailer"
    b" transfer-encoding upgrade proxy-connection".split()
)
# Credentials of ours that must never reach a sandbox, in any form.
OUR_COOKIES = {b"cli_session", b"__Host-cli_session", b"cli_sandbox", b"__Host-cli_sandbox"}
CREDENTIAL_PARAMS = {b"auth_token", b"ticket", b"token"}
# What a sandbox never gets of a request's headers (we set ours instead). Its Content-Length
# is kept: a plain head's body is forwarded as it is (twisted.web's client frames its own).
DROPPED_REQUEST = HOP_BY_HOP | set(
    b"authorization cookie forwarded x-forwarded-for x-forwarded-host x-forwarded-proto"
    b" x-real-ip".split()
)


def clean_query(uri: bytes) -> bytes:
    """The request target without credential parameters (opencode accepts ``?auth_token=``).
    The other parameters are kept byte for byte; a name is compared as a URL parser reads
    it (``%74oken``, ``Token``). Any bytes will do: this never fails."""
    path, sep, query = uri.partition(b"?")
    if not sep:
        return uri
    kept = [part for part in query.split(b"&") if _name(part) not in CREDENTIAL_PARAMS]
    return path + (b"?" + b"&".join(kept) if kept else b"")


def _name(parameter: bytes) -> bytes:
    return unquote_to_bytes(parameter.split(b"=", 1)[0].replace(b"+", b" ")).lower()


def clean_cookie_header(values: Iterable[bytes]) -> bytes | None:
    kept = []
    for value in values:
        for part in value.split(b";"):
            name = part.split(b"=", 1)[0].strip()
            if name and name not in OUR_COOKIES:
                kept.append(part.strip())
    return b"; ".join(kept) or None


# Our cookie names as a browser may be told to store them: any case, any prefix.
_OUR_BARE_NAMES = (b"cli_session", b"cli_sandbox")
_PREFIXES = (b"__host-", b"__secure-")


def safe_set_cookie(value: bytes) -> bool:
    """A sandbox may set named, host-only cookies for itself, never ones that reach other
    hosts (``Domain=``), shadow ours (in any case or prefixed form) or have no name (a
    browser stores ``Set-Cookie: x`` under the empty name, which a page may read as ours)."""
    parts = [p.strip() for p in value.split(b";")]
    name, eq, _ = parts[0].partition(b"=")
    bare = name.strip().lower()
    for prefix in _PREFIXES:
        bare = bare.removeprefix(prefix)
    if not eq or not name.strip() or bare in _OUR_BARE_NAMES:
        return False
    return not any(p.split(b"=", 1)[0].strip().lower() == b"domain" for p in parts[1:])


# Answer headers that act beyond the sandbox's own origin: ``Clear-Site-Data`` clears the
# whole site's cookies (the main site's session with them), ``Alt-Svc`` may name another host
# for this origin; a sandbox's own CORP would replace ours (``ANSWER_HEADERS``).
_DROPPED_ANSWER = frozenset({b"cross-origin-resource-policy", b"clear-site-data", b"alt-svc"})


def kept_answer_header(lower: bytes, value: bytes) -> bool:
    """Whether a sandbox's answer header (name in lower case) may reach the browser, on every
    answer path (101 included): unsafe cookies and CORS grants do not. A page on one sandbox
    origin must never read another's answers, and ours add ``ANSWER_HEADERS`` instead."""
    if lower == b"set-cookie":
        return safe_set_cookie(value)
    return not lower.startswith(b"access-control-") and lower not in _DROPPED_ANSWER


# Added to every sandbox answer: no page of another origin may even embed what it says, nor
# frame it (sandbox and preview origins are same-site, so a framed opencode would carry its
# session cookie under a hostile page). Browsers apply every CSP header given, so the
# sandbox's own policy still holds.
ANSWER_HEADERS = (
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
)
ANSWER_LINES = b"".join(name + b": " + value + b"\r\n" for name, value in ANSWER_HEADERS)

# Requests that change nothing, as browsers send them without an Origin of their own.
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


def only(values: Sequence[bytes]) -> bytes | None:
    """A header sent once: its value; sent more than once: b"" (matches no origin and no
    Sec-Fetch-Site, so a request that repeats one is refused); absent: None."""
    if not values:
        return None
    return values[0] if len(values) == 1 else b""


def cross_origin(
    method: bytes, upgrade: bool, origin: bytes | None, fetch_site: bytes | None, own: bytes
) -> bool:
    """Whether a request to the origin ``own`` (``scheme://host[:port]``, as the browser names
    it) comes from a page of another origin and must be refused before it reaches a sandbox.

    Sandbox subdomains are same-site with each other, so their SameSite cookies travel with
    requests one sandbox's page sends another: Origin is what tells them apart. A foreign
    Origin is refused on every request (a CORS read too); a state change or WebSocket with no
    Origin or ``null`` (a page with ``Referrer-Policy: no-referrer`` sends that) passes only
    if ``Sec-Fetch-Site`` says ``same-origin``. A request with neither header is not from a
    browser (browsers send Origin on every state change and upgrade) and passes."""
    if origin is not None and origin != b"null":
        return origin.lower() != own.lower()
    if origin is None and method in SAFE_METHODS and not upgrade:
        return False  # a navigation, a subresource: no page reads what it gets
    if fetch_site is not None:
        return fetch_site.lower() != b"same-origin"
    return origin is not None  # ``null`` from a browser without fetch metadata: unplaceable


def cookie_values(headers: Iterable[bytes], name: bytes) -> list[bytes]:
    """Every value of cookie ``name`` in a request's Cookie headers, in order (names compare
    exactly, as browsers keep them)."""
    found = []
    for header in headers:
        for part in header.split(b";"):
            key, eq, value = part.strip().partition(b"=")
            if eq and key.strip() == name:
                found.append(value.strip())
    return found


def session_token(headers: Iterable[bytes], name: bytes) -> str | None:
    """The session cookie ``name`` if the request carries exactly one. Two are what a tossed
    cookie looks like (another host set one for a parent domain, or for a longer path): which
    is ours cannot be told, so neither authenticates (see ``clearing_cookies``)."""
    values = cookie_values(headers, name)
    if len(values) != 1 or not values[0]:
        return None
    try:
        return values[0].decode("ascii")
    except UnicodeDecodeError:
        return None


def clearing_cookies(name: bytes, domain: bytes, path: bytes, secure: bool) -> list[bytes]:
    """Set-Cookie values that expire every ``name`` cookie the browser could have sent to
    ``path``: host-only or for ``domain``, on each path that covers it. (A cookie is replaced
    only by one with its name, domain and path; a ``__Host-`` one is host-only at ``/``.)"""
    paths = [b"/"]
    segments = [s for s in path.split(b"?")[0].split(b"/")[1:] if s]
    for i in range(1, min(len(segments), 8) + 1):
        prefix = b"/" + b"/".join(segments[:i])
        paths += [prefix, prefix + b"/"]
    tail = b"; Max-Age=0; HttpOnly; SameSite=Lax" + (b"; Secure" if secure else b"")
    out = []
    domains = [b""] if name.startswith(b"__Host-") else [b"", b"; Domain=" + domain]
    for where in domains:
        for p in paths:
            if b";" not in p and b"," not in p:
                out.append(name + b"=; Path=" + p + where + tail)
    return out


def plain_upstream_headers(
    headers: Iterable[tuple[bytes, bytes]],
    cookies: tuple[bytes, ...],
    host: bytes,
    authorization: bytes | None,
    peer: bytes,
    scheme: bytes,
) -> bytes:
    """A plain head's header block as the sandbox gets it, blank line included: the same
    hygiene as ``forward.upstream_headers``, written as bytes. ``authorization`` is opencode's
    credential; a preview port gets none (None or b""): no Authorization header at all."""
    out: list[bytes] = []
    for name, value in headers:
        if name.lower() not in DROPPED_REQUEST:
            out += (name, b": ", value, b"\r\n")
    cookie = clean_cookie_header(cookies) if cookies else None
    if cookie:
        out += (b"cookie: ", cookie, b"\r\n")
    if authorization:
        out += (b"authorization: ", authorization, b"\r\n")
    out += (
        b"x-forwarded-for: ",
        peer,
        b"\r\nx-forwarded-proto: ",
        scheme,
        b"\r\nx-forwarded-host: ",
        host,
        b"\r\n\r\n",
    )
    return b"".join(out)
