"""An HTTP/1.1 channel that tells its requests their request line as soon as it is read.

twisted.web tells a request its method and path (``requestReceived``) only once the whole body
is in. ``web.request.BoundedRequest`` renders a sandbox's upload while its body arrives, and
refuses a body past its cap before reading the rest, so it needs the line when the headers are
in (``gotLength``). The sites whose requests are ``BoundedRequest``s (``web.serving``'s main
site, ``anthropic.listener``'s doors) serve with this channel as their ``protocol``; it uses
only twisted.web's public API (``lineReceived``, ``requests``).
"""

from __future__ import annotations

from typing import TypeAlias

from twisted.web import http

RequestLine: TypeAlias = tuple[bytes, bytes, bytes]  # (method, target, version)


def parse_request_line(line: bytes) -> RequestLine | None:
    """An HTTP/1.x request line's (method, target, version); None when it is not three
    non-empty words (twisted.web answers 400 to such a line itself, before any header)."""
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


class RequestLineChannel(http.HTTPChannel):
    """twisted.web's HTTP/1.1 channel; a request that has a ``request_line`` attribute gets
    its request line there as soon as the line is read, before its headers."""

    def lineReceived(self, line: bytes) -> None:
        opened = len(self.requests)
        super().lineReceived(line)
        if len(self.requests) > opened:  # (the line was a request's first: it made the request)
            request = self.requests[-1]
            if hasattr(request, "request_line"):
                request.request_line = parse_request_line(line)
