"""Registering local agents: one-time codes, local sandbox rows, and tunnel tokens.

A developer asks for a code on the dashboard (single use, 10 minutes); the agent trades it
for a local sandbox and a long-lived tunnel token. Only hashes of both are stored, and
neither ever appears in a log line.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import psycopg2.errors
from attrs import define

from cli_server.auth.tokens import new_token, token_hash
from cli_server.db.pool import Database, Transaction
from cli_server.domain.audit import Action, Actor, AuditLog, Target
from cli_server.domain.errors import NameTaken, Unauthorized
from cli_server.domain.roles import Role
from cli_server.domain.workspaces import Workspaces
from cli_server.plumbing.encoding import iso

CODE_SECONDS = 600
_DEVELOPER_OR_MORE = ", ".join(f"'{r.label}'" for r in Role if r >= Role.DEVELOPER)
# Whoever registered local sandbox ``s`` may still run an agent: an enabled account that is a
# developer or more in the workspace.
_REGISTRANT_MAY_RUN_IT = (
    "EXISTS (SELECT 1 FROM workspace_members m JOIN users u ON u.id = m.user_id"
    " WHERE m.workspace_id = s.workspace_id AND m.user_id = s.created_by"
    f" AND u.disabled_at IS NULL AND m.role IN ({_DEVELOPER_OR_MORE}))"
)


@define(eq=False)
class LocalAgents:
    _db: Database
    _workspaces: Workspaces
    _server_url: str  # what the agent passes as --server (shown in the UI's command)
    _anthropic_url: str  # the Anthropic proxy as the laptop reaches it, ending in /v1
    on_revoke: Any = None  # (sandbox_id, why) -> None: close its tunnel for good
    audit: AuditLog | None = None

    async def mint_code(self, workspace_id: str, actor_id: str) -> dict[str, Any]:
        await self._workspaces.require(workspace_id, actor_id, Role.DEVELOPER)
        code = secrets.token_urlsafe(24)
        row = await self._db.query(
            "INSERT INTO agent_codes (code_hash, workspace_id, created_by, expires_at)"
            " VALUES (%s, %s, %s, now() + make_interval(secs => %s)) RETURNING expires_at",
            (token_hash(code), workspace_id, actor_id, CODE_SECONDS),
        )
        return {
            "code": code,
            "expires_at": iso(row[0]["expires_at"]),
            "server_url": self._server_url,
        }

    async def register(
        self, code: str, name: str, use_server_key: bool, address: str | None = None
    ) -> dict[str, Any]:
        """A new local sandbox for the code's workspace. An unknown, expired or unauthorized
        code is burnt; a taken name (409) rolls back and leaves the code usable."""

        async def work(tx: Transaction) -> dict[str, Any] | None:
            used = await tx.one(
                "UPDATE agent_codes SET used_at = now() WHERE code_hash = %s AND used_at IS NULL"
                " RETURNING workspace_id, created_by, expires_at > now() AS fresh",
                (token_hash(code),),
            )
            if used is None or not used["fresh"]:
                return None
            # The code is only as good as its creator's standing in the workspace now.
            member = await tx.one(
                "SELECT m.role FROM workspace_members m JOIN users u ON u.id = m.user_id"
                " WHERE m.workspace_id = %s AND m.user_id = %s AND u.disabled_at IS NULL",
                (used["workspace_id"], used["created_by"]),
            )
            if member is None or Role.parse(member["role"]) < Role.DEVELOPER:
                return None
            sandbox_id = str(uuid.uuid4())
            tunnel_token = new_token()
            proxy_token = new_token() if use_server_key else None
            await tx.execute(
                "INSERT INTO sandboxes (id, workspace_id, name, status, is_local, backend,"
                " created_by, opencode_password, tunnel_token_hash, proxy_token_hash)"
                " VALUES (%s, %s, %s, 'offline', true, 'local', %s, %s, %s, %s)",
                (
                    sandbox_id,
                    used["workspace_id"],
                    name,
                    used["created_by"],
                    secrets.token_urlsafe(32),
                    token_hash(tunnel_token),
                    token_hash(proxy_token) if proxy_token else None,
                ),
            )
            answer: dict[str, Any] = {
                "sandbox_id": sandbox_id,
                "workspace_id": str(used["workspace_id"]),
                "tunnel_token": tunnel_token,
                "name": name,
            }
            if proxy_token:
                answer["anthropic"] = {"base_url": self._anthropic_url, "api_key": proxy_token}
            if self.audit is not None:  # (the code's creator registered it, from this address)
                await self.audit.record(
                    Action.AGENT_REGISTERED,
                    Actor(str(used["created_by"]), None, address),
                    workspace_id=str(used["workspace_id"]),
                    target=Target("sandbox", sandbox_id, name),
                    details={"claude_from_server": use_server_key},
                    tx=tx,
                )
            return answer

        try:
            answer = await self._db.transaction(work)
        except psycopg2.errors.UniqueViolation:
            raise NameTaken(f'A sandbox named "{name}" already exists in this workspace.') from None
        if answer is None:
            raise Unauthorized(
                "this code is unknown, already used or expired; get a new one from the dashboard",
                code="invalid_code",
            )
        return answer

    async def verify(self, sandbox_id: str, token: str) -> bool:
        """The token is this local sandbox's, and whoever registered it may still run one."""
        rows = await self._db.query(
            "SELECT 1 FROM sandboxes s WHERE s.id = %s AND s.is_local"
            f" AND s.tunnel_token_hash = %s AND {_REGISTRANT_MAY_RUN_IT}",
            (sandbox_id, token_hash(token)),
        )
        return bool(rows)

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        """A member left or lost the developer role: their agents in the workspace stop."""
        await self._stop_unauthorized(
            user_id,
            workspace_id,
            "whoever registered this agent is no longer a developer in the workspace",
        )

    async def account_disabled(self, user_id: str) -> None:
        """The instance admin disabled the account: its agents everywhere stop, its unused
        codes die, and its agents' Anthropic tokens stop working."""
        await self._db.execute(
            "DELETE FROM agent_codes WHERE created_by = %s AND used_at IS NULL", (user_id,)
        )
        await self._stop_unauthorized(
            user_id, None, "whoever registered this agent had their account disabled"
        )

    async def _stop_unauthorized(self, user_id: str, workspace_id: str | None, why: str) -> None:
        rows = await self._db.query(
            "SELECT s.id FROM sandboxes s WHERE s.created_by = %s"
            " AND (%s::uuid IS NULL OR s.workspace_id = %s::uuid)"
            f" AND s.is_local AND NOT {_REGISTRANT_MAY_RUN_IT}",
            (user_id, workspace_id, workspace_id),
        )
        for row in rows:
            await self._db.execute(
                "UPDATE sandboxes SET proxy_token_hash = NULL WHERE id = %s", (row["id"],)
            )
            if self.on_revoke is not None:
                self.on_revoke(str(row["id"]), why)
            if self.audit is not None:
                await self.audit.record(
                    Action.AGENT_REVOKED,
                    Actor.system(),
                    target=Target("sandbox", str(row["id"])),
                    details={"reason": why},
                )

    async def purge_expired(self) -> None:
        await self._db.execute(
            "DELETE FROM agent_codes WHERE expires_at < now() - interval '1 day'"
        )
