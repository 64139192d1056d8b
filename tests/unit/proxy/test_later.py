"""``AnsweredLater``: a leaf whose coroutine answers later; a failure before the answer began
gives the browser the 502 page (never a hung request), and is logged."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyChannel

from cli_server.proxy.later import AnsweredLater


class Answering(AnsweredLater):
    """A leaf whose answer waits for ``go`` to fire; it writes ``body`` or raises."""

    _doing = "answering {uri} for a test"

    def __init__(self, body: bytes | None = None, write_first: bool = False) -> None:
        super().__init__()
        self.go: Deferred[None] = Deferred()
        self.body = body
        self.write_first = write_first
        self.pages: list[tuple[int, str, str]] = []

    async def _handle(self, request: Any) -> None:
        if self.write_first:
            request.write(b"partial")
        await self.go
        if self.body is None:
            raise RuntimeError("upstream vanished")
        request.write(self.body)
        request.finish()

    def _page(self, request: Any, status: int, title: str, text: str, **kw: Any) -> None:
        self.pages.append((status, title, text))
        request.setResponseCode(status)
        request.write(title.encode())
        request.finish()


def request() -> Request:
    r = Request(DummyChannel(), False)
    r.method = b"GET"
    r.uri = r.path = b"/x"
    r.clientproto = b"HTTP/1.1"
    return r


class AnsweredLaterTests(SynchronousTestCase):
    def test_render_is_not_done_yet_then_answers(self) -> None:
        """``render`` returns at once; the coroutine's answer follows when it is ready."""
        leaf, r = Answering(b"hello"), request()
        self.assertIs(leaf.render(r), NOT_DONE_YET)
        self.assertFalse(r.finished)
        leaf.go.callback(None)
        self.assertTrue(r.finished)
        self.assertEqual(r.code, 200)
        self.assertEqual(leaf.pages, [])

    def test_failure_before_answer_is_a_502_page(self) -> None:
        """An exception before anything was written: the 502 page, and the failure logged
        with the leaf's own ``_doing`` message naming the URI."""
        leaf, r = Answering(None), request()
        leaf.render(r)
        with capturedLogs() as events:
            leaf.go.callback(None)
        self.assertEqual(
            leaf.pages, [(502, "Something went wrong", "The sandbox could not be reached.")]
        )
        self.assertEqual(r.code, 502)
        self.assertTrue(r.finished)
        [event] = [e for e in events if "log_failure" in e]
        self.assertEqual(event["log_format"], "answering {uri} for a test")
        self.assertEqual(event["uri"], b"/x")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failure_after_answer_began_sends_no_page(self) -> None:
        """Once bytes went out, no page can follow (it would corrupt the answer): logged only."""
        leaf, r = Answering(None, write_first=True), request()
        leaf.render(r)
        leaf.go.callback(None)
        self.assertEqual(leaf.pages, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failure_after_the_browser_left_sends_no_page(self) -> None:
        """A request whose connection is gone gets no page written to it."""
        leaf, r = Answering(None), request()
        leaf.render(r)
        r.channel = None
        leaf.go.callback(None)
        self.assertEqual(leaf.pages, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
