"""The Site's request class: caps how much of a request body we keep."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web import http, server

MAX_BODY = 1024 * 1024  # the API's JSON bodies
MAX_SANDBOX_BODY = 64 * 1024 * 1024  # uploads through a sandbox's proxy
MAX_ANTHROPIC_BODY = 32 * 1024 * 1024  # prompts with images and long contexts


class BoundedRequest(server.Request):
    """Stops storing a body past its cap; handlers then answer 413.

    twisted.web reads the whole body before rendering, spilling large ones to a temporary file;
    without a cap a client could fill the disk with one request. Sandbox subdomains get a
    larger cap than the API.
    """

    body_too_large = False
    _received = 0
    _cap: int | None = None

    def handleContentChunk(self, data: bytes) -> None:
        if self._cap is None:
            host = (self.getHeader(b"host") or b"").split(b":", 1)[0].lower()
            if host.startswith(b"oc-"):
                self._cap = MAX_SANDBOX_BODY
            elif getattr(self.channel, "_path", b"").startswith(b"/proxy/anthropic/"):
                # (the request line is parsed before the body; ``uri`` is set only after it)
                self._cap = MAX_ANTHROPIC_BODY
            else:
                self._cap = MAX_BODY
        self._received += len(data)
        if self._received > self._cap:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


class _Redacted:
    """A request as the access log sees it: credential query parameters blanked out."""

    def __init__(self, request: http.Request) -> None:
        self._request = request
        path, sep, query = request.uri.partition(b"?")
        if sep:
            query = _redact(query)
        self.uri = path + sep + query

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


_CREDENTIALS = frozenset({b"token", b"ticket", b"auth_token", b"code"})


def _redact(query: bytes) -> bytes:
    """Blanks credential parameters, their names compared as a query parser decodes them
    (``%74oken=`` is ``token=`` to ``parse_qs``, so the tunnel accepts it)."""
    parts = query.split(b"&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition(b"=")
        if eq and unquote_to_bytes(name.replace(b"+", b" ")).lower() in _CREDENTIALS:
            parts[i] = name + b"=redacted"
    return b"&".join(parts)


def redacting_log_formatter(timestamp: str, request: http.Request) -> str:
    line: str = http.combinedLogFormatter(timestamp, _Redacted(request))
    return line


class QuietSandboxSite(server.Site):
    """Access-logs the main site only (a sandbox's UI makes hundreds of asset, event and
    terminal requests per minute, and logging each would cost more than proxying it), and
    never a credential in a query string (the tunnel accepts ``?token=``)."""

    def __init__(self, resource: Any, **kwargs: Any) -> None:
        super().__init__(resource, logFormatter=redacting_log_formatter, **kwargs)

    def log(self, request: http.Request) -> None:
        host = (request.getHeader(b"host") or b"").lower()
        if not host.startswith(b"oc-"):
            super().log(request)
