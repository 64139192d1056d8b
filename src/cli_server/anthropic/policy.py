"""What a sandbox's token may do, and how much of a budget a call holds while it runs (pure).

Only the Messages API passes: anything else Anthropic offers (batches, files, admin) would
spend or store with the server's key outside what we meter. A message call first reserves its
worst case — ``max_tokens`` plus a bound on its input — so calls running at once cannot
together overshoot a workspace's budget by more than one call.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from attrs import evolve, frozen

if TYPE_CHECKING:
    from cli_server.anthropic.usage import Usage

MESSAGES = b"/v1/messages"
_EXACT = {
    (b"POST", MESSAGES),
    (b"POST", b"/v1/messages/count_tokens"),
    (b"GET", b"/v1/models"),
}
_MODEL = re.compile(rb"/v1/models/[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


_QUERY = re.compile(rb"[A-Za-z0-9_.~=&%-]*")  # (?beta=true, ?limit=20&after_id=...)


def allowed(method: bytes, target: bytes) -> bool:
    """Whether ``method`` on ``target`` (a path and maybe a query, as sent: no decoding) may
    pass."""
    path, _, query = target.partition(b"?")
    if _QUERY.fullmatch(query) is None:
        return False
    if (method, path) in _EXACT:
        return True
    return method == b"GET" and _MODEL.fullmatch(path) is not None


def spends(method: bytes, target: bytes) -> bool:
    """Only creating a message costs tokens (counting them and listing models is free)."""
    return method == b"POST" and target.partition(b"?")[0] == MESSAGES


class BadCall(ValueError):
    """A message request we cannot bound; Anthropic would refuse it too."""


@frozen
class Estimate:
    """The most a message call can cost: its input is bounded by its size in bytes (no
    tokenizer turns fewer bytes into more tokens), its output by ``max_tokens``."""

    max_tokens: int
    input_bound: int

    @property
    def tokens(self) -> int:
        return self.max_tokens + self.input_bound


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins: what we bound must be what is sent.
    made = dict(pairs)
    if len(made) != len(pairs):
        raise BadCall("a JSON object in the body repeats a key")
    return made


def estimate(body: bytes) -> Estimate:
    try:
        call = json.loads(body, object_pairs_hook=_no_duplicates)
    except BadCall:
        raise
    except ValueError:
        raise BadCall("the body is not JSON") from None
    if not isinstance(call, dict):
        raise BadCall("the body must be a JSON object")
    max_tokens = call.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        raise BadCall("max_tokens: a positive integer is required")
    return Estimate(max_tokens, len(body))


def admits(budget: int | None, spent: int, reserved: int) -> bool:
    """A call may start while anything of the budget is neither spent nor held by others."""
    return budget is None or spent + reserved < budget


def charge(usage: Usage, held: Estimate, code: int, complete: bool, began: bool) -> Usage:
    """What a finished call costs. Anthropic charges nothing for an error; a reply cut before
    its final usage is charged its worst case for what we did not see."""
    if code >= 300:
        return evolve(
            usage, input_tokens=0, output_tokens=0, cache_creation_tokens=0, cache_read_tokens=0
        )
    if complete:
        return usage
    return evolve(
        usage,
        input_tokens=usage.input_tokens if began else held.input_bound,
        output_tokens=held.max_tokens,
    )
