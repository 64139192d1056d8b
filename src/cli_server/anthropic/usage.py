"""Reading token usage out of Anthropic replies as they stream past, and storing it."""

from __future__ import annotations

import json
from typing import Any

from attrs import define, field

from cli_server.anthropic.policy import admits
from cli_server.db.pool import Database, Transaction
from cli_server.plumbing.encoding import JSON

_MAX_JSON = 8 * 1024 * 1024  # a JSON reply larger than this is not metered (none are)


@define
class Usage:
    model: str = "unknown"
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_tokens
            + self.cache_read_tokens
        )

    def take(self, usage: JSON) -> None:
        """Fold in a ``usage`` object; later numbers replace earlier ones (they are totals)."""
        if not isinstance(usage, dict):
            return
        for ours, theirs in (
            ("input_tokens", "input_tokens"),
            ("output_tokens", "output_tokens"),
            ("cache_creation_tokens", "cache_creation_input_tokens"),
            ("cache_read_tokens", "cache_read_input_tokens"),
        ):
            value = usage.get(theirs)
            if isinstance(value, int) and value >= 0:
                setattr(self, ours, value)


@define
class UsageMeter:
    """Fed every chunk of a reply; never delays or changes it."""

    streaming: bool
    usage: Usage = field(factory=Usage)
    began: bool = False  # the reply said what its input cost
    complete: bool = False  # ... and what its output cost, in full
    _pending: bytes = b""
    _json: bytearray = field(factory=bytearray)

    def feed(self, chunk: bytes) -> None:
        if not self.streaming:
            if len(self._json) + len(chunk) <= _MAX_JSON:
                self._json += chunk
            return
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def _event(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            if isinstance(message.get("model"), str):
                self.usage.model = message["model"]
            self.usage.take(message.get("usage"))
            self.began = isinstance(message.get("usage"), dict)
        elif event.get("type") == "message_delta":
            self.usage.take(event.get("usage"))
            self.complete = self.complete or isinstance(event.get("usage"), dict)

    def finish(self) -> Usage:
        if not self.streaming and self._json:
            try:
                reply = json.loads(bytes(self._json))
            except ValueError:
                return self.usage
            if isinstance(reply, dict):
                if isinstance(reply.get("model"), str):
                    self.usage.model = reply["model"]
                self.usage.take(reply.get("usage"))
                self.began = self.complete = isinstance(reply.get("usage"), dict)
        return self.usage


@define(eq=False)
class UsageStore:
    _db: Database

    async def reserve(
        self, sandbox_id: str, workspace_id: str, tokens: int, hold: float
    ) -> tuple[str | None, int | None]:
        """Hold ``tokens`` of the workspace's budget for a call about to start, for at most
        ``hold`` seconds (a crashed server's holds run out). Returns the hold's id, or None
        and the budget when the budget is spent or held by running calls.

        The workspace row's lock serialises the check and the hold, so parallel callers each
        see what the others hold."""

        async def work(tx: Transaction) -> tuple[str | None, int | None]:
            row = await tx.one(
                "SELECT monthly_token_budget FROM workspaces WHERE id = %s FOR NO KEY UPDATE",
                (workspace_id,),
            )
            if row is None:
                return None, None
            budget = row["monthly_token_budget"]
            if budget is not None:
                await tx.execute(
                    "DELETE FROM anthropic_reservations WHERE workspace_id = %s"
                    " AND expires_at < now()",
                    (workspace_id,),
                )
                held = await tx.one(
                    "SELECT coalesce(sum(tokens), 0) AS n FROM anthropic_reservations"
                    " WHERE workspace_id = %s",
                    (workspace_id,),
                )
                spent = await _month_total(tx, workspace_id)
                if not admits(int(budget), spent, int(held["n"] if held else 0)):
                    return None, int(budget)
            made = await tx.one(
                "INSERT INTO anthropic_reservations (workspace_id, sandbox_id, tokens, expires_at)"
                " VALUES (%s, %s, %s, now() + make_interval(secs => %s)) RETURNING id",
                (workspace_id, sandbox_id, tokens, hold),
            )
            assert made is not None
            return str(made["id"]), None if budget is None else int(budget)

        return await self._db.transaction(work)

    async def exhausted(self, workspace_id: str) -> int | None:
        """The workspace's budget if this month's usage has reached it (None: it has not)."""

        async def work(tx: Transaction) -> int | None:
            row = await tx.one(
                "SELECT monthly_token_budget FROM workspaces WHERE id = %s", (workspace_id,)
            )
            if row is None or row["monthly_token_budget"] is None:
                return None
            budget = int(row["monthly_token_budget"])
            return budget if await _month_total(tx, workspace_id) >= budget else None

        return await self._db.transaction(work)

    async def settle(self, hold: str, sandbox_id: str, workspace_id: str, usage: Usage) -> None:
        """Replace a call's hold by what it really cost, in one step."""

        async def work(tx: Transaction) -> None:
            await tx.execute("DELETE FROM anthropic_reservations WHERE id = %s", (hold,))
            if usage.total:
                await _record(tx, sandbox_id, workspace_id, usage)

        await self._db.transaction(work)

    async def month_total(self, workspace_id: str) -> int:
        return await self._db.transaction(lambda tx: _month_total(tx, workspace_id))

    async def report(self, workspace_id: str) -> dict[str, Any]:
        """This month's usage of a workspace, by sandbox, model and day, and its budget."""
        where = (
            " FROM anthropic_usage u WHERE u.workspace_id = %s"
            " AND u.day >= date_trunc('month', current_date)"
        )
        sums = (
            "sum(requests) AS requests, sum(input_tokens) AS input_tokens,"
            " sum(output_tokens) AS output_tokens,"
            " sum(cache_creation_tokens) AS cache_creation_tokens,"
            " sum(cache_read_tokens) AS cache_read_tokens"
        )
        args = (workspace_id,)
        total = (await self._db.query(f"SELECT {sums}{where}", args))[0]
        by_sandbox = await self._db.query(
            f"SELECT u.sandbox_id, {sums}{where} GROUP BY u.sandbox_id ORDER BY 1", args
        )
        by_model = await self._db.query(
            f"SELECT u.model, {sums}{where} GROUP BY u.model ORDER BY 1", args
        )
        by_day = await self._db.query(
            f"SELECT u.day, {sums}{where} GROUP BY u.day ORDER BY 1", args
        )
        budget = await self._db.query(
            "SELECT monthly_token_budget FROM workspaces WHERE id = %s", args
        )
        return {
            "month": _numbers(total),
            "monthly_token_budget": budget[0]["monthly_token_budget"] if budget else None,
            "by_sandbox": [{"sandbox_id": str(r["sandbox_id"]), **_numbers(r)} for r in by_sandbox],
            "by_model": [{"model": r["model"], **_numbers(r)} for r in by_model],
            "by_day": [{"day": r["day"].isoformat(), **_numbers(r)} for r in by_day],
        }


def _numbers(row: dict[str, Any]) -> dict[str, int]:
    keys = (
        "requests",
        "input_tokens",
        "output_tokens",
        "cache_creation_tokens",
        "cache_read_tokens",
    )
    numbers = {k: int(row.get(k) or 0) for k in keys}
    numbers["total_tokens"] = sum(v for k, v in numbers.items() if k != "requests")
    return numbers


async def _record(tx: Transaction, sandbox_id: str, workspace_id: str, usage: Usage) -> None:
    await tx.execute(
        "INSERT INTO anthropic_usage (day, sandbox_id, workspace_id, model, requests,"
        " input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens)"
        " VALUES (current_date, %s, %s, %s, 1, %s, %s, %s, %s)"
        " ON CONFLICT (day, sandbox_id, model) DO UPDATE SET"
        " requests = anthropic_usage.requests + 1,"
        " input_tokens = anthropic_usage.input_tokens + excluded.input_tokens,"
        " output_tokens = anthropic_usage.output_tokens + excluded.output_tokens,"
        " cache_creation_tokens = anthropic_usage.cache_creation_tokens"
        "   + excluded.cache_creation_tokens,"
        " cache_read_tokens = anthropic_usage.cache_read_tokens + excluded.cache_read_tokens",
        (
            sandbox_id,
            workspace_id,
            usage.model[:200],
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_creation_tokens,
            usage.cache_read_tokens,
        ),
    )


async def _month_total(tx: Transaction, workspace_id: str) -> int:
    row = await tx.one(
        "SELECT coalesce(sum(input_tokens + output_tokens + cache_creation_tokens"
        " + cache_read_tokens), 0) AS n FROM anthropic_usage WHERE workspace_id = %s"
        " AND day >= date_trunc('month', current_date)",
        (workspace_id,),
    )
    return int(row["n"]) if row else 0
