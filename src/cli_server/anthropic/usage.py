"""Reading token usage out of Anthropic replies as they stream past, and storing it."""

from __future__ import annotations

import json
from typing import Any

from attrs import define, field

from cli_server.db.pool import Database

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

    def take(self, usage: Any) -> None:
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
        elif event.get("type") == "message_delta":
            self.usage.take(event.get("usage"))

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
        return self.usage


@define(eq=False)
class UsageStore:
    _db: Database

    async def record(self, sandbox_id: str, workspace_id: str, usage: Usage) -> None:
        await self._db.execute(
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

    async def month_total(self, workspace_id: str) -> int:
        rows = await self._db.query(
            "SELECT coalesce(sum(input_tokens + output_tokens + cache_creation_tokens"
            " + cache_read_tokens), 0) AS n FROM anthropic_usage WHERE workspace_id = %s"
            " AND day >= date_trunc('month', current_date)",
            (workspace_id,),
        )
        return int(rows[0]["n"])

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
