"""What a sandbox's token may do, and how much of a budget a call holds while it runs (pure).

Only the Messages API passes: anything else Anthropic offers (batches, files, admin) would
spend or store with the server's key outside what we meter. A message call first reserves its
worst case — ``max_tokens`` plus a bound on its input — so calls running at once cannot
together overshoot a workspace's budget by more than one call. That bound holds only if all
of a call's input is in its body: features that make Anthropic pull input in on its side
(URL and file sources, server tools, MCP servers, containers) are refused, and only betas
known to change nothing of that pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from attrs import define, evolve, field, frozen

from cli_server.plumbing.encoding import JSON

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


MAX_TOKENS = 2**31 - 1  # far above any model's output; what the budget tables hold easily


def estimate(body: bytes) -> Estimate:
    try:
        call = json.loads(body, object_pairs_hook=_no_duplicates)
    except BadCall:
        raise
    except (ValueError, RecursionError):
        raise BadCall("the body is not JSON (or is nested too deeply)") from None
    if not isinstance(call, dict):
        raise BadCall("the body must be a JSON object")
    max_tokens = call.get("max_tokens")
    if type(max_tokens) is not int or not 1 <= max_tokens <= MAX_TOKENS:
        raise BadCall(f"max_tokens: a positive integer up to {MAX_TOKENS} is required")
    pulled = pulled_input(call)
    if pulled is not None:
        raise BadCall(
            f"{pulled}: this proxy passes only calls whose whole input is in the request "
            "(a workspace's token budget could not bound the rest); send the content itself"
        )
    return Estimate(max_tokens, len(body))


# Sources whose content is in the body itself; "url" and "file" make Anthropic fetch it.
_INLINE_SOURCES: frozenset[str | None] = frozenset({"base64", "text", "content"})
# Tools the caller runs itself and describes in full; every typed tool (web search and
# fetch, code execution, MCP toolsets, and the Anthropic-defined bash, editor, computer and
# memory tools, which add a hidden prompt) brings input the body does not show.
_CLIENT_TOOLS: frozenset[str | None] = frozenset({None, "custom"})


def pulled_input(call: dict[str, Any]) -> str | None:
    """What in a message call makes Anthropic pull input in on its side (None: nothing)."""
    if call.get("mcp_servers"):
        return "mcp_servers"
    if call.get("container") is not None:
        return "container"
    tools = call.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and not _named(tool.get("type"), _CLIENT_TOOLS):
            return f"the {str(tool.get('type'))[:64]!r} tool"
    system = call.get("system")
    found = _in_blocks(system) if isinstance(system, list) else None
    messages = call.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if found is None and isinstance(message, dict):
            found = _in_blocks(message.get("content"))
    return found


def _in_blocks(blocks: JSON, depth: int = 0) -> str | None:
    """The first content block (nested ones too: tool results, content sources) that names
    its content by reference instead of carrying it."""
    if isinstance(blocks, dict):
        blocks = [blocks]
    if not isinstance(blocks, list):
        return None
    if depth > 16:
        return "content nested too deeply"
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = str(block.get("type"))[:64]
        if "file_id" in block or kind == "container_upload":
            return f"a {kind!r} block with a file_id"
        source = block.get("source")
        if isinstance(source, dict):
            if not _named(source.get("type"), _INLINE_SOURCES) or "file_id" in source:
                return f"a {kind!r} block with a {str(source.get('type'))[:64]!r} source"
            found = _in_blocks(source.get("content"), depth + 1)
            if found is not None:
                return found
        found = _in_blocks(block.get("content"), depth + 1)
        if found is not None:
            return found
    return None


def _named(value: JSON, names: frozenset[str | None]) -> bool:
    return (value is None or isinstance(value, str)) and value in names


# Betas that change nothing of what a call pulls in or how its usage is reported; the rest
# (files, MCP, code execution, web fetch, skills, context management, ...) are dropped from
# the call, so a body that needs them fails upstream at no cost.
SAFE_BETAS = frozenset(
    {
        "prompt-caching-2024-07-31",
        "extended-cache-ttl-2025-04-11",
        "token-efficient-tools-2025-02-19",
        "fine-grained-tool-streaming-2025-05-14",
        "interleaved-thinking-2025-05-14",
        "output-128k-2025-02-19",
        "context-1m-2025-08-07",
    }
)


def safe_betas(values: Iterable[bytes]) -> bytes | None:
    """The ``anthropic-beta`` header to send for the values a caller sent (None: none)."""
    names = (n.strip().decode("ascii", "replace") for v in values for n in v.split(b","))
    kept = sorted({n for n in names if n in SAFE_BETAS})
    return ",".join(kept).encode() if kept else None


@define
class RateLimit:
    """A token bucket per key on an injected clock: ``rate`` calls a minute, ``rate`` at once."""

    rate: float
    _buckets: dict[str, tuple[float, float]] = field(factory=dict, init=False)  # level, when

    def take(self, key: str, now: float) -> bool:
        level, when = self._buckets.get(key, (self.rate, now))
        level = min(self.rate, level + (now - when) * self.rate / 60.0)
        if level < 1.0:
            self._buckets[key] = (level, now)
            return False
        self._buckets[key] = (level - 1.0, now)
        if len(self._buckets) > 10_000:  # forget the full ones: they start full anyway
            self._buckets = {k: b for k, b in self._buckets.items() if now - b[1] < 60.0}
        return True


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
