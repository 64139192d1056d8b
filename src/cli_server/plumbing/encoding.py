"""JSON helpers shared by the stores and the web layer."""

from __future__ import annotations

import json as _json
from datetime import UTC, datetime
from typing import Any

# A JSON value as json.loads gives it (or json.dumps takes it): genuinely arbitrary, so Any.
# Seams name it JSON to say so; everything else says what it holds.
JSON = Any


def iso(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, the way browsers and Go parse it."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def dumps(value: object) -> bytes:
    """A JSON value (dicts, lists, strings, numbers, booleans, None) as compact UTF-8."""
    return _json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
