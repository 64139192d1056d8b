"""What the access log writes of a request: never a credential, and not the dashboard's polls."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web import http


class _Redacted:
    """A request as the access log sees it: credential query parameters blanked out, and any
    API token (``cli_pat_...``, percent-encoded or not) in the path or the Referer, where
    someone pasted one."""

    def __init__(self, request: http.Request) -> None:
        self._request = request
        path, sep, query = request.uri.partition(b"?")
        if sep:
            query = _redact(query)
        self.uri = _API_TOKEN.sub(b"cli_pat_redacted", path + sep + query)

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        return _API_TOKEN.sub(b"cli_pat_redacted", value) if value is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _either(char: str) -> str:
    """``char`` as itself or percent-encoded (either case of hex digit)."""
    code = f"{ord(char):02x}"
    return f"(?:{re.escape(char)}|%{code[0]}[{code[1]}{code[1].upper()}])"


# A token as written or percent-encoded in part or whole: a URL decoder would find it in
# either, so the log must not keep either.
_ENCODED_TOKEN_CHAR = r"%(?:2[dD]|3[0-9]|4[1-9a-fA-F]|5[0-9aAfF]|6[1-9a-fA-F]|7[0-9aA])"
_API_TOKEN = re.compile(
    "".join(_either(c) for c in "cli_pat_").encode()
    + rb"(?:[A-Za-z0-9_-]|"
    + _ENCODED_TOKEN_CHAR.encode()
    + rb")+"
)


_CREDENTIALS = frozenset({b"token", b"ticket", b"auth_token", b"code", b"state"})


def _redact(query: bytes) -> bytes:
    """Blanks credential parameters, their names compared as a query parser decodes them
    (``%74oken=`` is ``token=`` to ``parse_qs``, so the tunnel accepts it)."""
    parts = query.split(b"&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition(b"=")
        if eq and unquote_to_bytes(name.replace(b"+", b" ")).lower() in _CREDENTIALS:
            parts[i] = name + b"=redacted"
    return b"&".join(parts)


def api_read(request: http.Request) -> bool:
    """A GET or HEAD of the REST API answered with its data (200, or 304): changes nothing, so
    says nothing new. Redirects stay in the log: a sign-in's callback is a GET that answers
    303, and it is worth a line."""
    return (
        request.method in (b"GET", b"HEAD")
        and (request.path == b"/api" or request.path.startswith(b"/api/"))
        and request.code in (200, 304)
    )


def redacting_log_formatter(timestamp: str, request: http.Request) -> str:
    line: str = http.combinedLogFormatter(timestamp, _Redacted(request))
    return line
