"""A twisted.web leaf whose answer comes later, from a coroutine."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request


class AnsweredLater(Resource):
    """``render`` runs ``_handle``; should it fail before the answer began, the browser gets
    the 502 page (``_page``) rather than a hung request, and the failure is logged as
    ``_doing``."""

    isLeaf = True
    _doing = "answering {uri}"
    _log = Logger()

    def render(self, request: Request) -> int:
        d = Deferred.fromCoroutine(self._handle(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Request) -> None:
        self._log.failure(self._doing, failure, uri=request.uri)
        if not request.finished and not request.startedWriting and request.channel:
            self._page(request, 502, "Something went wrong", "The sandbox could not be reached.")

    async def _handle(self, request: Request) -> None:
        raise NotImplementedError

    def _page(
        self,
        request: Request,
        status: int,
        title: str,
        text: str,
        *,
        refresh: int | None = None,
        resume: bool = False,
        then: str | None = None,
    ) -> None:
        raise NotImplementedError
