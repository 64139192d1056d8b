"""The internal channel between replicas: how a request relayed to the replica holding a local
sandbox's tunnel is signed, and checked there.

The replica that took the browser's request has already applied every rule of the proxy
(session, role, hygiene); the holder decides nothing again and trusts only this signature. It
is an HMAC-SHA256 over the method, the whole internal target, the sandbox, the port, the
browser's Host, a timestamp and a random nonce. A signature older or newer than ``WINDOW``
seconds is refused, and a nonce is remembered for that long, so a captured request cannot be
replayed later, nor sent again at once. Bodies are not signed: they stream, and whoever can
rewrite a body on the wire between replicas could as well read the opencode credential.

The key: ``INTERNAL_SECRET`` when the operator sets it, else a random one the first replica
stores in the database for the others (an HMAC key cannot be stored hashed; it is kept as the
opencode passwords are, in the database, never logged nor shown).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import deque
from collections.abc import Callable

from attrs import define, field, frozen

from cli_server.db.pool import Database, Transaction

PREFIX = b"/_cli-relay/"
WINDOW = 30.0  # seconds a signature is good for, either side of the holder's clock
HOST = b"x-cli-relay-host"  # the Host the browser sent (a dev server may check it)
TIME = b"x-cli-relay-time"
NONCE = b"x-cli-relay-nonce"
SIGNATURE = b"x-cli-relay-signature"
HEADERS = (HOST, TIME, NONCE, SIGNATURE)
_OPENCODE = b"opencode"  # the port segment that names the laptop's opencode, not a port
_MAX_NONCES = 200_000  # beyond this many in one window, refuse rather than forget one
BUSY = "too many requests in one window"  # the one refusal that is not the requester's fault
_SANDBOX_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@frozen
class Target:
    """What an internal request asks for: a sandbox's opencode (``port`` None) or a port of
    its laptop, and the browser's request target there."""

    sandbox_id: str
    port: int | None
    uri: bytes  # the browser's path and query, already cleaned by the relaying replica


def internal_path(target: Target) -> bytes:
    port = _OPENCODE if target.port is None else str(target.port).encode()
    return PREFIX + target.sandbox_id.encode() + b"/" + port + target.uri


def parse_path(path: bytes) -> Target | None:
    """The target of an internal path, or None for anything that is not exactly one."""
    if not path.startswith(PREFIX):
        return None
    sandbox, _, rest = path[len(PREFIX) :].partition(b"/")
    port_text, slash, uri = rest.partition(b"/")
    if not _SANDBOX_ID.fullmatch(sandbox) or not slash:
        return None
    port: int | None = None
    if port_text != _OPENCODE:
        if not port_text.isdigit() or len(port_text) > 5 or not 1024 <= int(port_text) <= 65535:
            return None
        port = int(port_text)
    return Target(sandbox.decode(), port, b"/" + uri)


def _mac(
    key: bytes, method: bytes, path: bytes, target: Target, host: bytes, ts: bytes, nonce: bytes
) -> bytes:
    port = b"-" if target.port is None else str(target.port).encode()
    message = b"\n".join(
        [b"cli-relay-v1", method, path, target.sandbox_id.encode(), port, host, ts, nonce]
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest().encode()


def sign(
    key: bytes, method: bytes, target: Target, host: bytes, now: float, nonce: bytes | None = None
) -> list[tuple[bytes, bytes]]:
    """The headers that authenticate one internal request (its path: ``internal_path``)."""
    ts = str(int(now)).encode()
    nonce = nonce if nonce is not None else secrets.token_hex(16).encode()
    mac = _mac(key, method, internal_path(target), target, host, ts, nonce)
    return [(HOST, host), (TIME, ts), (NONCE, nonce), (SIGNATURE, mac)]


@define(eq=False)
class Verifier:
    """The holder's check of internal requests. ``seconds`` is the clock (IReactorTime's)."""

    _key: bytes
    _seconds: Callable[[], float]
    _window: float = WINDOW
    _limit: int = _MAX_NONCES
    # The nonces remembered, and the same in the order they expire (they are added with a
    # constant lifetime, so that is the order they came in): forgetting costs only the
    # expired ones, never a pass over all of them. (``seen``: an empty set to keep them in;
    # a test gives one that counts what is forgotten.)
    _seen: set[bytes] = field(factory=set)
    _expiries: deque[tuple[float, bytes]] = field(factory=deque, init=False)

    def check(
        self, method: bytes, path: bytes, header: Callable[[bytes], bytes | None]
    ) -> Target | str:
        """The target if ``path`` with these headers is a good, fresh, first-seen signature;
        else why not (for the log; the requester only ever gets 403)."""
        target = parse_path(path)
        if target is None:
            return "not an internal path"
        host, ts, nonce, mac = (header(name) for name in HEADERS)
        if host is None or ts is None or nonce is None or mac is None:
            return "unsigned"
        if not ts.isdigit() or not 16 <= len(nonce) <= 64:
            return "malformed"
        expected = _mac(self._key, method, path, target, host, ts, nonce)
        if not hmac.compare_digest(expected, mac):
            return "bad signature"
        now = self._seconds()
        if abs(now - int(ts)) > self._window:
            return "expired"
        self._forget(now)
        if nonce in self._seen:
            return "replayed"
        if len(self._seen) >= self._limit:
            return BUSY
        self._seen.add(nonce)
        self._expiries.append((now + 2 * self._window, nonce))
        return target

    def remembered(self) -> int:
        return len(self._seen)

    def _forget(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] < now:
            self._seen.discard(expiries.popleft()[1])


async def shared_key(db: Database, configured: str | None) -> bytes:
    """``INTERNAL_SECRET`` if set, else the key the first replica stored (made here if none)."""
    if configured:
        return configured.encode()

    async def work(tx: Transaction) -> str:
        await tx.execute(
            "INSERT INTO instance_secrets (name, value) VALUES ('internal_channel', %s)"
            " ON CONFLICT (name) DO NOTHING",
            (secrets.token_urlsafe(32),),
        )
        row = await tx.one("SELECT value FROM instance_secrets WHERE name = 'internal_channel'")
        assert row is not None
        return str(row["value"])

    return (await db.transaction(work)).encode()
