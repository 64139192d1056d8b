"""The audit log on the web side: who the caller is for a row (their address as
``client_host`` sees it: behind trusted proxies, the forwarded client), and the reading of
``GET /api/workspaces/{id}/audit``'s filters and answer."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from twisted.web.iweb import IRequest

from cli_server.domain.accounts import User
from cli_server.domain.audit import ACTIONS, MAX_LIMIT, Action, Actor, AuditLog, Note, Query, Target
from cli_server.domain.errors import BadRequest
from cli_server.web.request import client_host


def actor_of(request: IRequest, user: User | None) -> Actor:
    if user is None:
        return Actor(None, None, client_host(request))
    via = f"api_token {user.token.id}" if user.token is not None else None
    return Actor(user.id, user.username, client_host(request), via=via)


async def record(
    audit: AuditLog | None,
    request: IRequest,
    user: User | None,
    action: Action,
    *,
    workspace_id: str | None = None,
    target: Target | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """One row for what ``user`` (None: nobody signed in) just did through ``request``."""
    if audit is None:
        return
    await audit.record(
        action,
        actor_of(request, user),
        workspace_id=workspace_id,
        target=target,
        details=details,
    )


def note(
    audit: AuditLog | None,
    request: IRequest,
    user: User,
    action: Action,
    *,
    workspace_id: str | None = None,
    target: Target | None = None,
    details: Mapping[str, Any] | None = None,
) -> Note | None:
    """A row for a domain method to write in the transaction of its change (None: no log)."""
    if audit is None:
        return None
    return Note(audit, action, actor_of(request, user), workspace_id, target, dict(details or {}))


def _arg(request: IRequest, name: str) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name} is given more than once", field=name)
    value: bytes = values[0]
    text = value.decode("utf-8", "replace").strip()
    if not text:  # (as documented: a filter given is never empty; leave it out for none)
        raise BadRequest(f"{name} is empty: leave it out to filter nothing by it", field=name)
    return text


def _moment(request: IRequest, name: str) -> datetime | None:
    text = _arg(request, name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
        # In UTC: PostgreSQL takes no offset beyond 15:59 (Python takes up to 23:59), and an
        # instant off either end of the calendar overflows here rather than in the database.
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadRequest(
            f"{name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z", field=name
        ) from None


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _whole(request: IRequest, name: str, low: int, high: int) -> int | None:
    text = _arg(request, name)
    if text is None:
        return None
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}", field=name)
    return int(text)


def parse_query(request: IRequest, workspace_id: str | None) -> Query:
    """The filters of a listing: ``action``, ``actor`` (user id or name), ``since`` and
    ``until`` (ISO 8601), ``before`` (an entry id: the cursor) and ``limit`` (at most 200)."""
    action = _arg(request, "action")
    if action is not None and action not in ACTIONS:
        raise BadRequest(f"action must be one of {', '.join(ACTIONS)}", field="action")
    actor = _arg(request, "actor")
    # (no control characters: PostgreSQL refuses a NUL in text, and no name has one)
    if actor is not None and (len(actor) > 254 or _has_control(actor)):
        raise BadRequest("actor must be a user id or a user name", field="actor")
    return Query(
        workspace_id=workspace_id,
        action=action,
        actor=actor,
        since=_moment(request, "since"),
        until=_moment(request, "until"),
        before=_whole(request, "before", 1, 2**63 - 1),
        limit=_whole(request, "limit", 1, MAX_LIMIT) or 50,
    )
