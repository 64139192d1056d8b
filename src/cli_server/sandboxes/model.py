"""Sandbox statuses, the transitions between them, and the API's view of a sandbox."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from cli_server.db.pool import Row
from cli_server.plumbing.encoding import iso


class Status(StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    OFFLINE = "offline"  # local (tunnel) sandboxes whose agent is disconnected
    FAILED = "failed"


# Statuses an operation may start from. Everything else answers 409 with the current status.
PAUSABLE = (Status.RUNNING,)
RESUMABLE = (Status.PAUSED, Status.FAILED)
# Mid-transition statuses: only the task that set them (or the reconciler after a crash) moves on.
TRANSIENT = (Status.CREATING, Status.PAUSING, Status.RESUMING)
# Statuses that hold a slot of capacity (a live opencode process, or one about to be).
OCCUPYING = (Status.CREATING, Status.RUNNING, Status.RESUMING, Status.PAUSING)

SANDBOX_COLUMNS = (
    "id, workspace_id, name, status, error, is_local, backend, created_at, last_activity_at,"
    " paused_at, started_at, paused_kind,"
    " (SELECT username FROM users WHERE users.id = sandboxes.created_by) AS created_by_name,"
    " (SELECT username FROM users WHERE users.id = sandboxes.paused_by) AS paused_by_name,"
    " (SELECT coalesce(sum(u.input_tokens + u.output_tokens"
    " + u.cache_creation_tokens + u.cache_read_tokens), 0) FROM anthropic_usage u"
    " WHERE u.sandbox_id = sandboxes.id AND u.day >= date_trunc('month', current_date))"
    " AS tokens_this_month"
)


def short_id(sandbox_id: str) -> str:
    """The first 8 hex digits of the id: enough to tell sandboxes apart when talking."""
    return sandbox_id.replace("-", "")[:8]


def paused_by_json(row: Row) -> dict[str, Any] | None:
    """Who paused a paused sandbox: idleness (after how many minutes), a person, or null
    (a server stop, or not paused)."""
    if row["status"] != Status.PAUSED.value or row.get("paused_kind") is None:
        return None
    if row["paused_kind"] == "idle":
        idle = None
        if row["paused_at"] is not None and row["last_activity_at"] is not None:
            seconds = (row["paused_at"] - row["last_activity_at"]).total_seconds()
            idle = max(1, round(seconds / 60))
        return {"kind": "idle", "idle_minutes": idle}
    return {"kind": "user", "username": row.get("paused_by_name")}


def sandbox_json(row: Row, url: str | None = None) -> dict[str, Any]:
    """What the API shows: never the opencode password or proxy token."""
    running = row["status"] == Status.RUNNING.value
    return {
        "id": str(row["id"]),
        "short_id": short_id(str(row["id"])),
        "workspace_id": str(row["workspace_id"]),
        "name": row["name"],
        "status": row["status"],
        "error": row["error"],
        "is_local": row["is_local"],
        "created_at": iso(row["created_at"]),
        "last_activity_at": iso(row["last_activity_at"]),
        "paused_at": iso(row["paused_at"]),
        "created_by": row.get("created_by_name"),
        "started_at": iso(row.get("started_at")) if running else None,
        "paused_by": paused_by_json(row),
        "url": url,
        "usage": {"tokens_this_month": int(row.get("tokens_this_month") or 0)},
    }
