"""What a sandbox may and may not see of a browser's request, and a browser of its answer.

Pure functions of bytes, with no Twisted: the twisted.web path (``forward.py``), the front
door (``fast_path.py``) and the relay process (``relay_keepalive.py``) all clean requests with
these, so the three never differ about what a sandbox gets.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-connection",
}
# Credentials of ours that must never reach a sandbox, in any form.
OUR_COOKIES = {b"cli_session", b"__Host-cli_session", b"cli_sandbox", b"__Host-cli_sandbox"}
CREDENTIAL_PARAMS = {b"auth_token", b"ticket", b"token"}
DROPPED_REQUEST = HOP_BY_HOP | {
    b"authorization",
    b"cookie",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-real-ip",
    b"content-length",
}


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


def safe_set_cookie(value: bytes) -> bool:
    """A sandbox may set host-only cookies for itself, never ones that reach other hosts
    (``Domain=``) or that shadow ours."""
    parts = [p.strip() for p in value.split(b";")]
    name = parts[0].split(b"=", 1)[0].strip()
    if name in OUR_COOKIES or name.lower().startswith(b"__host-cli"):
        return False
    return not any(p.lower().startswith(b"domain") for p in parts[1:])


# A plain head (request_head.py) keeps its Content-Length: its body is forwarded as it is.
DROPPED_PLAIN = DROPPED_REQUEST - {b"content-length"}


def plain_upstream_headers(
    headers: Iterable[tuple[bytes, bytes]],
    cookies: tuple[bytes, ...],
    host: bytes,
    authorization: bytes,
    peer: bytes,
    scheme: bytes,
) -> bytes:
    """A plain head's header block as the sandbox gets it, blank line included: the same
    hygiene as ``forward.upstream_headers``, written as bytes."""
    out: list[bytes] = []
    for name, value in headers:
        if name.lower() not in DROPPED_PLAIN:
            out += (name, b": ", value, b"\r\n")
    cookie = clean_cookie_header(cookies) if cookies else None
    if cookie:
        out += (b"cookie: ", cookie, b"\r\n")
    out += (
        b"authorization: ",
        authorization,
        b"\r\nx-forwarded-for: ",
        peer,
        b"\r\nx-forwarded-proto: ",
        scheme,
        b"\r\nx-forwarded-host: ",
        host,
        b"\r\n\r\n",
    )
    return b"".join(out)
