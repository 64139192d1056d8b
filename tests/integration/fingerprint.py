"""The whole database as one comparable value: equal fingerprints, unchanged database.

Used by the tests that prove a refused request changed nothing (a foreign Origin, a fuzzed
request answered 4xx)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from cli_server.db.pool import Database

# What changes with no request at all: every replica heartbeats its registry row every 5 s.
HEARTBEATS: Mapping[str, Collection[str]] = {"replicas": ("heartbeat_at",)}
# Bookkeeping a request may write however it is answered, listed with why.
CALLER_BOOKKEEPING: Mapping[str, Collection[str]] = {
    # Any signed-in request refreshes its session's last use (once a minute at most).
    "sessions": ("last_seen_at",),
    # Any request with an API token refreshes the token's last use the same way.
    "api_tokens": ("last_used_at",),
}
# Rows a refusal itself writes, by design: only these rows of these tables are compared.
NOT_REFUSALS: Mapping[str, str] = {
    # a refused sign-in (or password change) is recorded in the audit log: that is its point
    "audit_log": "action <> 'auth.sign_in_failed'",
    # a refused sign-in, password change or registration counts against the limits (counted
    # before the password is checked, so concurrent guesses get no extra tries)
    "auth_failures": "false",
}


async def fingerprint(
    db: Database,
    ignoring: Mapping[str, Collection[str]] | None = None,
    rows: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A digest of every row of every table, by table; ``ignoring`` leaves out these
    columns of these tables (and the heartbeats, always), ``rows`` counts only the rows of a
    table matching its condition (SQL, written here in the tests)."""
    ignoring = {**HEARTBEATS, **(ignoring or {})}
    tables = await db.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    parts, args = [], []
    for table in tables:
        name = table["tablename"]
        where = (rows or {}).get(name, "true")
        parts.append(
            "SELECT %s AS name, md5(coalesce(string_agg(r, E'\\n' ORDER BY r), '')) AS all_rows"
            f' FROM (SELECT (to_jsonb(t) - %s::text[])::text AS r FROM "{name}" t'
            f" WHERE {where}) rows"
        )
        args += [name, list(ignoring.get(name, ()))]
    found = await db.query(" UNION ALL ".join(parts), tuple(args))
    return {row["name"]: row["all_rows"] for row in found}
