"""The JSON helpers: compact UTF-8 bytes, and RFC 3339 times in UTC with a ``Z``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from cli_server.plumbing.encoding import dumps, iso


def test_iso_none_is_none() -> None:
    """A missing time stays missing (``null`` in JSON), not the string ``"None"``."""
    assert iso(None) is None


def test_iso_utc_ends_in_z() -> None:
    """A UTC time is written with a ``Z``, not ``+00:00``."""
    assert iso(datetime(2026, 12, 1, 12, 30, 5, tzinfo=UTC)) == "2026-12-01T12:30:05Z"


def test_iso_other_zone_is_converted_to_utc() -> None:
    """A time in another zone is the same moment, written in UTC."""
    paris = timezone(timedelta(hours=1))
    assert iso(datetime(2026, 12, 1, 13, 0, tzinfo=paris)) == "2026-12-01T12:00:00Z"


def test_iso_keeps_microseconds() -> None:
    """Sub-second precision survives (ordering of close events depends on it)."""
    assert iso(datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC)) == "2026-01-02T03:04:05.678900Z"


def test_dumps_is_compact_utf8_bytes() -> None:
    """No spaces after separators, non-ASCII written as UTF-8 rather than ``\\u`` escapes."""
    out = dumps({"name": "café", "n": [1, 2]})
    assert isinstance(out, bytes)
    assert out == '{"name":"café","n":[1,2]}'.encode()
    assert json.loads(out) == {"name": "café", "n": [1, 2]}


def test_dumps_scalars() -> None:
    """Plain values encode as JSON does."""
    assert dumps(None) == b"null"
    assert dumps('a"b') == b'"a\\"b"'
