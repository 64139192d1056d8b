"""The subdomain proxy's conformance matrix, black box: raw requests from a "browser" over
every path a request can travel, to a FAKE hostile sandbox that records exactly what reaches
it; each cell asserts both what the sandbox got and what the browser got.

A path is the request's shape, which is what decides the engine that carries it (see
docs/architecture.md): no body on a keep-alive connection (``relay``: a relay worker on the
plain listener, a HEAD twisted.web), a ``Content-Length`` body (a relay worker), a chunked
body (twisted.web), a WebSocket upgrade (``ws``: a relay worker, or twisted.web's splice on
TLS); each on the plain listener and on a TLS listener (where twisted.web carries everything),
to a cloud sandbox, to a laptop's (a real cli-agent, over the tunnel: twisted.web) and to a
preview of a port in the cloud sandbox (``oc-{id}-p{port}``: its own origin and session, the
same engines, and never opencode's credential). The whole module runs under a server
configured for http and one for https. The dimensions are
varied one at a time over the others' safe defaults, plus the pairs that matter; the ids
read as the cell (``https-relay-plain-cloud/guest/POST``).
"""

from __future__ import annotations

import base64
import datetime
import os
import pathlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.ssl import Certificate

from cli_server.db.embedded import EmbeddedPostgres
from cli_server.db.pool import Database
from cli_server.sandboxes.backend import Endpoint
from cli_server.sandboxes.opencode import basic_auth
from cli_server.testing import FakeBackend

from .conformance_client import Answer, Browser, OverTls, TrustOurCertificate, connect
from .conformance_upstream import ANSWER, KEPT_COOKIE, SANDBOX_CSP, Hostile, Seen, serve_hostile
from .conftest import TEMPLATE, Running, _reactor, server_config, start_server, stop_server
from .helpers import Api, remove_dir, scratch_dir, wait_until
from .test_sandboxes_api import team, wait_status
from .test_tunnel import Laptop

BASE = "localhost:8080"  # the configured base domain, on both listeners
PREVIEW_PORT = 5173  # the port previewed in a sandbox (the FAKE backend: the hostile upstream)
SILENT_PORT = 5999  # a port nothing listens on in any sandbox
# Preview keys: (the sandbox's key, the previewed port)
PREVIEWS = {
    "preview": ("running", PREVIEW_PORT),
    "preview-silent": ("running", SILENT_PORT),
    "preview-other": ("other", PREVIEW_PORT),
    **{f"preview-{s}": (s, PREVIEW_PORT) for s in ("paused", "creating", "failed")},
}


@attrs.frozen
class Path:
    """One way a request travels: its shape (``carrier``) and the listener it arrives on."""

    carrier: str  # relay | length | chunked | ws
    listener: str  # plain | tls
    sandbox: str = "cloud"  # cloud | local | preview (of a port in the cloud one)

    @property
    def name(self) -> str:
        return f"{self.carrier}-{self.listener}-{self.sandbox}"

    @property
    def key(self) -> str:
        """The sandbox it reaches: the running cloud one, the laptop's, or a port's preview in
        the cloud one."""
        return {"local": "local", "preview": "preview"}.get(self.sandbox, "running")

    @property
    def upgrade(self) -> bool:
        return self.carrier == "ws"

    @property
    def default_method(self) -> bytes:
        return b"POST" if self.carrier in ("length", "chunked") else b"GET"


PATHS = [
    Path(c, li, sb)
    for sb in ("cloud", "local")
    for li in ("plain", "tls")
    for c in ("relay", "length", "chunked", "ws")
]
CLOUD_PATHS = [p for p in PATHS if p.sandbox == "cloud"]
HTTP_PATHS = [p for p in PATHS if not p.upgrade]
# The preview's paths: the same engines as the cloud sandbox's (a relay worker on the plain
# listener, twisted.web otherwise), their cells where the preview differs from opencode's.
PREVIEW_PATHS = [
    Path(c, li, "preview") for li in ("plain", "tls") for c in ("relay", "length", "chunked", "ws")
]
BODY = b'{"title": "\xc3\xa9t\xc3\xa9", "n": 1}'
METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS"]


@attrs.define(eq=False)
class StoppingBackend(FakeBackend):
    """FAKE: every sandbox runs at the hostile upstream, and stopping one (a pause) ends its
    connections there, as a stopped opencode's end."""

    hostile: Hostile | None = None
    nobody: int = 0  # a port nothing listens on: where SILENT_PORT's previews are

    def stop(self, sandbox_id: str) -> Deferred[None]:
        if self.hostile is not None:
            self.hostile.stop(f"oc-{sandbox_id}.{BASE}".encode())
            self.hostile.stop(f"oc-{sandbox_id}-p{PREVIEW_PORT}.{BASE}".encode())
        return super().stop(sandbox_id)

    def preview_endpoint(self, sandbox_id: str, port: int) -> Deferred[Endpoint | None]:
        """A running sandbox's ports are the hostile upstream, but SILENT_PORT."""
        running = self.running.get(sandbox_id)
        if running is None:
            return succeed(None)
        return succeed(Endpoint("127.0.0.1", self.nobody if port == SILENT_PORT else running.port))


@attrs.define
class World:
    app: Running
    hostile: Hostile
    backend: FakeBackend
    people: dict[str, Api]
    workspace: str
    sandboxes: dict[str, str]  # by status (cloud), local, offline, other, elsewhere, pause-*
    cookies: dict[tuple[str, str], str]  # (who, sandbox key) -> cli_sandbox value
    ports: dict[str, int]  # plain, tls
    scheme: bytes  # the configured one: https behind a TLS proxy, or TLS here; or plain http
    passwords: dict[str, str] = attrs.field(factory=dict)  # opencode's, by sandbox

    @property
    def cookie_name(self) -> bytes:
        return b"__Host-cli_sandbox" if self.scheme == b"https" else b"cli_sandbox"

    @property
    def main_origin(self) -> bytes:
        return self.scheme + b"://" + BASE.encode()

    def session_cookie(self, token: str) -> bytes:
        """Our session next to a cookie of the sandbox's own and a main-site one that must
        go."""
        ours = self.cookie_name + b"=" + token.encode()
        return ours + b"; theirs=ok; cli_session=main-site-session; __Host-cli_session=main"

    def host(self, key: str = "running") -> bytes:
        if key in PREVIEWS:
            sandbox, port = PREVIEWS[key]
            return f"oc-{self.sandboxes[sandbox]}-p{port}.{BASE}".encode()
        return f"oc-{self.sandboxes[key]}.{BASE}".encode()

    def sandbox_id(self, key: str) -> str:
        return self.sandboxes[PREVIEWS[key][0] if key in PREVIEWS else key]

    def own_origin(self, key: str = "running") -> bytes:
        return self.scheme + b"://" + self.host(key)

    async def password(self, sandbox_id: str) -> str:
        if sandbox_id not in self.passwords:
            (row,) = await self.app.db.query(
                "SELECT opencode_password FROM sandboxes WHERE id = %s", (sandbox_id,)
            )
            self.passwords[sandbox_id] = str(row["opencode_password"])
        return self.passwords[sandbox_id]

    async def open(self, who: Api, sandbox_id: str, port: int | None = None) -> str:
        """A subdomain session for ``who`` through the ticket flow (on the preview of
        ``port``, if given): the cli_sandbox value."""
        body = None if port is None else {"port": port}
        made = await who.call("POST", f"/api/sandboxes/{sandbox_id}/open", body)
        assert made.code == 200, made
        host = f"oc-{sandbox_id}.{BASE}" if port is None else f"oc-{sandbox_id}-p{port}.{BASE}"
        path = made.body["url"].split(host, 1)[1]
        reply = await self.app.client().call("GET", path, headers={"Host": host})
        assert reply.code == 303, reply
        return str(reply.headers.getRawHeaders("set-cookie")[0].split(";")[0].split("=", 1)[1])

    async def browser(self, path: Path) -> Browser:
        return await connect(_reactor(), self.ports[path.listener], path.listener == "tls")


def _self_signed(root: Any) -> tuple[str, str]:
    """A P-256 certificate for localhost, valid a day (EC: cheaper handshakes than RSA)."""
    key_path, cert_path = root / "key.pem", root / "cert.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


@pytest_twisted.async_yield_fixture(scope="module", params=["http", "https"])
async def world(request: Any, postgres: EmbeddedPostgres) -> AsyncIterator[World]:
    """One server with a plain and a TLS listener, on a database of its own, configured for
    ``http`` or for ``https`` (its plain listener then stands behind a TLS proxy)."""
    scheme: str = request.param
    reactor = _reactor()
    admin = Database(reactor, postgres.dsn)
    name = "t_" + uuid.uuid4().hex[:16]
    await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    db_url = postgres.dsn.replace("dbname=cli_server", f"dbname={name}")
    root = scratch_dir("cli-test-conformance-")
    laptops: list[Laptop] = []
    hostile, hostile_port = serve_hostile(reactor)
    with socket.socket() as unused:  # (bound, never listening: connections are refused)
        unused.bind(("127.0.0.1", 0))
        nobody = unused.getsockname()[1]
    backend = StoppingBackend(serve_at=hostile_port.getHost().port, hostile=hostile, nobody=nobody)
    config = attrs.evolve(server_config(db_url), base_scheme=scheme)
    app = await start_server(db_url, backend=backend, config=config)
    key, cert = _self_signed(root)
    tls = await serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    ).listen(app.server.router)
    # (an https server's Secure cookies come back only over TLS: its API is used there)
    api = app
    if scheme == "https":
        trust = TrustOurCertificate(Certificate.loadPEM(pathlib.Path(cert).read_bytes()))
        api = OverTls(app, tls.getHost().port, trust)
    try:
        people, wid = await team(api)
        owner = people["owner"]
        sandboxes: dict[str, str] = {}

        async def make(key: str, creator: Api, workspace: str, status: str) -> None:
            made = await creator.call(
                "POST", f"/api/workspaces/{workspace}/sandboxes", {"name": key}
            )
            assert made.code == 201, made
            sandboxes[key] = made.body["id"]
            await wait_status(creator, made.body["id"], status)

        pausing = [f"pause-{s}" for s in STREAMS if not s.endswith("local")]
        for key in ("running", "other", "paused", *pausing):
            await make(key, owner, wid, "running")
        await owner.call("POST", f"/api/sandboxes/{sandboxes['paused']}/pause")
        await wait_status(owner, sandboxes["paused"], "paused")
        theirs = (await people["outsider"].call("POST", "/api/workspaces", {"name": "x"})).body
        await make("elsewhere", people["outsider"], theirs["id"], "running")
        backend.fail_next = "the FAKE backend fails this start"
        await make("failed", owner, wid, "failed")
        w = World(api, hostile, backend, people, wid, sandboxes, {}, {}, scheme.encode())
        for who in ("owner", "maintainer", "developer", "guest"):
            w.cookies[who, "running"] = await w.open(people[who], sandboxes["running"])
        for key in ("paused", "failed"):
            w.cookies["developer", key] = await w.open(people["developer"], sandboxes[key])
        for who in ("owner", "maintainer", "developer", "guest"):  # previews: their own sessions
            w.cookies[who, "preview"] = await w.open(
                people[who], sandboxes["running"], PREVIEW_PORT
            )
        for key in ("preview-silent", "preview-other", "preview-paused", "preview-failed"):
            sandbox, port = PREVIEWS[key]
            w.cookies["developer", key] = await w.open(
                people["developer"], sandboxes[sandbox], port
            )
        w.cookies["outsider", "elsewhere"] = await w.open(
            people["outsider"], sandboxes["elsewhere"]
        )
        # Laptops: real cli-agent processes whose "opencode" is the hostile upstream too; the
        # second one leaves, so its sandbox is offline.
        hostile_url = f"http://127.0.0.1:{hostile_port.getHost().port}"
        for key in ("local", "offline"):
            laptops.append(Laptop(root / key, app.base, hostile_url))
            sandboxes[key] = await _join(owner, wid, laptops[-1], set(sandboxes.values()))
        for who in ("owner", "maintainer", "developer", "guest"):
            w.cookies[who, "local"] = await w.open(people[who], sandboxes["local"])
        w.cookies["developer", "offline"] = await w.open(people["developer"], sandboxes["offline"])
        laptops[-1].kill()
        await wait_status(owner, sandboxes["offline"], "offline")
        backend.hold()  # (its start waits until the end of the module)
        made = await owner.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "creating"})
        sandboxes["creating"] = made.body["id"]
        w.cookies["developer", "creating"] = await w.open(people["developer"], made.body["id"])
        w.cookies["developer", "preview-creating"] = await w.open(
            people["developer"], made.body["id"], PREVIEW_PORT
        )
        w.ports = {"plain": app.port.getHost().port, "tls": tls.getHost().port}
        yield w
    finally:
        for laptop in laptops:
            laptop.kill()
        backend.release()
        await tls.stopListening()
        await stop_server(app)
        await hostile_port.stopListening()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
        remove_dir(root)


async def _join(owner: Api, workspace: str, laptop: Laptop, known: set[str]) -> str:
    """Registers ``laptop`` with a new code; the id of the local sandbox it brings."""
    laptop.root.mkdir()
    code = await owner.call("POST", f"/api/workspaces/{workspace}/agent-code")
    assert code.code == 201, code
    laptop.register(code.body["code"], "--name", laptop.root.name)  # (names are unique)
    found: list[str] = []

    async def joined() -> bool:
        listed = await owner.call("GET", f"/api/workspaces/{workspace}/sandboxes")
        found[:] = [
            s["id"]
            for s in listed.body
            if s["is_local"] and s["status"] == "running" and s["id"] not in known
        ]
        return bool(found)

    await wait_until(_reactor(), joined, timeout=30)
    return found[0]


# Building requests


def ws_frame(payload: bytes) -> bytes:
    """One masked client text frame (payload < 126 bytes)."""
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


SPOOFED = [
    (b"X-Forwarded-For", b"6.6.6.6"),
    (b"X-Forwarded-Host", b"evil.example"),
    (b"X-Forwarded-Proto", b"https"),
    (b"Forwarded", b"for=6.6.6.6;host=evil.example"),
    (b"X-Real-IP", b"6.6.6.6"),
    (b"Authorization", b"Bearer browser-credential"),
    (b"Proxy-Authorization", b"Basic cHJveHk6c2VjcmV0"),
]


def build(
    path: Path,
    host: bytes,
    method: bytes,
    target: bytes,
    cookie: bytes | None,
    headers: list[tuple[bytes, bytes]],
) -> tuple[bytes, bytes]:
    """The request's bytes and the body the sandbox should get."""
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: " + host]
    lines += [b"User-Agent: conformance", b"Accept: */*"]
    if cookie is not None:
        lines.append(b"Cookie: " + cookie)
    lines += [n + b": " + v for n, v in SPOOFED + headers]
    body = b""
    if path.carrier == "ws":
        key = base64.b64encode(os.urandom(16))
        lines += [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13"]
        lines.append(b"Sec-WebSocket-Key: " + key)
        return b"\r\n".join(lines) + b"\r\n\r\n", b""
    if path.carrier == "length":
        body = BODY
        lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body, body
    if path.carrier == "chunked":
        body = BODY
        lines += [b"Content-Type: application/json", b"Transfer-Encoding: chunked"]
        chunks = b"5\r\n" + body[:5] + b"\r\n%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n"
        return b"\r\n".join(lines) + b"\r\n\r\n" + chunks, body
    return b"\r\n".join(lines) + b"\r\n\r\n", body


# Running a cell


@attrs.frozen
class Expect:
    """What the browser should get: ``forward`` (the sandbox's answer), or a page of ours
    (``page``: HTML; ``json``: opencode's error shape) with ``status``, nothing forwarded."""

    kind: str
    status: int = 200
    target: bytes = b""  # the request target the sandbox should get, if forwarded


FORWARD = "forward"


async def run_cell(
    w: World,
    path: Path,
    *,
    method: bytes | None = None,
    target: bytes = b"/cell?x=1",
    cookie: bytes | None,
    headers: list[tuple[bytes, bytes]] | None = None,
    expect: Expect,
    sandbox: str | None = None,
    before: bytes | None = None,
) -> None:
    """One request on a new connection (after ``before`` and its answer, if given), then
    the checks of both sides."""
    method = method or path.default_method
    sandbox = sandbox or path.key
    host = w.host(sandbox)
    if headers is None:
        headers = [(b"Origin", w.own_origin(sandbox))]
    request, body = build(path, host, method, target, cookie, headers)
    w.hostile.reset()
    browser = await w.browser(path)
    try:
        if before is not None:  # (the same connection carried a sandbox request already)
            browser.send(before)
            first = await browser.answer()
            assert first.status == 200 and len(w.hostile.seen) == 1, first
            w.hostile.reset()
        browser.send(request)
        answer = await browser.answer(head_request=method == b"HEAD")
        if expect.kind == FORWARD:
            await _forwarded(w, path, browser, answer, method, expect, host, body, sandbox)
            if path.sandbox == "preview":
                await _carried_by(w, _engine(path, method))
        else:
            _refused(w, answer, expect)
    finally:
        browser.close()


async def _forwarded(
    w: World,
    path: Path,
    browser: Browser,
    answer: Answer,
    method: bytes,
    expect: Expect,
    host: bytes,
    body: bytes,
    sandbox: str,
) -> None:
    # What reached the sandbox: this one request, cleaned.
    assert len(w.hostile.seen) == 1, w.hostile.seen
    seen = w.hostile.seen[0]
    assert seen.line == b"%s %s HTTP/1.1" % (method, expect.target), seen.line
    assert seen.values(b"host") == [host]
    assert seen.values(b"cookie") == [b"theirs=ok"], seen.block
    password = await w.password(w.sandbox_id(sandbox))
    if sandbox in PREVIEWS:  # a preview never gets a credential: opencode's is for opencode
        assert not seen.values(b"authorization"), seen.block
        assert basic_auth(password) not in seen.block and password.encode() not in seen.block
    else:
        assert seen.values(b"authorization") == [basic_auth(password)], seen.block
    assert seen.values(b"x-forwarded-for") == [b"127.0.0.1"]
    assert seen.values(b"x-forwarded-proto") == [w.scheme]
    assert seen.values(b"x-forwarded-host") == [host]
    for name in (b"forwarded", b"x-real-ip", b"proxy-authorization"):
        assert not seen.values(name), (name, seen.block)
    assert (
        b"main-site-session" not in seen.block
        and b"=main" not in seen.block
        and b"browser-credential" not in seen.block
    )
    assert b"6.6.6.6" not in seen.block and b"evil.example" not in seen.block
    assert seen.body == body
    # What reached the browser: the sandbox's answer, with nothing that acts beyond it.
    _clean_answer(answer)
    assert answer.values(b"x-sandbox") == [b"answered"]
    if path.upgrade:
        assert answer.status == 101, answer
        assert [v.lower() for v in answer.values(b"upgrade")] == [b"websocket"]
        assert seen.values(b"sec-websocket-key")
        browser.send(ws_frame(b"hello"))  # the splice carries bytes both ways
        sent = len(ws_frame(b"hello"))
        await wait_until(_reactor(), lambda: len(seen.upgraded) == sent, timeout=5)
        await wait_until(_reactor(), lambda: len(browser.received) == sent, timeout=5)
        assert browser.received == seen.upgraded
        return
    assert answer.status == 200, answer
    if method == b"HEAD":
        assert answer.body == b""
    else:
        assert answer.body == ANSWER + b" " + seen.line


def _engine(path: Path, method: bytes) -> str:
    """Which engine carries a forwarded request (docs/architecture.md): a relay worker on the
    plain listener, but a HEAD, a chunked body or a body on a method whose body means nothing;
    twisted.web on TLS and for a laptop's sandbox."""
    plain = path.listener == "plain" and path.sandbox != "local" and path.carrier != "chunked"
    odd = method == b"HEAD" or (path.carrier == "length" and method in (b"GET", b"OPTIONS"))
    return "worker" if plain and not odd else "web"


async def _carried_by(w: World, engine: str) -> None:
    """The cell's connection, still open, is a relay worker's (or none is: twisted.web's)."""
    workers = w.app.server.relay_workers
    wanted = 1 if engine == "worker" else 0  # (earlier cells' connections are closed by now)
    try:
        await wait_until(_reactor(), lambda: workers.carried_count == wanted, timeout=5)
    except TimeoutError:
        raise AssertionError((engine, workers.carried_count)) from None


def _clean_answer(answer: Answer) -> None:
    assert answer.values(b"set-cookie") == [KEPT_COOKIE], answer.headers
    for name, _ in answer.headers:
        assert not name.startswith(b"access-control-"), answer.headers
        assert name not in (b"clear-site-data", b"alt-svc"), answer.headers
    assert answer.values(b"cross-origin-resource-policy") == [b"same-origin"], answer.headers
    # Browsers apply every policy given: ours is added, the sandbox's own is kept.
    policies = sorted(answer.values(b"content-security-policy"))
    assert policies == [b"frame-ancestors 'self'", SANDBOX_CSP], answer.headers


def _refused(w: World, answer: Answer, expect: Expect) -> None:
    assert w.hostile.seen == [], w.hostile.seen  # nothing at all reached the sandbox
    assert answer.status == expect.status, answer
    assert not answer.values(b"x-sandbox") and ANSWER not in answer.body
    for name, value in answer.headers:
        assert not name.startswith(b"access-control-")
        assert name not in (b"clear-site-data", b"alt-svc")
        if name == b"set-cookie":  # only ours, expiring doubled session cookies
            assert value.startswith(w.cookie_name + b"=; ") and b"Max-Age=0" in value, value
    content_type = b"".join(answer.values(b"content-type"))
    if expect.kind == "redirect":  # to the dashboard's page that opens the sandbox
        assert answer.values(b"location") == [expect.target], answer
        assert answer.values(b"referrer-policy") == [b"no-referrer"]
    elif expect.kind == "page":
        assert content_type.startswith(b"text/html"), answer
        assert answer.values(b"x-frame-options") == [b"DENY"]
    else:
        assert content_type == b"application/json", answer
        assert b'"Forbidden"' in answer.body


# The matrix


def cell_id(*parts: Any) -> str:
    return "/".join(p.name if isinstance(p, Path) else str(p) for p in parts)


ROLES = ["owner", "maintainer", "developer", "guest", "outsider", "signed-out", "two-cookies"]


def _role_cookie(w: World, role: str, key: str) -> bytes | None:
    if role == "signed-out":
        return b"theirs=ok"
    if role == "two-cookies":
        return b"%s=%s; %s=%s" % (
            w.cookie_name,
            w.cookies["developer", key].encode(),
            w.cookie_name,
            w.cookies["guest", key].encode(),
        )
    if role == "outsider":  # a session of theirs, for a sandbox of their own workspace
        return w.session_cookie(w.cookies["outsider", "elsewhere"])
    return w.session_cookie(w.cookies[role, key])


def _guest_expect(path: Path, method: bytes, target: bytes) -> Expect:
    if path.upgrade:
        return Expect("page", 403)
    if method in (b"GET", b"HEAD"):
        return Expect(FORWARD, target=target)
    return Expect("json", 403)


ROLE_CELLS = [(p, r) for p in PATHS + PREVIEW_PATHS for r in ROLES]


@pytest.mark.parametrize(("path", "role"), ROLE_CELLS, ids=[cell_id(p, r) for p, r in ROLE_CELLS])
@pytest_twisted.ensureDeferred
async def test_role(world: World, path: Path, role: str) -> None:
    """Members' requests reach the sandbox; a guest's only if they only read; a session for
    another sandbox, none, or two of ours: the sign-in page, nothing forwarded."""
    target = b"/cell?x=1"
    if role in ("owner", "maintainer", "developer"):
        expect = Expect(FORWARD, target=target)
    elif role == "guest":
        expect = _guest_expect(path, path.default_method, target)
    else:
        expect = Expect("page", 401)
    await run_cell(
        world, path, cookie=_role_cookie(world, role, path.key), target=target, expect=expect
    )


def _methods(path: Path) -> list[bytes]:
    return METHODS if path.carrier == "relay" else [m for m in METHODS if m != b"HEAD"]


# (a preview's: on the plain listener, where a relay worker carries what it may)
METHOD_CELLS = [
    (p, r, m)
    for p in HTTP_PATHS + [p for p in PREVIEW_PATHS if not p.upgrade and p.listener == "plain"]
    for r in ("developer", "guest")
    for m in _methods(p)
]


@pytest.mark.parametrize(
    ("path", "role", "method"),
    METHOD_CELLS,
    ids=[cell_id(p, r, m.decode()) for p, r, m in METHOD_CELLS],
)
@pytest_twisted.ensureDeferred
async def test_method(world: World, path: Path, role: str, method: bytes) -> None:
    """Every method reaches the sandbox for a developer; for a guest only GET and HEAD, the
    rest get opencode's error shape and reach nothing."""
    target = b"/m?x=1"
    if role == "developer":
        expect = Expect(FORWARD, target=target)
    else:
        expect = _guest_expect(path, method, target)
    cookie = world.session_cookie(world.cookies[role, path.key])
    await run_cell(world, path, method=method, cookie=cookie, target=target, expect=expect)


STATUSES = ["running", "paused", "creating", "failed"]
STATUS_CELLS = (
    [(p, s) for p in CLOUD_PATHS for s in STATUSES]
    + [(p, s) for p in PATHS if p.sandbox == "local" for s in ("local", "offline")]
    + [
        (p, "preview" if s == "running" else f"preview-{s}")
        for p in PREVIEW_PATHS
        if p.carrier in ("relay", "ws")
        for s in STATUSES
    ]
)


def _status_name(key: str) -> str:
    return "running" if key in ("local", "preview") else key.removeprefix("preview-")


@pytest.mark.parametrize(
    ("path", "status"),
    STATUS_CELLS,
    ids=[cell_id(p, _status_name(s)) for p, s in STATUS_CELLS],
)
@pytest_twisted.ensureDeferred
async def test_status(world: World, path: Path, status: str) -> None:
    """A sandbox that is not running shows our status page; nothing is forwarded, an
    upgrade included."""
    target = b"/s?x=1"
    running = _status_name(status) == "running"
    expect = Expect(FORWARD, target=target) if running else Expect("page", 503)
    cookie = world.session_cookie(world.cookies["developer", status])
    await run_cell(world, path, cookie=cookie, target=target, expect=expect, sandbox=status)


# (sent, as the sandbox must get it): credentials go in any spelling, the rest stays byte
# for byte, in order
QUERIES = {
    "named": (
        b"/q?a=1&auth_token=SECRET1&b=two%20words&ticket=SECRET2&token=SECRET3&c",
        b"/q?a=1&b=two%20words&c",
    ),
    "cased": (b"/q?AUTH_TOKEN=SECRET1&x=%2f&Ticket=SECRET2&ToKeN=SECRET3", b"/q?x=%2f"),
    "encoded": (
        b"/q?%61uth_token=SECRET1&x=1&tick%65t=SECRET2&%54OKEN=SECRET3&auth%5ftoken=SECRET4",
        b"/q?x=1",
    ),
    "only": (b"/q?token=SECRET1&ticket=SECRET2", b"/q"),
    "innocent": (
        b"/q?tokens=1&my_token=2&token_x=3&a=b=c&&x=%00",
        b"/q?tokens=1&my_token=2&token_x=3&a=b=c&&x=%00",
    ),
}


QUERY_CELLS = [(p, q) for p in PATHS + PREVIEW_PATHS for q in QUERIES]


@pytest.mark.parametrize(
    ("path", "query"), QUERY_CELLS, ids=[cell_id(p, q) for p, q in QUERY_CELLS]
)
@pytest_twisted.ensureDeferred
async def test_credential_parameters(world: World, path: Path, query: str) -> None:
    """Credential parameters never reach the sandbox, in any case or encoding; innocent
    parameters are kept byte for byte."""
    sent, forwarded = QUERIES[query]
    cookie = world.session_cookie(world.cookies["developer", path.key])
    await run_cell(
        world, path, cookie=cookie, target=sent, expect=Expect(FORWARD, target=forwarded)
    )
    assert b"SECRET" not in b"".join(s.line + s.block + s.body for s in world.hostile.seen)


ORIGINS = ["own", "other-sandbox", "main-site", "null", "null-same-origin", "none", "same-site"]


def _origin_headers(w: World, origin: str, key: str) -> list[tuple[bytes, bytes]]:
    return {
        "own": [(b"Origin", w.own_origin(key))],
        "other-sandbox": [(b"Origin", w.own_origin("other"))],
        "main-site": [(b"Origin", w.main_origin)],
        "null": [(b"Origin", b"null")],
        "null-same-origin": [(b"Origin", b"null"), (b"Sec-Fetch-Site", b"same-origin")],
        "none": [],
        "same-site": [(b"Sec-Fetch-Site", b"same-site")],  # no Origin
        # a preview's neighbours: the same sandbox's opencode, another port's preview
        "opencode": [(b"Origin", w.own_origin("running"))],
        "other-port": [(b"Origin", w.own_origin("preview-silent"))],
    }[origin]


def _origin_passes(origin: str, method: bytes, upgrade: bool) -> bool:
    """The rule, written out: a foreign Origin never passes; ``null`` only with same-origin
    fetch metadata; no Origin passes for a plain read, and otherwise unless fetch metadata
    says another site sent it (a client with neither is not a browser)."""
    if origin in ("own", "null-same-origin", "none"):
        return True
    if origin == "same-site":
        return method in (b"GET", b"HEAD", b"OPTIONS") and not upgrade
    return False


ORIGIN_CELLS = [
    (p, o, m)
    for p in PATHS
    for m in (METHODS if p.carrier == "relay" else [p.default_method])
    for o in ORIGINS
] + [(p, o, p.default_method) for p in PREVIEW_PATHS for o in [*ORIGINS, "opencode", "other-port"]]


@pytest.mark.parametrize(
    ("path", "origin", "method"),
    ORIGIN_CELLS,
    ids=[cell_id(p, o, m.decode()) for p, o, m in ORIGIN_CELLS],
)
@pytest_twisted.ensureDeferred
async def test_origin(world: World, path: Path, origin: str, method: bytes) -> None:
    """A page of another origin (another sandbox, the main site, an unplaceable ``null``)
    cannot act on or read from a sandbox: 403, nothing forwarded."""
    target = b"/o?x=1"
    if _origin_passes(origin, method, path.upgrade):
        expect = Expect(FORWARD, target=target)
    else:
        expect = Expect("page", 403)
    await run_cell(
        world,
        path,
        method=method,
        cookie=world.session_cookie(world.cookies["developer", path.key]),
        target=target,
        headers=_origin_headers(world, origin, path.key),
        expect=expect,
    )


# Revocation while a stream is open

# (listener, header that changes the engine, sandbox); None: a WebSocket
STREAMS = {
    "events-relay-plain-cloud": ("plain", b"", "cloud"),  # no body: a relay worker
    "events-web-tls-cloud": ("tls", b"", "cloud"),  # the same on TLS: twisted.web
    "events-web-plain-cloud": ("plain", b"TE: trailers\r\n", "cloud"),  # twisted.web's
    "ws-plain-cloud": ("plain", None, "cloud"),
    "ws-tls-cloud": ("tls", None, "cloud"),
    "events-plain-local": ("plain", b"", "local"),  # the tunnel
    "events-tls-local": ("tls", b"", "local"),
    "ws-plain-local": ("plain", None, "local"),
    "ws-tls-local": ("tls", None, "local"),
    "events-relay-plain-preview": ("plain", b"", "preview"),  # a port's preview: a worker
    "events-web-tls-preview": ("tls", b"", "preview"),
    "ws-plain-preview": ("plain", None, "preview"),  # (a dev server's hot reload)
}
TRIGGERS = ["member-removed", "role-changed", "password-changed", "sandbox-paused"]
# (a laptop's sandbox is not paused from here: it runs while its agent does)
REVOCATION_CELLS = [
    (s, t) for s in STREAMS for t in TRIGGERS if not (s.endswith("local") and "paused" in t)
]


@pytest.mark.parametrize(
    ("stream", "trigger"), REVOCATION_CELLS, ids=[cell_id(s, t) for s, t in REVOCATION_CELLS]
)
@pytest_twisted.ensureDeferred
async def test_revocation_mid_stream(world: World, stream: str, trigger: str) -> None:
    """An open event stream or WebSocket is cut promptly when its access ends, on both
    sides, and nothing more reaches the sandbox; the session no longer opens anything."""
    reactor = _reactor()
    w = world
    owner = w.people["owner"]
    member = w.app.client()
    username = "m" + uuid.uuid4().hex[:10]
    await member.register_and_login(username)
    uid = await owner.add_member(w.workspace, member, "developer")
    listener, extra, kind = STREAMS[stream]
    sandbox_id = w.sandboxes["local" if kind == "local" else "running"]
    if trigger == "sandbox-paused":  # (a sandbox of its own, as it stays paused)
        sandbox_id = w.sandboxes[f"pause-{stream}"]
    port = PREVIEW_PORT if kind == "preview" else None
    token = await w.open(member, sandbox_id, port)
    path = Path("ws" if extra is None else "relay", listener, kind)
    host = f"oc-{sandbox_id}{'' if port is None else f'-p{port}'}.{BASE}".encode()
    request, _ = build(
        path,
        host,
        b"GET",
        b"/events?x=1",
        w.session_cookie(token),
        [(b"Origin", w.scheme + b"://" + host)],
    )
    if extra:
        request = request[:-2] + extra + b"\r\n"
    w.hostile.reset()
    browser = await connect(reactor, w.ports[listener], listener == "tls")
    try:
        browser.send(request)
        if path.upgrade:
            answer = await browser.answer()
            assert answer.status == 101, answer
            _clean_answer(answer)
            browser.send(ws_frame(b"before"))
            await wait_until(reactor, lambda: len(browser.received) > 0, timeout=5)
        else:
            await wait_until(reactor, lambda: b"data: tick" in browser.received, timeout=5)
            answer = Answer(0, [], b"")
            assert browser.received.startswith(b"HTTP/1.1 200 ")
        (seen,) = w.hostile.seen
        connection = seen.connection
        assert connection in w.hostile.open
        carried = _carried(seen)

        began = time.monotonic()
        if trigger == "member-removed":
            done = await owner.call("DELETE", f"/api/workspaces/{w.workspace}/members/{uid}")
        elif trigger == "role-changed":
            done = await owner.call(
                "PUT", f"/api/workspaces/{w.workspace}/members/{uid}", {"role": "guest"}
            )
        elif trigger == "password-changed":
            done = await member.call(
                "PUT",
                "/api/auth/password",
                {"current_password": "password123", "new_password": "another-password-1"},
            )
        else:
            done = await owner.call("POST", f"/api/sandboxes/{sandbox_id}/pause")
        assert done.code in (200, 204), done
        await _within(reactor, browser.closed, 3.0, "the browser's connection was not cut")
        await wait_until(reactor, lambda: connection not in w.hostile.open, timeout=3)
        took = time.monotonic() - began
        print(f"\n{stream}/{trigger}: cut {took * 1000:.0f} ms after asking for the change")
        assert took < 3.0, took
        assert _carried(seen) == carried or not path.upgrade  # nothing after the cut
        assert len(w.hostile.seen) == 1

        # The same session opens nothing now, on a fresh connection.
        again = await connect(reactor, w.ports[listener], listener == "tls")
        try:
            again.send(request)
            after = await again.answer()
            assert after.status in (401, 403, 503), after
            assert len(w.hostile.seen) == 1, w.hostile.seen
        finally:
            again.close()
    finally:
        browser.close()


def _carried(seen: Seen) -> bytes:
    return seen.upgraded


async def _within(reactor: Any, d: Deferred[None], seconds: float, why: str) -> None:
    if d.called:
        return
    waited: Deferred[None] = Deferred()
    d.addBoth(lambda r: waited.callback(None) if not waited.called else None)
    waited.addTimeout(seconds, reactor)
    try:
        await waited
    except Exception as e:
        raise AssertionError(why) from e


# A second request on a kept-alive connection: whoever carries the connection by then (a
# relay worker, after a GET on the plain listener) decides it afresh, with the same rules.
# (role, method, carrier, origin, target, expected kind, status)
FOLLOW_UPS: dict[str, tuple[str, bytes, str, str, bytes, str, int]] = {
    "same-get": ("developer", b"GET", "relay", "own", b"/f?x=1", FORWARD, 200),
    "credentials": ("developer", b"GET", "relay", "own", b"/f?x=1&Token=SECRET1", FORWARD, 200),
    "head": ("developer", b"HEAD", "relay", "own", b"/f?x=1", FORWARD, 200),
    "post": ("developer", b"POST", "length", "own", b"/f?x=1", FORWARD, 200),
    "chunked": ("developer", b"PUT", "chunked", "own", b"/f?x=1", FORWARD, 200),
    "websocket": ("developer", b"GET", "ws", "own", b"/f?x=1", FORWARD, 101),
    "guest-get": ("guest", b"GET", "relay", "own", b"/f?x=1", FORWARD, 200),
    "guest-delete": ("guest", b"DELETE", "relay", "own", b"/f?x=1", "json", 403),
    "guest-websocket": ("guest", b"GET", "ws", "own", b"/f?x=1", "page", 403),
    "other-origin": ("developer", b"GET", "relay", "other-sandbox", b"/f?x=1", "page", 403),
    "null-origin-post": ("developer", b"POST", "length", "null", b"/f?x=1", "page", 403),
    "signed-out": ("signed-out", b"GET", "relay", "own", b"/f?x=1", "page", 401),
    "two-cookies": ("two-cookies", b"GET", "relay", "own", b"/f?x=1", "page", 401),
}
FOLLOW_UP_CELLS = [
    (Path("relay", li, sb), f)
    for sb in ("cloud", "local")
    for li in ("plain", "tls")
    for f in FOLLOW_UPS
]


@pytest.mark.parametrize(
    ("first", "follow_up"),
    FOLLOW_UP_CELLS,
    ids=[cell_id(p, "keep-alive", f) for p, f in FOLLOW_UP_CELLS],
)
@pytest_twisted.ensureDeferred
async def test_keep_alive_follow_up(world: World, first: Path, follow_up: str) -> None:
    """After a developer's GET, the next request on the same connection (another session,
    method, origin, an upgrade) gets what it would get on a connection of its own."""
    w = world
    role, method, carrier, origin, target, kind, status = FOLLOW_UPS[follow_up]
    host = w.host(first.key)
    before, _ = build(
        first,
        host,
        b"GET",
        b"/first",
        w.session_cookie(w.cookies["developer", first.key]),
        [(b"Origin", w.own_origin(first.key))],
    )
    expect = Expect(kind, status, target=target.replace(b"&Token=SECRET1", b""))
    await run_cell(
        w,
        Path(carrier, first.listener, first.sandbox),
        method=method,
        target=target,
        cookie=_role_cookie(w, role, first.key),
        headers=_origin_headers(w, origin, first.key),
        expect=expect,
        before=before,
    )


# A page load, not a script's request: the signed-out browser is sent to the dashboard's
# page that opens the sandbox; a guest's form gets the read-only page. (path, role, method)
NAVIGATION_CELLS = [
    (p, role, m)
    for p in HTTP_PATHS + [p for p in PREVIEW_PATHS if not p.upgrade]
    for role, methods in (("signed-out", [b"GET", b"HEAD"]), ("guest", [b"POST", b"PUT"]))
    for m in methods
    if p.carrier == "relay" or m not in (b"GET", b"HEAD")
]


@pytest.mark.parametrize(
    ("path", "role", "method"),
    NAVIGATION_CELLS,
    ids=[cell_id(p, "navigate", r, m.decode()) for p, r, m in NAVIGATION_CELLS],
)
@pytest_twisted.ensureDeferred
async def test_navigation(world: World, path: Path, role: str, method: bytes) -> None:
    """Pages the browser shows: a fixed redirect for the signed-out (never an open one), the
    read-only page for a guest's form; nothing forwarded."""
    w = world
    sandbox_id = w.sandbox_id(path.key)
    if role == "signed-out":
        dashboard = w.scheme + b"://" + BASE.encode() + b"/open/" + sandbox_id.encode()
        if path.sandbox == "preview":  # (back to the same port once signed in)
            dashboard += b"?port=%d" % PREVIEW_PORT
        expect = Expect("redirect", 303, target=dashboard)
    else:
        expect = Expect("page", 403)
    await run_cell(
        w,
        path,
        method=method,
        target=b"//evil.example/n?next=https://evil.example",
        cookie=_role_cookie(w, role, path.key),
        headers=[(b"Origin", w.own_origin(path.key)), (b"Sec-Fetch-Mode", b"navigate")],
        expect=expect,
    )


# A preview's keep-alive connection: after a developer's GET on the preview of PREVIEW_PORT,
# a next request for another origin (the same sandbox's opencode, another port, the same port
# of another sandbox) is decided afresh by the server, as on a connection of its own: the
# preview's session opens none of them, and opencode's own session gets opencode's answer
# with opencode's credential. (host key, cookie's key, method, carrier, expected kind, status)
PREVIEW_FOLLOW_UPS: dict[str, tuple[str, str, bytes, str, str, int]] = {
    "same-get": ("preview", "preview", b"GET", "relay", FORWARD, 200),
    "post": ("preview", "preview", b"POST", "length", FORWARD, 200),
    "websocket": ("preview", "preview", b"GET", "ws", FORWARD, 101),
    "opencode-host": ("running", "preview", b"GET", "relay", "page", 401),
    "opencode-host-upgrade": ("running", "preview", b"GET", "ws", "page", 401),
    "other-port-host": ("preview-silent", "preview", b"GET", "relay", "page", 401),
    "other-sandbox-host": ("preview-other", "preview", b"GET", "relay", "page", 401),
    "opencode-session": ("running", "running", b"GET", "relay", FORWARD, 200),
}
PREVIEW_FOLLOW_UP_CELLS = [(li, f) for li in ("plain", "tls") for f in PREVIEW_FOLLOW_UPS]


@pytest.mark.parametrize(
    ("listener", "follow_up"),
    PREVIEW_FOLLOW_UP_CELLS,
    ids=[cell_id(f"relay-{li}-preview", "keep-alive", f) for li, f in PREVIEW_FOLLOW_UP_CELLS],
)
@pytest_twisted.ensureDeferred
async def test_preview_keep_alive_follow_up(world: World, listener: str, follow_up: str) -> None:
    """A connection a preview's request opened (a relay worker's, on the plain listener)
    carries that preview only: each other origin's request on it is routed afresh, and never
    reaches the sandbox with the preview's session or opencode's credential."""
    w = world
    key, cookie_key, method, carrier, kind, status = PREVIEW_FOLLOW_UPS[follow_up]
    first = Path("relay", listener, "preview")
    before, _ = build(
        first,
        w.host("preview"),
        b"GET",
        b"/first",
        w.session_cookie(w.cookies["developer", "preview"]),
        [(b"Origin", w.own_origin("preview"))],
    )
    await run_cell(
        w,
        Path(carrier, listener, "cloud" if key == "running" else "preview"),
        method=method,
        target=b"/f?x=1",
        cookie=w.session_cookie(w.cookies["developer", cookie_key]),
        headers=[(b"Origin", w.own_origin(key))],
        expect=Expect(kind, status, target=b"/f?x=1"),
        sandbox=key,
        before=before,
    )


NOTHING_LISTENING_CELLS = [p for p in PREVIEW_PATHS if p.carrier in ("relay", "length", "ws")]


@pytest.mark.parametrize(
    "path",
    NOTHING_LISTENING_CELLS,
    ids=[cell_id(p, "nothing-listening") for p in NOTHING_LISTENING_CELLS],
)
@pytest_twisted.ensureDeferred
async def test_preview_of_a_port_nothing_listens_on(world: World, path: Path) -> None:
    """A port nothing listens on yet (the dev server not started): our status page, which
    refreshes itself, on every engine (a relay worker gives the refused request back to the
    server, which answers as twisted.web does)."""
    w = world
    request, _ = build(
        path,
        w.host("preview-silent"),
        path.default_method,
        b"/",
        w.session_cookie(w.cookies["developer", "preview-silent"]),
        [(b"Origin", w.own_origin("preview-silent"))],
    )
    w.hostile.reset()
    browser = await w.browser(path)
    try:
        browser.send(request)
        answer = await browser.answer()
    finally:
        browser.close()
    _refused(w, answer, Expect("page", 503))
    assert b"Nothing is listening on %d" % SILENT_PORT in answer.body, answer.body[:400]
    assert b"refresh" in answer.body.lower()
