"""Numbered SQL migrations, applied at start in one transaction under an advisory lock.

Files are ``migrations/NNNN_name.sql``; a file, once released, is never edited: add a new one.
The transaction-scoped advisory lock makes two servers starting at once apply them in turn.
"""

from __future__ import annotations

import re
from importlib.resources import files

from attrs import frozen
from twisted.logger import Logger

from cli_server.db.pool import Database, Transaction

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x636C6973  # "clis": any constant shared by every server of this database
_log = Logger()


@frozen
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    found = []
    for entry in files("cli_server.db").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration numbers must run 1, 2, 3, ... without gaps: {versions}")
    return found


async def migrate(db: Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing; returns the versions applied now."""
    pending = load_migrations() if migrations is None else migrations

    async def work(tx: Transaction) -> list[int]:
        await tx.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await tx.query("SELECT version FROM schema_migrations")}
        newest = max(done, default=0)
        if pending and newest > pending[-1].version:
            raise RuntimeError(
                f"the database is at schema version {newest}, newer than this cli-server "
                f"knows ({pending[-1].version}); upgrade cli-server"
            )
        applied = []
        for m in pending:
            if m.version in done:
                continue
            await tx.execute(m.sql)
            await tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name)
            )
            applied.append(m.version)
        return applied

    applied = await db.transaction(work)
    if applied:
        _log.info("applied database migrations {versions}", versions=applied)
    return applied
