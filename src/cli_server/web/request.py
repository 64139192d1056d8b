"""The Site's request class: caps how much of a request body we keep."""

from __future__ import annotations

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


class QuietSandboxSite(server.Site):
    """Access-logs the main site only: a sandbox's UI makes hundreds of asset, event and
    terminal requests per minute, and logging each would cost more than proxying it."""

    def log(self, request: http.Request) -> None:
        host = (request.getHeader(b"host") or b"").lower()
        if not host.startswith(b"oc-"):
            super().log(request)
