"""The proxy's rulebook: what happens to a request for a sandbox subdomain, decided once.

One pure function of the request's facts, the listener and the session's facts: forward it
to the sandbox (with the cleaned target), show a page of ours instead, or serve one of our
own paths (``/_cli/...``). A preview (``oc-{id}-p{port}``, a port of the sandbox) has the
same rules as opencode's address, each with its own origin; the port rides along. Every path
that carries a request asks it: the router, the relay worker for each next request on a
connection it was granted, and ``SandboxSite`` (twisted.web, WebSocket upgrades and local
sandboxes included), so no path can differ from another about who may do what. What the
sandbox gets and what the browser gets back is ``hygiene.py``'s.

Standard library only: the relay workers import this.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from cli_server.domain.roles import Role
from cli_server.proxy import hygiene
from cli_server.proxy.hosts import Place, place_for_host
from cli_server.proxy.hygiene import clean_query, cross_origin

# What a guest may send: reads, never an upgrade (a terminal types).
GUEST_METHODS = frozenset({b"GET", b"HEAD"})
AUTH_PATH = b"/_cli/auth"  # the one path of ours served before a session is read


@dataclass(frozen=True)
class Listener:
    """Where the request arrived: the scheme browsers use and the base domain."""

    scheme: bytes
    base_host: bytes
    cookie_name: bytes  # the subdomain's session cookie


class Asked(NamedTuple):
    """The facts of a request the rules read, as the browser sent them. (A tuple: one is
    made per request, in the workers too.)"""

    host: bytes
    method: bytes
    target: bytes
    upgrade: bool = False  # a WebSocket upgrade
    origin: bytes | None = None  # (``hygiene.only``: b"" when sent more than once)
    fetch_site: bytes | None = None
    cookies: tuple[bytes, ...] = ()  # the Cookie headers
    page_load: bool = False  # the browser shows the answer as a page (a navigation)

    @property
    def path(self) -> bytes:
        return self.target.partition(b"?")[0]


@dataclass(frozen=True)
class Session:
    """What a live session of this sandbox says: the caller's role and the sandbox's state."""

    role: Role
    status: str
    is_local: bool


class Why(Enum):
    """Which page of ours a request gets instead of the sandbox's answer."""

    BAD_TARGET = "bad-target"  # 400: not an origin-form target
    NOT_FOUND = "not-found"  # 404: not a sandbox's name (Page.detail says why)
    CROSS_ORIGIN = "cross-origin"  # 403: a page of another origin sent it
    SIGN_IN = "sign-in"  # 303 to the dashboard's open page: a navigation with no session
    SIGNED_OUT = "signed-out"  # 401: a script's request with no session
    READ_ONLY = "read-only"  # 403 page: a guest's page load or upgrade that would write
    READ_ONLY_API = "read-only-api"  # 403 in opencode's error shape, for its UI
    NOT_RUNNING = "not-running"  # 503: the status page (Page.status says which)


@dataclass(frozen=True)
class Forward:
    """To the sandbox, with this target (credential parameters gone)."""

    sandbox_id: str
    target: bytes
    local: bool  # through the laptop's tunnel
    port: int | None = None  # a preview's port, None for opencode


@dataclass(frozen=True)
class Page:
    why: Why
    sandbox_id: str | None = None
    status: str = ""  # the sandbox's, for NOT_RUNNING
    port: int | None = None  # a preview's port
    detail: str = ""  # for NOT_FOUND: what is wrong with the name


@dataclass(frozen=True)
class Ours:
    """One of our own paths on the subdomain, served by ``SandboxSite``."""

    sandbox_id: str
    path: bytes
    port: int | None = None  # a preview's port


Verdict = Forward | Page | Ours


def screen(asked: Asked, listener: Listener) -> Place | Page | Ours:
    """The part of ``decide`` that needs no session: the sandbox and port the Host names, if
    the request may go on to have its session read; else its page, or ``/_cli/auth`` (which
    makes the session). A preview's own origin is its Host's, as opencode's is."""
    if not asked.target.startswith(b"/"):
        return Page(Why.BAD_TARGET)
    place = place_for_host(asked.host, listener.base_host)
    if not isinstance(place, Place):
        return Page(Why.NOT_FOUND, detail=place or "")
    own = listener.scheme + b"://" + asked.host
    if cross_origin(asked.method, asked.upgrade, asked.origin, asked.fetch_site, own):
        return Page(Why.CROSS_ORIGIN, place.sandbox_id, port=place.port)
    if asked.path == AUTH_PATH:
        return Ours(place.sandbox_id, AUTH_PATH, place.port)
    return place


def session_token(asked: Asked, listener: Listener) -> str | None:
    """The session to read: the request's one cookie of ours. Two are what a tossed cookie
    looks like (another host set one for a parent domain): neither authenticates."""
    return hygiene.session_token(asked.cookies, listener.cookie_name)


def decide(asked: Asked, listener: Listener, session: Session | None) -> Verdict:
    """What happens to ``asked``, given the session its cookie names (None: no live one)."""
    screened = screen(asked, listener)
    if not isinstance(screened, Place):
        return screened
    sandbox_id, port = screened
    if session is None:
        if asked.method in GUEST_METHODS and not asked.upgrade and asked.page_load:
            return Page(Why.SIGN_IN, sandbox_id, port=port)
        return Page(Why.SIGNED_OUT, sandbox_id, port=port)
    if asked.path.startswith(b"/_cli/"):
        return Ours(sandbox_id, asked.path, port)
    if session.role < Role.DEVELOPER and (asked.method not in GUEST_METHODS or asked.upgrade):
        if asked.upgrade or asked.page_load:
            return Page(Why.READ_ONLY, sandbox_id, port=port)
        return Page(Why.READ_ONLY_API, sandbox_id, port=port)
    if session.status != "running":
        return Page(Why.NOT_RUNNING, sandbox_id, session.status, port=port)
    return Forward(sandbox_id, clean_query(asked.target), session.is_local, port)
