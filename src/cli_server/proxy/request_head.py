"""A strict reader of the HTTP/1.1 request heads the relay workers take.

The router (``router.py``) and the relay workers handle the common request only: HTTP/1.1, a
plain method, an origin-form target, no body or a ``Content-Length`` one, or a plain
WebSocket upgrade (a GET with one ``Upgrade: websocket`` and ``Connection: upgrade``).
Anything else, and anything even slightly malformed, reads as None here and goes to
twisted.web, which answers it as it always has. Being strict is what keeps two parsers from
disagreeing about where a request ends (request smuggling): this one never guesses.
"""

from __future__ import annotations

import re

from attrs import frozen

from cli_server.proxy import rules
from cli_server.proxy.hygiene import only

MAX_HEAD = 16 * 1024  # as twisted.web's limit on a request's headers (it refuses more)
# Methods a browser's fetch sends with no body or a Content-Length one. HEAD is left to
# twisted.web: its answer has a Content-Length and no body, which our response parser
# would wait for.
FAST_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Control bytes other than tab, CR and LF; a CR or LF outside a CRLF is caught by counting.
_BAD_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
# Headers after which the request is not one the fast path relays as it is.
_NOT_PLAIN = frozenset({b"transfer-encoding", b"expect", b"te"})


@frozen
class Fields:
    """What the fast path needs from a header block; a pure function of its bytes."""

    headers: tuple[tuple[bytes, bytes], ...]  # as sent: names in their case, values trimmed
    host: bytes
    content_length: int
    close: bool  # the client said Connection: close
    cookies: tuple[bytes, ...]
    origin: bytes | None = None  # b"" when sent more than once (see hygiene.only)
    fetch_site: bytes | None = None  # Sec-Fetch-Site, the same way
    upgrade: bool = False  # a WebSocket upgrade (``Upgrade: websocket``, Connection: upgrade)


@frozen
class RequestHead:
    method: bytes
    target: bytes
    block: bytes  # the header lines as sent, blank line included
    fields: Fields

    @property
    def asked(self) -> rules.Asked:
        """What the rulebook reads of this request."""
        fields = self.fields
        return rules.Asked(
            fields.host,
            self.method,
            self.target,
            fields.upgrade,
            fields.origin,
            fields.fetch_site,
            fields.cookies,
        )


def head_end(buffer: bytes) -> int:
    """The size of the head at the start of ``buffer``, or -1 while it is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    return end + 4 if end >= 0 else -1


# A browser sends the same header block to a sandbox request after request (only the
# request line changes), so blocks already read are remembered, bounded.
_KNOWN: dict[bytes, Fields | None] = {}
_UNKNOWN: Fields | None = Fields((), b"", 0, False, ())  # (a sentinel)
_KNOWN_MAX = 1024  # entries of at most MEMO_BLOCK bytes: a few MiB at worst
MEMO_BLOCK = 2048
_NO_BODY = frozenset({b"GET", b"HEAD", b"OPTIONS"})  # methods whose bodies mean nothing


def parse_head(raw: bytes, max_body: int) -> RequestHead | None:
    """``raw`` is one whole head (through the blank line); None unless it is plainly fast."""
    first = raw.find(b"\r\n")
    parts = raw[:first].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in FAST_METHODS:
        return None
    method, target = parts[0], parts[1]
    if not target.startswith(b"/") or _BAD_TARGET.search(target):
        return None  # (no CR, LF or other control byte in the request line, then)
    block = raw[first + 2 :]
    fields = _KNOWN.get(block, _UNKNOWN)
    if fields is _UNKNOWN:
        fields = read_fields(block)
        if len(block) <= MEMO_BLOCK:
            if len(_KNOWN) >= _KNOWN_MAX:
                _KNOWN.clear()
            _KNOWN[block] = fields
    if fields is None or fields.content_length > max_body:
        return None
    if fields.content_length and method in _NO_BODY:
        return None  # (legal, but no browser sends one: twisted.web carries the odd case)
    if fields.upgrade and method != b"GET":
        return None
    return RequestHead(method, target, block, fields)


def read_fields(block: bytes) -> Fields | None:
    """``block`` is a head's header lines through the blank line; None unless plain."""
    crlf = block.count(b"\r\n")
    if block.count(b"\r") != crlf or block.count(b"\n") != crlf or _BAD_BYTE.search(block):
        return None
    headers: list[tuple[bytes, bytes]] = []
    host: bytes | None = None
    length: bytes | None = None
    close = False
    cookies: list[bytes] = []
    origins: list[bytes] = []
    sites: list[bytes] = []
    upgrades: list[bytes] = []
    upgrade = False  # Connection: upgrade
    for line in block[:-4].split(b"\r\n") if block != b"\r\n" else ():
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            return None  # also: obs-fold, a space before the colon
        value = value.strip(b" \t")
        lower = name.lower()
        if lower in _NOT_PLAIN:
            return None
        if lower == b"host":
            if host is not None:
                return None
            host = value
        elif lower == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 12:
                return None
            length = value
        elif lower == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            upgrade = upgrade or b"upgrade" in tokens
            close = close or b"close" in tokens
        elif lower == b"upgrade":
            upgrades.append(value.lower())
        elif lower == b"cookie":
            cookies.append(value)
        elif lower == b"origin":
            origins.append(value)
        elif lower == b"sec-fetch-site":
            sites.append(value)
        headers.append((name, value))
    if host is None or ((upgrade or upgrades) and not (upgrade and upgrades == [b"websocket"])):
        return None  # (an upgrade to anything else, or half of one: twisted.web's)
    size = int(length) if length is not None else 0
    return Fields(
        tuple(headers), host, size, close, tuple(cookies), only(origins), only(sites), upgrade
    )
