"""The proxy's rulebook (``proxy/rules.py``) as a table: every path asks it, so this is what
every path does."""

from __future__ import annotations

import pytest

from cli_server.domain.roles import Role
from cli_server.proxy.hosts import PORT_RULE, Place
from cli_server.proxy.rules import (
    Asked,
    Forward,
    Listener,
    Ours,
    Page,
    Session,
    Verdict,
    Why,
    decide,
    screen,
    session_token,
)

SID = "0b6f1a3e-1111-4222-8333-444455556666"
HOST = f"oc-{SID}.example.org".encode()
OWN = b"https://" + HOST
LISTENER = Listener(b"https", b"example.org", b"__Host-cli_sandbox")
COOKIE = b"__Host-cli_sandbox=tok; theme=dark"
DEV = Session(Role.DEVELOPER, "running", False)
GUEST = Session(Role.GUEST, "running", False)


def ask(method: bytes = b"GET", target: bytes = b"/x", **kw: object) -> Asked:
    fields: dict[str, object] = {"host": HOST, "method": method, "target": target}
    fields.update(kw)
    return Asked(**fields)  # type: ignore[arg-type]


def preview_host(port: str) -> bytes:
    return f"oc-{SID}-p{port}.example.org".encode()


PREVIEW_OWN = b"https://" + preview_host("5173")


def preview(method: bytes = b"GET", target: bytes = b"/x", **kw: object) -> Asked:
    return ask(method, target, **{"host": preview_host("5173"), **kw})


TABLE: list[tuple[str, Asked, Session | None, Verdict]] = [
    ("a developer's GET", ask(), DEV, Forward(SID, b"/x", False)),
    (
        "credential parameters never reach the sandbox",
        ask(target=b"/x?a=1&auth_token=s&%74oken=t"),
        DEV,
        Forward(SID, b"/x?a=1", False),
    ),
    (
        "a developer's POST from its own page",
        ask(b"POST", origin=OWN),
        DEV,
        Forward(SID, b"/x", False),
    ),
    ("a developer's terminal", ask(upgrade=True, origin=OWN), DEV, Forward(SID, b"/x", False)),
    (
        "a local sandbox goes through the tunnel",
        ask(),
        Session(Role.OWNER, "running", True),
        Forward(SID, b"/x", True),
    ),
    ("a guest reads", ask(), GUEST, Forward(SID, b"/x", False)),
    ("a guest's HEAD", ask(b"HEAD"), GUEST, Forward(SID, b"/x", False)),
    (
        "a guest's write, from opencode's UI",
        ask(b"POST", origin=OWN),
        GUEST,
        Page(Why.READ_ONLY_API, SID),
    ),
    ("a guest's form", ask(b"POST", origin=OWN, page_load=True), GUEST, Page(Why.READ_ONLY, SID)),
    ("a guest's terminal", ask(upgrade=True, origin=OWN), GUEST, Page(Why.READ_ONLY, SID)),
    ("a guest's OPTIONS", ask(b"OPTIONS"), GUEST, Page(Why.READ_ONLY_API, SID)),
    (
        "a paused sandbox",
        ask(),
        Session(Role.OWNER, "paused", False),
        Page(Why.NOT_RUNNING, SID, "paused"),
    ),
    (
        "a failed sandbox",
        ask(),
        Session(Role.OWNER, "failed", True),
        Page(Why.NOT_RUNNING, SID, "failed"),
    ),
    (
        "a guest's write to a paused sandbox: read-only first",
        ask(b"PUT", origin=OWN),
        Session(Role.GUEST, "paused", False),
        Page(Why.READ_ONLY_API, SID),
    ),
    ("no session, a navigation", ask(page_load=True), None, Page(Why.SIGN_IN, SID)),
    ("no session, a script's fetch", ask(), None, Page(Why.SIGNED_OUT, SID)),
    (
        "no session, a form",
        ask(b"POST", origin=OWN, page_load=True),
        None,
        Page(Why.SIGNED_OUT, SID),
    ),
    (
        "no session, an upgrade",
        ask(upgrade=True, origin=OWN, page_load=True),
        None,
        Page(Why.SIGNED_OUT, SID),
    ),
    (
        "another sandbox's page reads",
        ask(origin=b"https://oc-other.example.org"),
        DEV,
        Page(Why.CROSS_ORIGIN, SID),
    ),
    (
        "another sandbox's page writes",
        ask(b"POST", origin=b"https://oc-other.example.org"),
        DEV,
        Page(Why.CROSS_ORIGIN, SID),
    ),
    (
        "an upgrade from another origin",
        ask(upgrade=True, origin=b"https://evil.example"),
        DEV,
        Page(Why.CROSS_ORIGIN, SID),
    ),
    (
        "a write with a null Origin, cross-site",
        ask(b"POST", origin=b"null", fetch_site=b"same-site"),
        DEV,
        Page(Why.CROSS_ORIGIN, SID),
    ),
    (
        "a write with a null Origin, same-origin",
        ask(b"POST", origin=b"null", fetch_site=b"same-origin"),
        DEV,
        Forward(SID, b"/x", False),
    ),
    ("a write from no browser", ask(b"DELETE"), DEV, Forward(SID, b"/x", False)),
    (
        "an upgrade with no Origin from a browser",
        ask(upgrade=True, fetch_site=b"cross-site"),
        DEV,
        Page(Why.CROSS_ORIGIN, SID),
    ),
    ("two Origin headers", ask(b"POST", origin=b""), DEV, Page(Why.CROSS_ORIGIN, SID)),
    ("Origin in another case", ask(b"POST", origin=OWN.upper()), DEV, Forward(SID, b"/x", False)),
    (
        "a cross-origin request is refused before its session counts",
        ask(origin=b"https://evil.example"),
        None,
        Page(Why.CROSS_ORIGIN, SID),
    ),
    (
        "the ticket's path, with no session yet",
        ask(target=b"/_cli/auth?ticket=t"),
        None,
        Ours(SID, b"/_cli/auth"),
    ),
    (
        "our resume path",
        ask(b"POST", b"/_cli/resume", origin=OWN),
        GUEST,
        Ours(SID, b"/_cli/resume"),
    ),
    ("our paths need a session", ask(target=b"/_cli/open"), None, Page(Why.SIGNED_OUT, SID)),
    (
        "our paths never reach the sandbox",
        ask(target=b"/_cli/anything"),
        DEV,
        Ours(SID, b"/_cli/anything"),
    ),
    ("a malformed sandbox name", ask(host=b"oc-nope.example.org"), DEV, Page(Why.NOT_FOUND)),
    ("another domain", ask(host=b"example.com"), DEV, Page(Why.NOT_FOUND)),
    ("an absolute-form target", ask(target=b"http://x/"), DEV, Page(Why.BAD_TARGET)),
    # Previews: a port of the sandbox, its own origin, opencode's rules.
    ("a preview's GET", preview(), DEV, Forward(SID, b"/x", False, 5173)),
    (
        "a preview's POST from its own page",
        preview(b"POST", origin=PREVIEW_OWN),
        DEV,
        Forward(SID, b"/x", False, 5173),
    ),
    (
        "a preview's hot reload (WebSocket) from its own page",
        preview(upgrade=True, origin=PREVIEW_OWN),
        DEV,
        Forward(SID, b"/x", False, 5173),
    ),
    (
        "a preview loses credential parameters too",
        preview(target=b"/x?ticket=t&q=1"),
        DEV,
        Forward(SID, b"/x?q=1", False, 5173),
    ),
    (
        "a local sandbox's preview goes through the tunnel",
        preview(),
        Session(Role.OWNER, "running", True),
        Forward(SID, b"/x", True, 5173),
    ),
    (
        "opencode's page writes to the preview: another origin",
        preview(b"POST", origin=OWN),
        DEV,
        Page(Why.CROSS_ORIGIN, SID, port=5173),
    ),
    (
        "the preview's page writes to opencode: another origin",
        ask(b"POST", origin=PREVIEW_OWN),
        DEV,
        Page(Why.CROSS_ORIGIN, SID),
    ),
    (
        "another port's page opens a WebSocket to the preview",
        preview(upgrade=True, origin=b"https://oc-" + SID.encode() + b"-p8000.example.org"),
        DEV,
        Page(Why.CROSS_ORIGIN, SID, port=5173),
    ),
    ("a guest reads a preview", preview(), GUEST, Forward(SID, b"/x", False, 5173)),
    (
        "a guest's write to a preview",
        preview(b"POST", origin=PREVIEW_OWN),
        GUEST,
        Page(Why.READ_ONLY_API, SID, port=5173),
    ),
    (
        "a guest's WebSocket to a preview",
        preview(upgrade=True, origin=PREVIEW_OWN),
        GUEST,
        Page(Why.READ_ONLY, SID, port=5173),
    ),
    (
        "a paused sandbox's preview",
        preview(),
        Session(Role.OWNER, "paused", False),
        Page(Why.NOT_RUNNING, SID, "paused", port=5173),
    ),
    (
        "no session on a preview, a navigation",
        preview(page_load=True),
        None,
        Page(Why.SIGN_IN, SID, port=5173),
    ),
    ("no session on a preview, a fetch", preview(), None, Page(Why.SIGNED_OUT, SID, port=5173)),
    (
        "a preview's ticket path",
        preview(target=b"/_cli/auth?ticket=t"),
        None,
        Ours(SID, b"/_cli/auth", 5173),
    ),
    (
        "opencode's own port is not a preview",
        preview(host=preview_host("4096")),
        DEV,
        Page(Why.NOT_FOUND, detail=f"Port 4096 cannot be previewed: {PORT_RULE}."),
    ),
    (
        "a privileged port",
        preview(host=preview_host("80")),
        DEV,
        Page(Why.NOT_FOUND, detail=f"Port 80 cannot be previewed: {PORT_RULE}."),
    ),
    (
        "a port too large",
        preview(host=preview_host("65536")),
        DEV,
        Page(Why.NOT_FOUND, detail=f"Port 65536 cannot be previewed: {PORT_RULE}."),
    ),
    (
        "a port with a leading zero",
        preview(host=preview_host("05173")),
        None,
        Page(
            Why.NOT_FOUND, detail="Port 05173 cannot be previewed: write it without leading zeros."
        ),
    ),
    (
        "not a number",
        preview(host=preview_host("abc")),
        DEV,
        Page(Why.NOT_FOUND, detail=f"'abc' is not a port: {PORT_RULE}."),
    ),
]


@pytest.mark.parametrize(("case", "asked", "session", "verdict"), TABLE, ids=[t[0] for t in TABLE])
def test_decide(case: str, asked: Asked, session: Session | None, verdict: Verdict) -> None:
    """Each row: a request, the session its cookie names, and what happens to it."""
    assert decide(asked, LISTENER, session) == verdict


def test_screen_needs_no_session() -> None:
    """The part of the decision taken before the session is read: the sandbox, or its page."""
    assert screen(ask(), LISTENER) == Place(SID)
    assert screen(preview(), LISTENER) == Place(SID, 5173)
    assert screen(ask(origin=b"https://evil.example"), LISTENER) == Page(Why.CROSS_ORIGIN, SID)
    assert screen(ask(target=b"/_cli/auth"), LISTENER) == Ours(SID, b"/_cli/auth")


@pytest.mark.parametrize(
    ("cookies", "token"),
    [
        ((COOKIE,), "tok"),
        ((b"theme=dark",), None),
        ((COOKIE, b"__Host-cli_sandbox=other"), None),  # a tossed cookie: neither counts
        ((b"__Host-cli_sandbox=",), None),
        ((b"cli_sandbox=tok",), None),  # not this listener's name
    ],
)
def test_session_token(cookies: tuple[bytes, ...], token: str | None) -> None:
    """Exactly one session cookie of ours authenticates."""
    assert session_token(ask(cookies=cookies), LISTENER) == token
