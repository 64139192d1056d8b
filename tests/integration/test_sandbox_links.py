"""A sandbox's shared address and where its pages lead, against a FAKE sandbox (an upstream
that records what it receives) with real PostgreSQL: a browser without a session is sent to
the dashboard's /open/<id>, scripts get 401, and Resume or a reload lands in the work."""

from __future__ import annotations

import json
from html import escape
from urllib.parse import quote

import pytest_twisted

from .test_proxy import Proxy, proxy  # noqa: F401  (the fixture)
from .test_sandboxes_api import wait_status

NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Accept": "text/html"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _location(reply: object) -> str:
    return str(reply.headers.getRawHeaders("location")[0])  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_a_browser_without_a_session_is_sent_to_the_open_page(proxy: Proxy) -> None:  # noqa: F811
    """Navigations (any path, with or without fetch metadata) answer 303 to the main site's
    /open/<id>, the same fixed address whatever was asked; script requests keep their 401;
    with a session the page is proxied; the main site serves that route to its web UI."""
    target = f"http://localhost:8080/open/{proxy.sandbox}"
    for path in ("/", "/some/deep/path?x=1", "/_cli/open"):
        sent = await proxy.visit(path, headers=NAVIGATE)
        assert sent.code == 303 and _location(sent) == target, (path, sent)
        assert sent.headers.getRawHeaders("cache-control") == ["no-store"]
        assert sent.headers.getRawHeaders("set-cookie") is None
    old_browser = await proxy.visit("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert old_browser.code == 303 and _location(old_browser) == target
    head = await proxy.visit("/", "HEAD", headers=NAVIGATE)
    assert head.code == 303
    unknown = "00000000-0000-4000-8000-000000000000"
    elsewhere = await proxy.visit("/", sandbox_id=unknown, headers=NAVIGATE)
    assert _location(elsewhere) == f"http://localhost:8080/open/{unknown}"  # (says nothing)

    scripted = [
        {"Sec-Fetch-Mode": "cors", "Accept": "text/html"},  # fetch()
        {"Sec-Fetch-Mode": "no-cors", "Accept": "*/*"},
        {"Accept": "text/event-stream"},  # EventSource
        {"Accept": "application/json"},
        {},
        {**NAVIGATE, "Upgrade": "websocket", "Connection": "Upgrade"},
    ]
    for headers in scripted:
        refused = await proxy.visit("/event", headers=headers)
        assert refused.code == 401 and b"dashboard" in refused.body, headers
    posted = await proxy.visit("/session", "POST", headers=NAVIGATE, body={})
    assert posted.code in (401, 403), posted
    assert proxy.upstream.seen == []

    cookie = await proxy.open("developer")
    proxied = await proxy.visit("/echo", cookie=cookie, headers=NAVIGATE)
    assert proxied.code == 200 and len(proxy.upstream.seen) == 1, proxied

    spa = await proxy.app.client().call(
        "GET", f"/open/{proxy.sandbox}", headers={"Host": "localhost:8080", **NAVIGATE}
    )
    assert spa.code == 200 and b'<div id="root">' in spa.body, spa


@pytest_twisted.ensureDeferred
async def test_resume_and_reload_land_in_the_work(proxy: Proxy) -> None:  # noqa: F811
    """The paused page's Resume form names where it leads: the landing (/_cli/open) from the
    home page, the same address from a deeper one; the server keeps only paths of this
    origin. The resuming page reloads to the same place."""
    owner, backend = proxy.people["owner"], proxy.app.server.backend
    dev = await proxy.open("developer")
    cases = [
        ("/", b"/_cli/open", "/_cli/open"),
        (
            "/L2RhdGEvZGlzazA/session?x=1",
            b"/L2RhdGEvZGlzazA/session?x=1",
            "/L2RhdGEvZGlzazA/session?x=1",
        ),
        ("/", b"//evil.example/", "/_cli/open"),  # (a forged next)
        ("/", b"/\\evil.example", "/_cli/open"),
    ]
    for page_path, sent_next, expected in cases:
        await owner.call("POST", f"/api/sandboxes/{proxy.sandbox}/pause")
        await wait_status(owner, proxy.sandbox, "paused")
        proxy.app.server.proxy_access.forget()
        paused = await proxy.visit(page_path, cookie=dev)
        then = "/_cli/open" if page_path == "/" else page_path
        action = f'action="{escape("/_cli/resume?next=" + quote(then, safe="/"))}"'.encode()
        assert paused.code == 503 and action in paused.body, paused.body
        backend.hold()  # (the resuming page, seen before opencode answers)
        resumed = await proxy.app.client().call(
            "POST",
            "/_cli/resume?next=" + quote(sent_next, safe=""),
            headers={
                "Host": proxy.host(),
                "Cookie": f"cli_sandbox={dev}",
                "Origin": f"http://{proxy.host()}",
                **FORM,
            },
            raw=b"",
        )
        assert resumed.code == 303 and _location(resumed) == expected, (sent_next, resumed)
        proxy.app.server.proxy_access.forget()
        resuming = await proxy.visit(page_path, cookie=dev)
        assert resuming.code == 503, resuming
        reload_to = "/_cli/open" if page_path == "/" else page_path
        refresh = f'content="3;url={reload_to}"'.replace("&", "&amp;").encode()
        assert refresh in resuming.body, resuming.body
        backend.release()
        await wait_status(owner, proxy.sandbox, "running")


@pytest_twisted.ensureDeferred
async def test_guests_land_on_reading_and_are_refused_in_words(proxy: Proxy) -> None:  # noqa: F811
    """The landing asks for the project's sessions for a guest (the latest one to read), and
    opens a new session for a developer; a guest's script write gets opencode's error shape,
    a guest's form post the page."""
    dev, guest = await proxy.open("developer"), await proxy.open("guest")
    as_dev = await proxy.visit("/_cli/open", cookie=dev, headers=NAVIGATE)
    as_guest = await proxy.visit("/_cli/open", cookie=guest, headers=NAVIGATE)
    assert as_dev.code == as_guest.code == 200
    assert b"if (!false) return location.replace(home);" in as_dev.body, as_dev.body
    assert b"if (!true) return location.replace(home);" in as_guest.body, as_guest.body
    assert as_dev.body != as_guest.body
    origin = {"Origin": f"http://{proxy.host()}", "Sec-Fetch-Mode": "cors"}
    refused = await proxy.visit("/session", "POST", cookie=guest, headers=origin, body={})
    assert refused.code == 403, refused
    assert refused.headers.getRawHeaders("content-type") == ["application/json"]
    body = refused.body if isinstance(refused.body, dict) else json.loads(refused.body)
    assert body == {
        "name": "Forbidden",
        "data": {"message": "You are a guest in this workspace: opencode is read-only for you."},
    }
    form = {"Origin": f"http://{proxy.host()}", **NAVIGATE}
    page = await proxy.visit("/session", "POST", cookie=guest, headers=form, body={})
    assert page.code == 403 and b"Read-only access" in page.body, page
    assert proxy.upstream.seen == []
