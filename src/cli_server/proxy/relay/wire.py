"""The messages between the server and each relay worker (``SOCK_SEQPACKET``: one message
per send, descriptors alongside with ``SCM_RIGHTS``).

From the server:
- ``K`` keep-alive connection: a browser connection from its next request on, with a grant
  (``Grant``) saying which requests it may take and where the sandbox is.
- ``X``: cut these (their session was revoked).
- ``G``: a connection's grant now holds until then: longer (answering an ``R``), or already
  over (0: not renewed, or ended by the server).

From the worker:
- ``E``: a connection ended.
- ``B``: a connection comes back to the server (``Back`` says why), with the browser's
  socket and the bytes it sent that were not used.
- ``A``: requests relayed per sandbox since the last ``A``, for the idle monitor and metrics.
- ``R``: renew this connection's grant (asked half a second before it runs out, by a
  connection in use, so that its requests do not wait for the server).

Only the standard library: the workers import this.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

KEEP = struct.Struct("!cQd")  # b"K", connection id, until when its grant holds
BACK = struct.Struct("!cQB")  # b"B", connection id, why (Back)
RENEWED = struct.Struct("!cQd")  # b"G", connection id, until when its grant holds now (or 0)
ID = struct.Struct("!Q")
_LENGTH = struct.Struct("!I")


class Back(IntEnum):
    """Why a connection comes back to the server."""

    ASK = 0  # a request the grant does not cover: the server routes it as any other
    DROPPED = 1  # the sandbox dropped the request unanswered (or could not be reached):
    # the server tries it itself
    TIMED_OUT = 2  # the sandbox did not begin its answer in time: the server says so
    FAILED = 3  # the sandbox dropped a request that may not be sent twice: the server says so


def pack_fields(fields: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(f)) + f for f in fields)


def unpack_fields(data: bytes) -> list[bytes]:
    """The fields of ``pack_fields``; ValueError if ``data`` is not such a list."""
    fields, at = [], 0
    while at < len(data):
        if at + _LENGTH.size > len(data):
            raise ValueError("a field's length is cut short")
        (size,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        if at + size > len(data):
            raise ValueError("a field is cut short")
        fields.append(data[at : at + size])
        at += size
    return fields


class Grant(NamedTuple):
    """Which requests on a connection a worker may relay itself: those ``rules.decide``
    forwards for a session with this role, for this Host with these Cookie headers, exactly,
    with bodies up to ``max_body``; it sends them to this address with this credential."""

    host: bytes
    cookies: tuple[bytes, ...]
    authorization: bytes  # opencode's Basic credential, as a header value
    peer: bytes  # the browser's address, for X-Forwarded-For
    scheme: bytes  # for X-Forwarded-Proto
    sandbox_id: bytes  # whose activity its requests count as
    base_host: bytes  # the listener's base domain (``rules.Listener``)
    role: int  # the session's role (``roles.Role``)
    address: bytes  # the sandbox's opencode: its IP address
    port: int
    max_body: int


_NUMBERS = ("role", "port", "max_body")


def keep_message(conn_id: int, until: float, grant: Grant, data: bytes) -> bytes:
    """``K``: ``data`` is what the browser sent that was not used yet, its next request first;
    ``until`` is on CLOCK_MONOTONIC (``time.monotonic``), which both processes read."""
    fields: list[bytes] = []
    for value in grant:  # (the cookies, a tuple, go last)
        if isinstance(value, int):
            fields.append(b"%d" % value)
        elif isinstance(value, bytes):
            fields.append(value)
    return KEEP.pack(b"K", conn_id, until) + pack_fields([*fields, data, *grant.cookies])


def read_keep(msg: bytes) -> tuple[int, float, Grant, bytes]:
    """ValueError unless ``msg`` is a ``K`` message."""
    try:
        _, conn_id, until = KEEP.unpack_from(msg)
    except struct.error as e:
        raise ValueError(str(e)) from e
    fields = unpack_fields(msg[KEEP.size :])
    names = [name for name in Grant._fields if name != "cookies"]
    if len(fields) < len(names) + 1:
        raise ValueError("a grant without its fields")
    values: dict[str, object] = dict(zip(names, fields, strict=False))
    for name in _NUMBERS:
        values[name] = int(fields[names.index(name)])  # (ValueError if not a number)
    values["cookies"] = tuple(fields[len(names) + 1 :])
    return conn_id, until, Grant(**values), fields[len(names)]  # type: ignore[arg-type]


def activity_message(counts: dict[bytes, int]) -> bytes:
    return b"A" + pack_fields([f for sandbox, n in counts.items() for f in (sandbox, b"%d" % n)])


def read_activity(msg: bytes) -> dict[str, int]:
    fields = unpack_fields(msg[1:])
    return {fields[i].decode(): int(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}
