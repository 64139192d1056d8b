"""The Site's request class: caps how much of a request body we keep."""

from __future__ import annotations

from twisted.web import server

MAX_BODY = 1024 * 1024


class BoundedRequest(server.Request):
    """Stops storing a body past ``MAX_BODY``; handlers then answer 413.

    twisted.web reads the whole body before rendering, spilling large ones to a temporary file;
    without a cap a client could fill the disk with one request.
    """

    body_too_large = False
    _received = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self.body_too_large = True
            return
        super().handleContentChunk(data)
