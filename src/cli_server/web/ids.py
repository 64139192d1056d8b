"""Path ids: UUIDs, and anything else is simply "not found"."""

from __future__ import annotations

import uuid

from cli_server.domain.errors import NotFound


def parse_id(text: str, what: str) -> str:
    """Ids are UUIDs; anything else cannot exist, so it is a 404 like any unknown id."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise NotFound(f"no such {what}", code=f"{what}_not_found") from None
