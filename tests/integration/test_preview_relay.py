"""A preview through the relay workers, end to end on the real server (embedded PostgreSQL,
real relay worker processes) with a FAKE sandbox whose previewed port is a recording upstream:
a keep-alive connection is carried by a worker, never with a credential, counts as the
sandbox's activity, and gives back what is not its own origin's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from cli_server.sandboxes.backend import Endpoint
from cli_server.sandboxes.opencode import basic_auth
from cli_server.testing import FakeBackend

from .conftest import Running, _reactor, server_config, start_server, stop_server
from .helpers import Wire, wait_until
from .test_sandboxes_api import team, wait_status
from .upstream import Recorder, serve

PORT = 5173


@attrs.define(eq=False)
class PreviewBackend(FakeBackend):
    """FAKE: a running sandbox's every port is the recording upstream."""

    def preview_endpoint(self, sandbox_id: str, port: int) -> Deferred[Endpoint | None]:
        return succeed(self.running.get(sandbox_id))


@attrs.define
class Preview:
    app: Running
    upstream: Recorder
    sandbox: str
    cookie: bytes  # the preview origin's session cookie, as sent
    opencode_cookie: bytes

    @property
    def host(self) -> bytes:
        return f"oc-{self.sandbox}-p{PORT}.localhost:8080".encode()

    def get(self, path: bytes, host: bytes | None = None, cookie: bytes | None = None) -> bytes:
        return b"GET %s HTTP/1.1\r\nHost: %s\r\nCookie: %s\r\n\r\n" % (
            path,
            host or self.host,
            cookie or self.cookie,
        )


@pytest_twisted.async_yield_fixture
async def preview(db_url: str) -> AsyncIterator[Preview]:
    recorder, port = serve(_reactor())
    backend = PreviewBackend(serve_at=port.getHost().port)
    app = await start_server(db_url, backend=backend, config=server_config(db_url))
    try:
        people, wid = await team(app)
        dev = people["developer"]
        made = await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "p"})
        sid = made.body["id"]
        await wait_status(dev, sid, "running")
        cookies = []
        for body, label in (({"port": PORT}, f"oc-{sid}-p{PORT}"), (None, f"oc-{sid}")):
            url = (await dev.call("POST", f"/api/sandboxes/{sid}/open", body)).body["url"]
            host = f"{label}.localhost:8080"
            redeemed = await app.client().call("GET", url.split(host, 1)[1], headers={"Host": host})
            assert redeemed.code == 303, redeemed
            cookies.append(redeemed.headers.getRawHeaders("set-cookie")[0].split(";")[0].encode())
        yield Preview(app, recorder, sid, *cookies)
    finally:
        await stop_server(app)
        await port.stopListening()


async def _answer(wire: Wire, count: int) -> None:
    await wait_until(_reactor(), lambda: wire.received.count(b"HTTP/1.1 ") >= count, timeout=10)


@pytest_twisted.ensureDeferred
async def test_a_preview_is_carried_by_a_worker_uncredentialed_and_counts_as_activity(
    preview: Preview,
) -> None:
    """Requests on one keep-alive connection to a preview: a relay worker carries them, the
    dev server gets no Authorization (nor opencode's password in any form), the sandbox's
    activity is recorded, and a request for opencode's address on that connection goes
    back to the server, which refuses the preview's session there."""
    reactor = _reactor()
    app = preview.app
    workers = app.server.relay_workers
    await app.db.execute("UPDATE sandboxes SET last_activity_at = now() - interval '1h'")
    password = (
        await app.db.query(
            "SELECT opencode_password FROM sandboxes WHERE id = %s", (preview.sandbox,)
        )
    )[0]["opencode_password"]
    browser = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", app.port.getHost().port), Wire()
    )
    try:
        for n in range(3):  # one keep-alive connection, a worker's
            browser.transport.write(preview.get(b"/app/%d?token=secret" % n))  # type: ignore[union-attr]
            await _answer(browser, n + 1)
        assert workers.carried_count == 1
        assert [s["uri"] for s in preview.upstream.seen] == ["/app/0", "/app/1", "/app/2"]
        for seen in preview.upstream.seen:
            assert "authorization" not in seen["headers"], seen
            assert seen["headers"]["host"] == [preview.host.decode()]
            assert basic_auth(password).decode() not in str(seen) and password not in str(seen)

        # Activity: the worker's report (once a second) keeps the sandbox awake.
        async def recent() -> bool:
            (row,) = await app.db.query(
                "SELECT last_activity_at > now() - interval '1 minute' AS recent FROM sandboxes"
                " WHERE id = %s",
                (preview.sandbox,),
            )
            return bool(row["recent"])

        await wait_until(reactor, recent, timeout=10)

        # opencode's address on the same connection, with the preview's session: not the
        # worker's to carry; the server answers 401 and the sandbox gets nothing.
        browser.transport.write(
            preview.get(b"/oc", host=f"oc-{preview.sandbox}.localhost:8080".encode())
        )  # type: ignore[union-attr]
        await _answer(browser, 4)
        assert browser.received.rsplit(b"HTTP/1.1 ", 1)[1].startswith(b"401 ")
        assert len(preview.upstream.seen) == 3
    finally:
        browser.transport.loseConnection()  # type: ignore[union-attr]
        await browser.closed
    await wait_until(reactor, lambda: workers.carried_count == 0, timeout=5)
