"""The messages between the server and each relay worker (``SOCK_SEQPACKET``: one message
per send, descriptors alongside with ``SCM_RIGHTS``).

From the server:
- ``K`` keep-alive connection: a browser connection from its next request on, with a grant
  (``Grant``) saying which requests it may take and where the sandbox is.
- ``X``: cut these (their session was revoked).
- ``G``: a connection's grant now holds until then: longer (answering an ``R``), or already
  over (0: not renewed, or ended by the server).
- ``D`` drain (the server is stopping; numbered): idle connections close now, the others
  after their answer; asked again until the worker says it is done.

From the worker:
- ``E``: a connection ended.
- ``B``: a connection comes back to the server (``Back`` says why), with the browser's
  socket and the bytes it sent that were not used.
- ``A``: requests relayed per sandbox since the last ``A``, for the idle monitor and metrics
  (JSON: the server never unmarshals what a worker wrote).
- ``d``: answering a ``D``: how many connections still carry a request (event streams and
  WebSockets are not counted: they are closed last, when the worker stops).
- ``R``: renew this connection's grant (asked half a second before it runs out, by a
  connection in use, so that its requests do not wait for the server).

Only the standard library: the workers import this.
"""

from __future__ import annotations

import json
import marshal
import struct
from enum import IntEnum
from typing import NamedTuple

BACK = struct.Struct("!cQB")  # b"B", connection id, why (Back)
RENEWED = struct.Struct("!cQd")  # b"G", connection id, until when its grant holds now (or 0)
ID = struct.Struct("!Q")
DRAIN = struct.Struct("!cQ")  # b"D", its number
DRAINING = struct.Struct("!cQQ")  # b"d", the number of the D it answers, requests in flight


class Back(IntEnum):
    """Why a connection comes back to the server."""

    ASK = 0  # a request the grant does not cover: the server routes it as any other
    DROPPED = 1  # the sandbox dropped the request unanswered (or could not be reached):
    # the server tries it itself
    TIMED_OUT = 2  # the sandbox did not begin its answer in time: the server says so
    FAILED = 3  # the sandbox dropped a request that may not be sent twice: the server says so


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
    address: bytes  # its IP address: the sandbox's opencode, or the previewed port's
    port: int
    max_body: int
    # The port a preview's Host names (``oc-{id}-p{port}``), or 0 for opencode's: a
    # preview's requests go with no credential (``authorization`` empty) and only to it.
    preview: int = 0


_TYPES = (bytes, tuple, bytes, bytes, bytes, bytes, bytes, int, bytes, int, int, int)  # Grant's


def keep_message(conn_id: int, until: float, grant: Grant, data: bytes) -> bytes:
    """``K``: ``data`` is what the browser sent that was not used yet, its next request first;
    ``until`` is on CLOCK_MONOTONIC (``time.monotonic``), which both processes read. (In
    ``marshal``'s format: both ends are this Python, and the server is the only writer.)"""
    return b"K" + marshal.dumps((conn_id, until, tuple(grant), data))


def read_keep(msg: bytes) -> tuple[int, float, Grant, bytes]:
    """ValueError unless ``msg`` is a ``K`` message."""
    try:
        conn_id, until, fields, data = marshal.loads(msg[1:])
        grant = Grant(*fields)
    except (EOFError, TypeError, ValueError) as e:
        raise ValueError(str(e)) from e
    fields = (conn_id, until, data, *grant, *grant.cookies)
    if not all(
        map(isinstance, fields, (int, float, bytes, *_TYPES, *(bytes,) * len(grant.cookies)))
    ):
        raise ValueError("a grant with fields of the wrong types")
    return conn_id, until, grant, data


def activity_message(counts: dict[bytes, int]) -> bytes:
    return b"A" + json.dumps({k.decode("ascii"): n for k, n in counts.items()}).encode()


_MAX_COUNT = 1 << 32


def read_activity(msg: bytes) -> dict[str, int]:
    """ValueError unless ``msg`` is an ``A`` message. (JSON, checked here: the server reads
    what a worker, the process that parses browsers' and sandboxes' bytes, wrote.)"""
    try:
        counts = json.loads(msg[1:])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(str(e)) from e
    if not isinstance(counts, dict) or not all(
        len(k) <= 64 and type(n) is int and 0 <= n < _MAX_COUNT for k, n in counts.items()
    ):
        raise ValueError("activity of the wrong shape")
    return counts
