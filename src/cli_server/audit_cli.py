"""``cli-server audit``: the instance-wide audit log, for the operator.

It reads the database the server uses: ``--db-url`` (or ``DATABASE_URL``), else the embedded
PostgreSQL under ``--data-dir``, adopted while the server runs, started for the read (and
stopped again) while it does not. Entries come newest first, as a table or as JSON lines.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.task import react
from twisted.python import usage

from cli_server.config import default_data_dir, parse_db_url
from cli_server.db.pool import Database, DatabaseUnavailable
from cli_server.domain.audit import ACTIONS, MAX_LIMIT, AuditLog, Entry, Query
from cli_server.plumbing.process import ProcessReactor


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise usage.UsageError(f"{text!r} is not an ISO 8601 time such as 2026-01-31T12:00:00Z")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class AuditOptions(usage.Options):
    synopsis = "[--db-url URL | --data-dir DIR] [filters] [--json]"
    longdesc = "Print the audit log of the whole instance, newest first."
    optParameters = [
        ["db-url", None, None, "PostgreSQL URL [env DATABASE_URL]."],
        ["data-dir", None, None, "The server's state directory, for its embedded PostgreSQL."],
        ["action", None, None, "Only this action (e.g. auth.sign_in_failed)."],
        ["actor", None, None, "Only what this user (id or name) did."],
        ["workspace", None, None, "Only entries of this workspace id."],
        ["since", None, None, "From this time on (ISO 8601)."],
        ["until", None, None, "Before this time (ISO 8601)."],
        ["before", None, None, "Entries older than this id (the next page)."],
        ["limit", None, "100", f"At most this many entries (1 to {MAX_LIMIT})."],
    ]
    optFlags = [["json", None, "One JSON object a line instead of a table."]]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ

    def postOptions(self) -> None:
        url = self["db-url"] or self._environ.get("DATABASE_URL")
        try:
            self["db-url"] = parse_db_url(url) if url else None
        except ValueError as e:
            raise usage.UsageError(f"--db-url: {e}") from None
        data_dir = self["data-dir"] or self._environ.get("CLI_SERVER_DATA")
        self["data-dir"] = Path(data_dir).expanduser().absolute() if data_dir else None
        if self["action"] is not None and self["action"] not in ACTIONS:
            raise usage.UsageError(f"--action: one of {', '.join(ACTIONS)}")
        for name in ("limit", "before"):
            if self[name] is not None:
                if not str(self[name]).isdigit() or int(self[name]) < 1:
                    raise usage.UsageError(f"--{name}: a whole number above 0")
                self[name] = int(self[name])
        if self["limit"] > MAX_LIMIT:
            raise usage.UsageError(f"--limit: at most {MAX_LIMIT}")
        for name in ("since", "until"):
            if self[name] is not None:
                self[name] = _moment(self[name])

    def query(self) -> Query:
        return Query(
            workspace_id=self["workspace"],
            action=self["action"],
            actor=self["actor"],
            since=self["since"],
            until=self["until"],
            before=self["before"],
            limit=self["limit"],
        )


def table(entries: list[Entry]) -> str:
    """A readable table: when (UTC), who, what, target, workspace, from where."""
    head = ("WHEN (UTC)", "WHO", "ACTION", "TARGET", "WORKSPACE", "FROM")
    lines = [head]
    for e in entries:
        target = f"{e.target_type or ''}:{e.target_name or e.target_id or ''}".strip(":")
        who = e.actor_name or ("server" if e.actor_id is None else e.actor_id)
        lines.append(
            (
                e.at.replace("T", " ")[:19],
                who,
                e.action,
                target or "-",
                e.workspace_id or "-",
                e.address or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


async def read(
    clock: IReactorTime, processes: ProcessReactor, options: AuditOptions, out: TextIO
) -> None:
    """Print the entries ``options`` asks for; ``clock`` times the queries, ``processes`` runs
    the embedded database if it must be started (both the reactor)."""
    from cli_server.db.embedded import EmbeddedPostgres

    embedded, started = None, False
    dsn = options["db-url"]
    if dsn is None:
        embedded = EmbeddedPostgres(options["data-dir"] or default_data_dir(), processes)
        if not (embedded.pgdata / "PG_VERSION").exists():
            raise SystemExit(f"cli-server audit: no database under {embedded.pgdata}")
        if embedded.postmaster() is None:
            await embedded.start()  # (the server is not running: start it for this read)
            started = True
        dsn = embedded.dsn
    db = Database(clock, dsn)
    try:
        page = await AuditLog(db).entries(options.query())
    finally:
        db.close()
        if embedded is not None and started:
            await embedded.stop()
    if options["json"]:
        for entry in page.entries:
            out.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")
        return
    out.write(table(page.entries) + "\n")
    if page.next is not None:
        out.write(f"(older entries: add --before {page.next})\n")


def main(argv: list[str]) -> None:
    options = AuditOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"cli-server audit: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    # (react's reactor is the global one, a PosixReactorBase: a clock and a process spawner)
    async def run(reactor: PosixReactorBase) -> None:
        try:
            await read(reactor, reactor, options, sys.stdout)
        except DatabaseUnavailable as e:
            print(f"cli-server audit: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
