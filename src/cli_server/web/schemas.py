"""The JSON Schemas of the API's bodies and answers, named once and used by the route
declarations (``route(..., body=..., answers=...)``) and the OpenAPI document.

Plain JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1) as mappings, so the document is
these values as they are. Answers are ``exact``: they list every property the server sends and
allow no other, so a field added to an answer without its schema fails the conformance test.
Request bodies are open unless their handler refuses unknown fields.
"""

from __future__ import annotations

from typing import Any

from cli_server.domain.api_tokens import NAME_LENGTH as TOKEN_NAME_LENGTH
from cli_server.domain.api_tokens import SCOPES as TOKEN_SCOPES
from cli_server.domain.audit import ACTIONS as AUDIT_ACTIONS
from cli_server.domain.audit import MAX_LIMIT as AUDIT_MAX_LIMIT
from cli_server.domain.roles import ROLE_NAMES
from cli_server.proxy.hosts import FIRST_PORT, LAST_PORT, OPENCODE_PORT
from cli_server.sandboxes.model import Status
from cli_server.web.routes import Schema


def obj(
    required: dict[str, Schema],
    optional: dict[str, Schema] | None = None,
    *,
    exact: bool = False,
) -> Schema:
    """An object with these properties; the ``required`` ones always present; ``exact``: no
    others."""
    properties: dict[str, Any] = {**required, **(optional or {})}
    shape: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": sorted(required),
    }
    if exact:
        shape["additionalProperties"] = False
    return shape


def answer(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """An object the server answers with: exactly these properties."""
    return obj(required, optional, exact=True)


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    """``schema`` or JSON null."""
    kind = schema.get("type")
    if kind in ("string", "integer", "number", "boolean") and not {"enum", "const"} & set(schema):
        return {**schema, "type": [kind, "null"]}  # (the type's own limits ignore a null)
    return {"anyOf": [schema, {"type": "null"}]}


def text(**limits: int) -> Schema:
    """A string, with ``minLength``/``maxLength`` where the handler checks them."""
    shape: dict[str, Any] = {"type": "string"}
    if "min" in limits:
        shape["minLength"] = limits["min"]
    if "max" in limits:
        shape["maxLength"] = limits["max"]
    return shape


def one_of(*choices: Schema) -> Schema:
    return {"oneOf": list(choices)}


def optional_body(schema: Schema) -> Schema:
    """A request body that may be left out altogether (the document says ``required: false``)."""
    return {**schema, "x-optional": True}


TEXT: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0}
BOOLEAN: Schema = {"type": "boolean"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
DATE: Schema = {"type": "string", "format": "date"}
ID: Schema = {"type": "string", "format": "uuid"}
URL: Schema = {"type": "string", "format": "uri"}
ROLE: Schema = {"type": "string", "enum": list(ROLE_NAMES)}
SANDBOX_STATUS: Schema = {"type": "string", "enum": [s.value for s in Status]}
REGISTRATION_MODE: Schema = {"type": "string", "enum": ["open", "invite", "closed"]}
PROMETHEUS_TEXT: Schema = {"type": "string", "contentMediaType": "text/plain"}
NO_BODY = None  # (an answer without a body: 204, redirects)

ERROR_DETAIL: Schema = obj(
    {"code": TEXT, "message": TEXT},
    {
        "field": {**TEXT, "description": "the request body's field at fault"},
        "sandbox_status": {**TEXT, "description": "a refused sandbox action: its status"},
    },
)
ERROR: Schema = answer({"error": ERROR_DETAIL})

# -- accounts -------------------------------------------------------------------------------

_USER_FIELDS: dict[str, Schema] = {
    "id": ID,
    "username": TEXT,
    "email": nullable(TEXT),
    "created_at": TIMESTAMP,
    "is_admin": BOOLEAN,
}
USER: Schema = answer(_USER_FIELDS)
ME: Schema = answer({**_USER_FIELDS, "has_password": BOOLEAN})
REGISTRATION: Schema = answer(
    {
        "mode": REGISTRATION_MODE,
        "first": BOOLEAN,
        "username_rule": TEXT,
        "password_rule": TEXT,
        "password_login": BOOLEAN,
        "version": TEXT,
    }
)
SESSION: Schema = answer(
    {
        "id": ID,
        "created_at": TIMESTAMP,
        "last_seen_at": TIMESTAMP,
        "user_agent": nullable(TEXT),
        "address": nullable(TEXT),
        "current": BOOLEAN,
    }
)
PROVIDER: Schema = answer({"name": TEXT, "label": TEXT, "login_url": TEXT})
IDENTITY: Schema = answer(
    {
        "id": ID,
        "provider": TEXT,
        "label": TEXT,
        "email": nullable(TEXT),
        "created_at": TIMESTAMP,
        "last_used_at": TIMESTAMP,
    }
)

SSO_LOGIN_QUERY: Schema = obj(
    {},
    {
        "return_to": {**TEXT, "description": "a path of this site to land on afterwards"},
        "link": {**TEXT, "description": "1 or true: link the identity to the signed-in account"},
    },
)
SSO_CALLBACK_QUERY: Schema = obj(
    {},
    {
        "state": {**TEXT, "description": "the state this server gave the provider"},
        "code": {**TEXT, "description": "the provider's authorization code"},
        "error": {**TEXT, "description": "the provider's refusal"},
    },
)
REGISTER_BODY: Schema = obj(
    {"username": text(min=3, max=32), "password": text(min=8, max=1024)},
    {"email": nullable(text(max=254)), "invite": nullable(text(max=200))},
)
LOGIN_BODY: Schema = obj({"username": text(min=1, max=254), "password": text(min=1, max=1024)})
PASSWORD_BODY: Schema = obj(
    {"new_password": text(min=8, max=1024)},
    {"current_password": nullable(text(max=1024))},
)

# -- personal API tokens --------------------------------------------------------------------

TOKEN_SCOPE: Schema = {"type": "string", "enum": list(TOKEN_SCOPES)}
_API_TOKEN_FIELDS: dict[str, Schema] = {
    "id": ID,
    "name": TEXT,
    "scope": TOKEN_SCOPE,
    "workspace_id": {**nullable(ID), "description": "the one workspace it reaches (null: all)"},
    "created_at": TIMESTAMP,
    "expires_at": TIMESTAMP,
    "last_used_at": nullable(TIMESTAMP),
}
API_TOKEN: Schema = answer(_API_TOKEN_FIELDS)
NEW_API_TOKEN: Schema = answer(
    {**_API_TOKEN_FIELDS, "token": {**TEXT, "description": "the secret, in this answer only"}}
)
API_TOKEN_BODY: Schema = {
    **obj(
        {
            "name": text(min=1, max=TOKEN_NAME_LENGTH),
            "scope": TOKEN_SCOPE,
            "expires_at": {**TIMESTAMP, "description": "with a time zone; at most a year ahead"},
        },
        {"workspace_id": {**nullable(ID), "description": "one workspace (null or left out: all)"}},
    ),
    "additionalProperties": False,
}

# -- the instance admin ---------------------------------------------------------------------

ADMIN_USER: Schema = answer(
    {
        **_USER_FIELDS,
        "disabled": BOOLEAN,
        "last_seen_at": nullable(TIMESTAMP),
    }
)
TEMPORARY_PASSWORD: Schema = answer({"password": TEXT})
NEW_SIGNUP_LINK: Schema = answer({"url": TEXT, "expires_at": TIMESTAMP, "mode": REGISTRATION_MODE})
SIGNUP_LINK: Schema = answer(
    {
        "id": ID,
        "created_at": TIMESTAMP,
        "expires_at": TIMESTAMP,
        "used_at": nullable(TIMESTAMP),
        "used_by": nullable(TEXT),
    }
)

# -- workspaces, members, invitations -------------------------------------------------------

_WORKSPACE_FIELDS: dict[str, Schema] = {
    "id": ID,
    "name": TEXT,
    "role": {**ROLE, "description": "the caller's role in it"},
    "created_at": TIMESTAMP,
}
WORKSPACE: Schema = answer(_WORKSPACE_FIELDS)
SANDBOX_COUNTS: Schema = answer({"total": COUNT, "running": COUNT})
WORKSPACE_DETAIL: Schema = answer({**_WORKSPACE_FIELDS, "sandbox_counts": SANDBOX_COUNTS})
_MEMBER_FIELDS: dict[str, Schema] = {
    "user_id": ID,
    "username": TEXT,
    "role": ROLE,
    "created_at": TIMESTAMP,
}
MEMBER: Schema = answer(_MEMBER_FIELDS)
_PENDING_FIELDS: dict[str, Schema] = {
    "id": ID,
    "username": TEXT,
    "role": ROLE,
    "invited_by": nullable(TEXT),
    "created_at": TIMESTAMP,
    "expires_at": TIMESTAMP,
}
PENDING_INVITATION: Schema = answer(_PENDING_FIELDS)
INVITATION: Schema = answer(
    {
        "id": ID,
        "workspace_id": ID,
        "workspace_name": TEXT,
        "role": ROLE,
        "invited_by": nullable(TEXT),
        "created_at": TIMESTAMP,
        "expires_at": TIMESTAMP,
    }
)
MEMBER_ADDED: Schema = one_of(
    answer(
        {"status": {"const": "invited"}, "invitation_id": ID, **_PENDING_FIELDS},
    ),
    answer({"status": {"const": "member"}, **_MEMBER_FIELDS}),
)

NAME_BODY: Schema = obj({"name": text(min=1, max=100)})
MEMBER_BODY: Schema = obj(
    {"username": text(min=1, max=254)},
    {"role": {**nullable(ROLE), "description": "null or left out: developer"}},
)
ROLE_BODY: Schema = obj({"role": ROLE})
BUDGET_BODY: Schema = obj({"monthly_tokens": nullable({**COUNT, "maximum": 10**15})})

# -- sandboxes ------------------------------------------------------------------------------

AGENT: Schema = answer(
    {"version": nullable(TEXT), "protocol": INTEGER, "warning": nullable(TEXT)},
)
SANDBOX_USAGE: Schema = answer({"tokens_this_month": COUNT})
PAUSED_BY: Schema = one_of(
    answer({"kind": {"const": "idle"}, "idle_minutes": nullable(INTEGER)}),
    answer({"kind": {"const": "user"}, "username": nullable(TEXT)}),
)
SANDBOX: Schema = answer(
    {
        "id": ID,
        "short_id": text(min=8, max=8),
        "workspace_id": ID,
        "name": TEXT,
        "status": SANDBOX_STATUS,
        "error": nullable(TEXT),
        "is_local": BOOLEAN,
        "created_at": TIMESTAMP,
        "last_activity_at": TIMESTAMP,
        "paused_at": nullable(TIMESTAMP),
        "created_by": nullable(TEXT),
        "started_at": nullable(TIMESTAMP),
        "paused_by": nullable(PAUSED_BY),
        "url": nullable(TEXT),
        "usage": SANDBOX_USAGE,
    },
    {"agent": {**nullable(AGENT), "description": "local sandboxes: the connected agent"}},
)
PREVIEW_PORT: Schema = {"type": "integer", "minimum": FIRST_PORT, "maximum": LAST_PORT}
SANDBOX_LOGS: Schema = answer({"lines": array(TEXT), "truncated": BOOLEAN})
SANDBOX_PORTS: Schema = answer(
    {"ports": array(PREVIEW_PORT), "listed": BOOLEAN},
    {"shared_only": BOOLEAN},
)
OPEN_BODY: Schema = optional_body(
    {
        **obj({}, {"port": {**PREVIEW_PORT, "not": {"const": OPENCODE_PORT}}}),
        "additionalProperties": False,
    }
)
LINK: Schema = answer({"url": TEXT})

# -- Claude's usage -------------------------------------------------------------------------

_NUMBERS: dict[str, Schema] = {
    "requests": COUNT,
    "input_tokens": COUNT,
    "output_tokens": COUNT,
    "cache_creation_tokens": COUNT,
    "cache_read_tokens": COUNT,
    "total_tokens": COUNT,
}
TOKENS: Schema = answer(_NUMBERS)
TOKENS_BY_SANDBOX: Schema = answer({"sandbox_id": ID, **_NUMBERS})
TOKENS_BY_MODEL: Schema = answer({"model": TEXT, **_NUMBERS})
TOKENS_BY_DAY: Schema = answer({"day": DATE, **_NUMBERS})
CLAUDE_SETUP: Schema = answer({"configured": BOOLEAN, "message": TEXT, "help": TEXT})
USAGE: Schema = answer(
    {
        "month": TOKENS,
        "monthly_token_budget": nullable(COUNT),
        "by_sandbox": array(TOKENS_BY_SANDBOX),
        "by_model": array(TOKENS_BY_MODEL),
        "by_day": array(TOKENS_BY_DAY),
        "claude": CLAUDE_SETUP,
    }
)

# -- local agents ---------------------------------------------------------------------------

AGENT_CODE: Schema = answer({"code": TEXT, "expires_at": TIMESTAMP, "server_url": TEXT})
AGENT_REGISTER_BODY: Schema = obj(
    {"code": text(min=1, max=200), "name": text(min=1, max=100)},
    {"use_server_key": BOOLEAN},
)
AGENT_ANTHROPIC: Schema = answer({"base_url": TEXT, "api_key": TEXT})
AGENT_REGISTRATION: Schema = answer(
    {"sandbox_id": ID, "workspace_id": ID, "tunnel_token": TEXT, "name": TEXT},
    {"anthropic": AGENT_ANTHROPIC},
)

# -- the audit log --------------------------------------------------------------------------

AUDIT_ACTION: Schema = {"type": "string", "enum": list(AUDIT_ACTIONS)}
AUDIT_ENTRY: Schema = answer(
    {
        "id": {"type": "integer", "minimum": 1},
        "at": TIMESTAMP,
        "actor_id": {**nullable(ID), "description": "null: nobody signed in, or the server"},
        "actor_name": nullable(TEXT),
        "action": AUDIT_ACTION,
        "workspace_id": nullable(ID),
        "target_type": nullable(TEXT),
        "target_id": nullable(TEXT),
        "target_name": nullable(TEXT),
        "address": {**nullable(TEXT), "description": "where the request came from"},
        "details": {"type": "object", "description": "what else the action says; no secret"},
    }
)
AUDIT_PAGE: Schema = answer(
    {
        "entries": array(AUDIT_ENTRY),
        "next": {**nullable(INTEGER), "description": "``before`` of the next (older) page"},
    }
)
AUDIT_QUERY: Schema = obj(
    {},
    {
        "action": AUDIT_ACTION,
        "actor": {**text(min=1, max=254), "description": "a user's id or name"},
        "since": {**TIMESTAMP, "description": "entries at or after this time"},
        "until": {**TIMESTAMP, "description": "entries before this time"},
        "before": {"type": "integer", "minimum": 1, "description": "entries older than this id"},
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": AUDIT_MAX_LIMIT,
            "description": "entries per page (default 50)",
        },
    },
)

# -- the server -----------------------------------------------------------------------------

HEALTH: Schema = answer({"status": {"const": "ok"}})
READINESS: Schema = answer(
    {"status": {"const": "ready"}},
    {"claude": {"type": "string", "enum": ["configured", "not configured"]}},
)
# /readyz while a stopping replica drains (the load balancer's cue), else an ERROR
DRAINING: Schema = answer({"status": {"const": "draining"}})
OPENAPI_DOCUMENT: Schema = obj(
    {"openapi": TEXT, "info": {"type": "object"}, "paths": {"type": "object"}}
)
